"""Sequence loaders (.npy/.npz/FNO .mat v5 and v7.3) and forecasting windows/splits."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from kdmobile.data.sequences import (
    SequenceSpec,
    SequenceSplits,
    load_sequences,
    load_splits,
    make_windows,
    to_tensor_datasets,
)
from kdmobile.errors import KDError

N, T, H, W = 10, 25, 8, 6  # H != W so a swapped transpose cannot pass


@pytest.fixture
def data() -> np.ndarray:
    """(N, T, H, W) float32 where value ≈ 1000·trajectory + frame, so a window reveals its origin."""
    rng = np.random.default_rng(0)
    base = 1000.0 * np.arange(N)[:, None, None, None] + np.arange(T)[None, :, None, None]
    return (base + 0.1 * rng.standard_normal((N, T, H, W))).astype(np.float32)


def to_fno(u: np.ndarray) -> np.ndarray:
    """(N, T, H, W) -> the FNO .mat layout (N, H, W, T)."""
    return np.ascontiguousarray(np.transpose(u, (0, 2, 3, 1)))


def write_mat73(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3-like file: 512-byte user block with a MATLAB header, then HDF5 holding each variable
    as MATLAB does (column-major, so h5py sees the axes reversed)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            f.create_dataset(name, data=np.transpose(value))
            f[name].attrs["MATLAB_class"] = np.bytes_("double" if value.dtype == np.float64 else "single")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def assert_kderror(path: Path, match: str, load=load_sequences) -> KDError:
    """Loading `path` raises a one-line KDError naming the file and matching `match`."""
    with pytest.raises(KDError, match=match) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    return e.value


# ---------------------------------------------------------------- loaders


def test_npy_roundtrip_and_3d(tmp_path: Path, data: np.ndarray) -> None:
    """.npy: (N,T,H,W) as is, float64 cast to float32, 3-D (T,H,W) as N=1."""
    np.save(tmp_path / "a.npy", data.astype(np.float64))
    got = load_sequences(tmp_path / "a.npy")
    assert got.dtype == np.float32 and np.array_equal(got, data)
    np.save(tmp_path / "one.npy", data[3])
    one = load_sequences(tmp_path / "one.npy")
    assert one.shape == (1, T, H, W) and np.array_equal(one[0], data[3])


def test_npz_key_u_or_single_array(tmp_path: Path, data: np.ndarray) -> None:
    """.npz: key `u` wins (with `a`/`meta` beside it); otherwise the only array."""
    np.savez(tmp_path / "u.npz", a=data[:, 0], u=data, meta=np.array('{"x": 1}'))
    assert np.array_equal(load_sequences(tmp_path / "u.npz"), data)
    np.savez(tmp_path / "single.npz", data)
    assert np.array_equal(load_sequences(tmp_path / "single.npz"), data)
    with open(tmp_path / "mislabelled.npz", "wb") as f:
        np.save(f, data)
    assert np.array_equal(load_sequences(tmp_path / "mislabelled.npz"), data)
    np.savez(tmp_path / "two.npz", x=data, y=data)
    assert_kderror(tmp_path / "two.npz", "no array 'u'")


@pytest.mark.parametrize("with_a", [True, False])
def test_mat_v5_fno_layout(tmp_path: Path, data: np.ndarray, with_a: bool) -> None:
    """MATLAB v5 (scipy.io.savemat) with u as (N, H, W, T) -> (N, T, H, W); `a` optional."""
    variables = {"u": to_fno(data), "t": np.arange(1, T + 1, dtype=np.float64)}
    if with_a:
        variables["a"] = data[:, 0]
    scipy.io.savemat(tmp_path / "ns.mat", variables)
    got = load_sequences(tmp_path / "ns.mat")
    assert got.shape == (N, T, H, W) and np.array_equal(got, data)


def test_mat_v5_single_trajectory_and_single_variable(tmp_path: Path, data: np.ndarray) -> None:
    """A 3-D (H, W, T) `u` is one trajectory; a lone variable with another name is used too."""
    scipy.io.savemat(tmp_path / "one.mat", {"u": to_fno(data)[2]})
    got = load_sequences(tmp_path / "one.mat")
    assert got.shape == (1, T, H, W) and np.array_equal(got[0], data[2])
    scipy.io.savemat(tmp_path / "vort.mat", {"vorticity": to_fno(data)})
    assert np.array_equal(load_sequences(tmp_path / "vort.mat"), data)
    scipy.io.savemat(tmp_path / "nou.mat", {"x": to_fno(data), "y": to_fno(data)})
    assert_kderror(tmp_path / "nou.mat", "no variable 'u'")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mat_v73_hdf5_reversed_axes(tmp_path: Path, data: np.ndarray, dtype: type) -> None:
    """MATLAB v7.3 (HDF5, h5py sees (T, W, H, N)) -> (N, T, H, W), with and without `a`."""
    path = tmp_path / "ns73.mat"
    write_mat73(path, {"a": to_fno(data)[..., 0].astype(dtype), "u": to_fno(data).astype(dtype)})
    with h5py.File(path, "r") as f:
        assert f["u"].shape == (T, W, H, N)
    got = load_sequences(path)
    assert got.shape == (N, T, H, W) and got.dtype == np.float32
    assert np.array_equal(got, data.astype(dtype).astype(np.float32))
    only_u = tmp_path / "only_u.mat"
    write_mat73(only_u, {"u": to_fno(data)})
    assert np.array_equal(load_sequences(only_u), data)


def test_plain_hdf5_mat_without_user_block(tmp_path: Path, data: np.ndarray) -> None:
    """An HDF5 .mat written without the 512-byte MATLAB block is still recognised."""
    path = tmp_path / "plain.mat"
    with h5py.File(path, "w") as f:
        f["u"] = np.transpose(to_fno(data))
    assert np.array_equal(load_sequences(path), data)


# ---------------------------------------------------------------- bad inputs: one-line KDError naming the file


def test_missing_and_unsupported(tmp_path: Path) -> None:
    """Missing file, unsupported extension, a directory."""
    assert_kderror(tmp_path / "nope.npy", "no such file")
    (tmp_path / "x.txt").write_text("1 2 3")
    assert_kderror(tmp_path / "x.txt", "unsupported file type")
    (tmp_path / "d.npz").mkdir()
    assert_kderror(tmp_path / "d.npz", "not a regular file")


@pytest.mark.parametrize("name", ["bad.npy", "bad.npz", "bad.mat"])
def test_corrupt_files(tmp_path: Path, name: str) -> None:
    """Garbage bytes under each extension."""
    path = tmp_path / name
    path.write_bytes(b"this is not an array\n" * 20)
    assert_kderror(path, "cannot read")


def test_truncated_and_non_array_files(tmp_path: Path, data: np.ndarray) -> None:
    """A truncated .npy, a pickled object array, a truncated HDF5 .mat, a MATLAB struct."""
    np.save(tmp_path / "t.npy", data)
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[: len(raw) // 2])
    assert_kderror(tmp_path / "t.npy", "cannot read")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_kderror(tmp_path / "obj.npy", "cannot read")
    write_mat73(tmp_path / "t73.mat", {"u": to_fno(data)})
    raw = (tmp_path / "t73.mat").read_bytes()
    (tmp_path / "t73.mat").write_bytes(raw[:2048])
    assert_kderror(tmp_path / "t73.mat", "cannot read")
    scipy.io.savemat(tmp_path / "struct.mat", {"u": {"field": np.ones(3)}})
    assert_kderror(tmp_path / "struct.mat", "not a numeric array")
    np.save(tmp_path / "str.npy", np.array(["a", "b"]))
    assert_kderror(tmp_path / "str.npy", "real numeric array")


@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 4, 5, 6)])
def test_wrong_rank(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """Anything but 3-D/4-D is refused with the shape in the message."""
    np.save(tmp_path / "r.npy", np.zeros(shape, np.float32))
    err = assert_kderror(tmp_path / "r.npy", "4-D")
    assert str(shape) in str(err)


def test_wrong_rank_mat(tmp_path: Path) -> None:
    """A 2-D `u` in a .mat file."""
    scipy.io.savemat(tmp_path / "flat.mat", {"u": np.ones((4, 5))})
    assert_kderror(tmp_path / "flat.mat", "4-D")


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_non_finite(tmp_path: Path, data: np.ndarray, bad: float) -> None:
    """NaN, Inf, or a float64 too large for float32 -> KDError counting the bad values."""
    arr = data.astype(np.float64)
    arr[1, 2, 3, 4] = bad
    arr[5, 0, 0, 0] = bad
    np.save(tmp_path / "nf.npy", arr)
    assert_kderror(tmp_path / "nf.npy", "2 non-finite values")


def test_empty_array(tmp_path: Path) -> None:
    """A zero-size array."""
    np.save(tmp_path / "e.npy", np.zeros((0, 4, 2, 2), np.float32))
    assert_kderror(tmp_path / "e.npy", "empty")


def test_too_few_frames_names_file_and_counts(tmp_path: Path, data: np.ndarray) -> None:
    """frames_in + frames_out > T -> KDError with both numbers and the file name."""
    np.save(tmp_path / "short.npy", data[:, :15])
    err = assert_kderror(tmp_path / "short.npy", "too few frames", load=lambda p: load_splits(p, SequenceSpec()))
    assert "20 frames needed" in str(err) and "has 15" in str(err)
    with pytest.raises(KDError, match="12 frames needed, the data has 11"):
        make_windows(data[:, :11], SequenceSpec(frames_in=4, frames_out=8))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frames_in": 0},
        {"frames_out": -1},
        {"stride": 0},
        {"val_frac": 1.0},
        {"test_frac": -0.1},
        {"val_frac": 0.6, "test_frac": 0.4},
        {"seed": -1},
    ],
)
def test_bad_spec(kwargs: dict) -> None:
    """Invalid specs fail at construction."""
    with pytest.raises(KDError):
        SequenceSpec(**kwargs)


# ---------------------------------------------------------------- windows and splits


def origin(splits: SequenceSplits, x: np.ndarray) -> np.ndarray:
    """(trajectory, first frame) of each window, decoded from the 1000·i + t values."""
    raw = splits.denormalize(x.astype(np.float64)).mean(axis=(-2, -1))  # (M, frames)
    traj = np.rint(raw[:, 0] / 1000.0).astype(int)
    frame = np.rint(raw[:, 0] - 1000.0 * traj).astype(int)
    return np.stack([traj, frame], axis=1)


def test_window_shapes_and_split_sizes(data: np.ndarray) -> None:
    """10 trajectories, 25 frames, 10+10 windows, stride 1 -> 6 windows each; 7/2/1 trajectories."""
    spec = SequenceSpec(frames_in=10, frames_out=10, val_frac=0.2, test_frac=0.1, seed=0)
    s = make_windows(data, spec)
    assert (len(s.train_traj), len(s.val_traj), len(s.test_traj)) == (7, 2, 1)
    assert s.train_x.shape == (42, 10, H, W) and s.train_y.shape == (42, 10, H, W)
    assert s.val_x.shape == (12, 10, H, W) and s.val_y.shape == (12, 10, H, W)
    assert s.test_x.shape == (6, 10, H, W) and s.test_y.shape == (6, 10, H, W)
    assert all(a.dtype == np.float32 for a in (s.train_x, s.train_y, s.val_x, s.test_y))
    strided = make_windows(data, SequenceSpec(frames_in=5, frames_out=3, stride=4, val_frac=0.2, test_frac=0.1))
    assert strided.train_x.shape == (7 * 5, 5, H, W) and strided.train_y.shape == (35, 3, H, W)  # starts 0,4,..,16


def test_no_trajectory_in_two_splits_and_windows_are_contiguous(data: np.ndarray) -> None:
    """Split ids are disjoint and cover all trajectories; every window comes from its own split's
    trajectories, and y continues x frame by frame."""
    spec = SequenceSpec(frames_in=3, frames_out=2, val_frac=0.3, test_frac=0.2, seed=7, stride=2)
    s = make_windows(data, spec)
    ids = [set(s.train_traj), set(s.val_traj), set(s.test_traj)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(range(N))
    for (x, y), allowed in zip(((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)), ids):
        o = origin(s, x)
        assert set(o[:, 0]) == allowed
        raw_x = s.denormalize(x.astype(np.float64)).mean(axis=(-2, -1))
        raw_y = s.denormalize(y.astype(np.float64)).mean(axis=(-2, -1))
        frames = np.concatenate([raw_x, raw_y], axis=1) - 1000.0 * o[:, :1]
        assert np.allclose(frames, o[:, 1:2] + np.arange(5), atol=0.05)
        assert set(o[:, 1]) == set(range(0, T - 5 + 1, 2))


def test_normalisation_uses_train_only(data: np.ndarray) -> None:
    """mean/std are those of the training trajectories; changing val/test data leaves them unchanged."""
    spec = SequenceSpec(val_frac=0.2, test_frac=0.2, seed=1)
    s = make_windows(data, spec)
    train = data[s.train_traj].astype(np.float64)
    assert s.mean == pytest.approx(train.mean(), rel=1e-12)
    assert s.std == pytest.approx(train.std(), rel=1e-9)
    assert abs(s.mean - float(data.astype(np.float64).mean())) > 1.0  # it is not the global mean
    raw_first = data[s.train_traj[0], : spec.frames_in]
    assert np.allclose(s.train_x[0], (raw_first - s.mean) / s.std, atol=1e-5)
    altered = data.copy()
    held_out = np.concatenate([s.val_traj, s.test_traj])
    altered[held_out] *= 100.0
    s2 = make_windows(altered, spec)
    assert (s2.mean, s2.std) == (s.mean, s.std)
    assert np.array_equal(s2.train_x, s.train_x) and not np.allclose(s2.val_x, s.val_x)


def test_split_is_seeded_and_handles_few_trajectories(data: np.ndarray) -> None:
    """Same seed, same split; another seed, another split; N=1 -> all train; N=3 -> 1/1/1."""
    a = make_windows(data, SequenceSpec(seed=3))
    b = make_windows(data, SequenceSpec(seed=3))
    c = make_windows(data, SequenceSpec(seed=4))
    assert np.array_equal(a.val_traj, b.val_traj) and np.array_equal(a.train_x, b.train_x)
    assert (a.val_traj.tolist(), a.test_traj.tolist()) != (c.val_traj.tolist(), c.test_traj.tolist())
    one = make_windows(data[0], SequenceSpec())
    assert one.train_x.shape == (6, 10, H, W) and one.val_x.shape == (0, 10, H, W) and one.test_x.shape[0] == 0
    three = make_windows(data[:3], SequenceSpec())
    assert (len(three.train_traj), len(three.val_traj), len(three.test_traj)) == (1, 1, 1)


def test_constant_training_data_is_refused() -> None:
    """Zero variance cannot be normalised."""
    with pytest.raises(KDError, match="constant"):
        make_windows(np.ones((3, 20, 4, 4), np.float32), SequenceSpec(val_frac=0.0, test_frac=0.0))


def test_load_splits_and_tensor_datasets(tmp_path: Path, data: np.ndarray) -> None:
    """End to end from a .mat file to torch TensorDatasets; stats() is JSON-friendly."""
    import json

    scipy.io.savemat(tmp_path / "ns.mat", {"a": data[:, 0], "u": to_fno(data)})
    s = load_splits(tmp_path / "ns.mat", SequenceSpec(frames_in=4, frames_out=6, stride=5))
    ds = to_tensor_datasets(s)
    assert set(ds) == {"train", "val", "test"}
    x, y = ds["train"][0]
    assert tuple(x.shape) == (4, H, W) and tuple(y.shape) == (6, H, W)
    assert len(ds["train"]) == len(s.train_x)
    summary = json.loads(json.dumps(s.stats()))
    assert summary["windows"]["train"] == len(s.train_x) and summary["std"] == s.std
