"""Navier–Stokes datasets: batching invariance, chunked resume, the parameter key, .npz/.npy/.mat files, the cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from kdmobile.data import navier_stokes as ns
from kdmobile.data.ns_files import STATE_FILE
from kdmobile.data.sequences import load_sequences
from kdmobile.errors import KDError

# Tiny runs: 16², records every 0.5 up to t=1 (1000 time steps of at most 1e-3).
TINY = {"res": 16, "t_final": 1.0, "dt_record": 0.5, "device": "cpu", "progress": False}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Interrupt:
    """An on_chunk callback that raises KeyboardInterrupt once `after` chunks are saved; records chunk indices."""

    def __init__(self, after: int | None = None) -> None:
        self.after, self.seen = after, []

    def __call__(self, i: int, total: int) -> None:
        self.seen.append(i)
        if self.after is not None and len(self.seen) >= self.after:
            raise KeyboardInterrupt


# ---------------------------------------------------------------- batching


def test_batched_run_equals_one_trajectory_at_a_time_float64() -> None:
    """float64: 5 trajectories in one chunk over 2 worker threads == one at a time on 1 thread, to 1e-10."""
    kw = {**TINY, "dtype": torch.float64, "seed": 3}
    batched = ns.generate(5, batch_size=5, cpu_threads=2, **kw)
    single = ns.generate(5, batch_size=1, cpu_threads=1, **kw)
    assert batched.dtype == np.float64 and batched.shape == (5, 2, 16, 16)
    scale = np.abs(single).max()
    assert np.abs(batched - single).max() <= 1e-10 * scale
    # Trajectory i depends on (seed, i) only: the first 2 of 5 are the 2 of a 2-trajectory run.
    two = ns.generate(2, batch_size=2, cpu_threads=1, **kw)
    assert np.abs(two - single[:2]).max() <= 1e-10 * scale
    # ...and the trajectories are really different from each other and evolved in time.
    assert np.linalg.norm(single[0] - single[1]) > 0.1 * np.linalg.norm(single[0])
    assert np.linalg.norm(single[:, 1] - single[:, 0]) > 1e-3 * np.linalg.norm(single[:, 0])


def test_sub_batches_cover_each_chunk_once() -> None:
    """CPU sub-batches: at most CPU_BATCH each, a multiple of the workers, contiguous, covering the chunk."""
    run = ns._Runner(40, 16, 1e-3, 1.0, 0, None, 32, "cpu", "fno", 0.5, "float32", 3)
    for b0, b1 in ((0, 32), (32, 40), (5, 6)):
        pieces = run._pieces(b0, b1)
        assert pieces[0][0] == b0 and pieces[-1][1] == b1
        assert all(p[1] == q[0] for p, q in zip(pieces, pieces[1:]))
        assert all(0 < s1 - s0 <= ns.CPU_BATCH for s0, s1 in pieces)
        assert len(pieces) % 3 == 0 or len(pieces) == b1 - b0
    assert len(run._pieces(0, 32)) == 6


# ---------------------------------------------------------------- a fine solve stored coarse (--solve-res)


def test_fine_solve_stored_coarse_equals_subsampling_a_fine_run_by_hand(tmp_path: Path) -> None:
    """--solve-res 32 --res 16 == the 32² run with every 2nd point kept (float64, 1e-10), initial field included;
    and it differs from solving on the coarse grid itself."""
    kw = {**TINY, "dtype": torch.float64, "seed": 2, "cpu_threads": 1}
    fine = ns.generate(3, **{**kw, "res": 32})
    stored = ns.generate(3, **kw, solve_res=32)
    assert stored.shape == (3, 2, 16, 16)
    assert np.abs(stored - fine[..., ::2, ::2]).max() <= 1e-10 * np.abs(fine).max()
    assert np.abs(stored - ns.generate(3, **kw)).max() > 1e-3 * np.abs(fine).max()
    path = ns.generate_to_file(tmp_path / "ns.npz", 3, **kw, solve_res=32)
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        a = f["a"]
    fine_a = ns.gaussian_random_field(1, 32, ns._trajectory_generator(2, 1), torch.device("cpu"),
                                      dtype=torch.float64)[0].numpy()
    assert np.array_equal(a[1], fine_a[::2, ::2]) and meta["solve_res"] == 32 and meta["res"] == 16


def test_fine_solve_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    kw = {**TINY, "n": 4, "batch_size": 2, "seed": 1, "cpu_threads": 1, "solve_res": 32}
    full = ns.generate_to_file(tmp_path / "full.npz", **kw)
    with pytest.raises(KeyboardInterrupt):
        ns.generate_to_file(tmp_path / "resumed.npz", on_chunk=Interrupt(after=1), **kw)
    again = Interrupt()
    ns.generate_to_file(tmp_path / "resumed.npz", on_chunk=again, **kw)
    assert again.seen == [1] and sha(tmp_path / "resumed.npz") == sha(full)


@pytest.mark.parametrize("solve_res", [24, 8, 17, 2 ** 20])
def test_bad_solve_res_is_one_line_before_any_work(tmp_path: Path, solve_res: int) -> None:
    with pytest.raises(KDError, match="--solve-res") as e:
        ns.generate_to_file(tmp_path / "ns.npz", 2, solve_res=solve_res, **TINY)
    assert "\n" not in str(e.value) and not any(tmp_path.iterdir())


# ---------------------------------------------------------------- resume and the key


@pytest.mark.parametrize("suffix", [".npz", ".mat"])
def test_resume_after_interruption_gives_the_same_file(tmp_path: Path, suffix: str) -> None:
    """Interrupted after 2 of 4 chunks, a rerun computes only chunks 2 and 3 and writes byte-identical output."""
    kw = {**TINY, "n": 7, "batch_size": 2, "seed": 5, "cpu_threads": 1}
    full = ns.generate_to_file(tmp_path / f"full{suffix}", **kw)
    out = tmp_path / f"resumed{suffix}"
    with pytest.raises(KeyboardInterrupt):
        ns.generate_to_file(out, on_chunk=Interrupt(after=2), **kw)
    parts = tmp_path / f"resumed{suffix}.parts"
    assert not out.exists() and sorted(p.name for p in parts.iterdir()) == [
        "chunk_00000.npz", "chunk_00001.npz", STATE_FILE]
    state = json.loads((parts / STATE_FILE).read_text())
    assert state["key"] == ns.dataset_key(7, 16, 1e-3, 1.0, 5, dt_record=0.5) and sorted(state["chunks"]) == ["0", "1"]
    again = Interrupt()
    ns.generate_to_file(out, on_chunk=again, **kw)
    assert again.seen == [2, 3]
    assert sha(out) == sha(full)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"full{suffix}", f"resumed{suffix}"]  # parts removed


def test_a_failing_chunk_keeps_the_complete_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception inside the solver (a worker thread) stops the run: no output, earlier chunks kept."""
    calls = {"n": 0}
    real_solve = ns.solve

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(ns, "solve", flaky)
    with pytest.raises(KeyboardInterrupt):
        ns.generate_to_file(tmp_path / "ns.npz", n=2, batch_size=1, cpu_threads=1, **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["ns.npz.parts"]
    assert sorted(p.name for p in (tmp_path / "ns.npz.parts").iterdir()) == ["chunk_00000.npz", STATE_FILE]


def test_other_parameters_are_refused_then_restart_starts_over(tmp_path: Path) -> None:
    """Parts of a visc=1e-3 run do not mix with visc=2e-3: one-line error naming the parameter; --restart discards."""
    out = tmp_path / "ns.npz"
    kw = {**TINY, "n": 4, "batch_size": 2, "cpu_threads": 1}
    with pytest.raises(KeyboardInterrupt):
        ns.generate_to_file(out, visc=1e-3, on_chunk=Interrupt(after=1), **kw)
    before = sha(out.with_name("ns.npz.parts") / "chunk_00000.npz")
    for change, needle in (({"visc": 2e-3}, "visc"), ({"dtype": "float64"}, "dtype"), ({"seed": 1}, "seed"),
                           ({"forcing": None}, "forcing")):
        with pytest.raises(KDError, match=f"other parameters.*{needle}.*--restart") as e:
            ns.generate_to_file(out, **{"visc": 1e-3, **kw, **change})
        assert "\n" not in str(e.value)
    assert sha(out.with_name("ns.npz.parts") / "chunk_00000.npz") == before and not out.exists()
    seen = Interrupt()
    ns.generate_to_file(out, visc=2e-3, restart=True, on_chunk=seen, **kw)
    assert seen.seen == [0, 1]
    fresh = ns.generate_to_file(tmp_path / "fresh.npz", visc=2e-3, **kw)
    assert sha(out) == sha(fresh)


def test_the_key_covers_every_parameter_and_the_cache_uses_it(tmp_path: Path, monkeypatch) -> None:
    """Changing any generation parameter changes the digest; the cache generates once, then reuses the file."""
    base = {"n": 4, "res": 16, "visc": 1e-3, "t_final": 1.0, "seed": 0, "dt": None, "forcing": "fno",
            "dt_record": 0.5, "dtype": "float32"}
    changes = {"n": 5, "res": 32, "visc": 1e-4, "t_final": 2.0, "seed": 1, "dt": 5e-4, "forcing": "none",
               "dt_record": 0.25, "dtype": "float64", "solve_res": 32}
    digests = {ns.key_digest(ns.dataset_key(**base))}
    for k, v in changes.items():
        digests.add(ns.key_digest(ns.dataset_key(**{**base, k: v})))
    assert len(digests) == 1 + len(changes)
    calls = []
    real = ns.generate_to_file
    monkeypatch.setattr(ns, "generate_to_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = ns.cached_dataset(tmp_path, n=2, res=16, t_final=1.0, dt_record=0.5, progress=False, cpu_threads=1)
    again = ns.cached_dataset(tmp_path, n=2, res=16, t_final=1.0, dt_record=0.5, progress=False, cpu_threads=1)
    other = ns.cached_dataset(tmp_path, n=2, res=16, t_final=1.0, dt_record=0.5, progress=False, cpu_threads=1,
                              forcing=None)
    assert first == again != other and len(calls) == 2
    assert ns.key_digest(ns.dataset_key(2, 16, 1e-3, 1.0, 0, dt_record=0.5)) in first.name


# ---------------------------------------------------------------- file formats


def test_npz_npy_and_mat_hold_the_same_trajectories(tmp_path: Path) -> None:
    """.npz: u (N,T,H,W), a, t, meta; .npy: u; .mat: FNO's u N×H×W×T, a N×H×W, t 1×T (HDF5, axes reversed).
    All three load back through kdmobile.data.sequences as the same (N, T, H, W) array."""
    kw = {**TINY, "n": 3, "seed": 2, "cpu_threads": 1}
    npz = ns.generate_to_file(tmp_path / "ns.npz", **kw)
    npy = ns.generate_to_file(tmp_path / "ns.npy", **kw)
    mat = ns.generate_to_file(tmp_path / "ns.mat", **kw)
    with np.load(npz, allow_pickle=False) as z:
        assert set(z.files) == {"u", "a", "t", "meta"}
        u, a, t, meta = z["u"], z["a"], z["t"], json.loads(str(z["meta"]))
    assert u.shape == (3, 2, 16, 16) and u.dtype == np.float32 and a.shape == (3, 16, 16)
    assert t.tolist() == [0.5, 1.0] and meta["record_times"] == [0.5, 1.0] and meta["layout"] == "N,T,H,W"
    for k, v in ns.dataset_key(3, 16, 1e-3, 1.0, 2, dt_record=0.5).items():
        assert meta[k] == v, k
    assert meta["dt_max"] <= 1e-3 and meta["devices"] == ["cpu"]
    w0 = ns.gaussian_random_field(1, 16, ns._trajectory_generator(2, 1), dtype=torch.float32)[0].numpy()
    assert np.array_equal(a[1], w0)  # `a` is trajectory 1's initial vorticity
    assert np.array_equal(u, ns.generate(3, cpu_threads=1, **TINY, seed=2))
    assert np.array_equal(np.load(npy), u)
    with h5py.File(mat, "r") as f:
        assert f["u"].shape == (2, 16, 16, 3) and f["a"].shape == (16, 16, 3) and f["t"].shape == (2, 1)
        assert f["u"].attrs["MATLAB_class"] == b"single"
        u_matlab, a_matlab = np.transpose(f["u"][()]), np.transpose(f["a"][()])  # MATLAB's (N,H,W,T), (N,H,W)
        assert json.loads(f.attrs["kdmobile_meta"])["layout"] == "N,H,W,T"
        assert np.transpose(f["t"][()]).tolist() == [[0.5, 1.0]]
    assert np.array_equal(u_matlab, np.transpose(u, (0, 2, 3, 1))) and np.array_equal(a_matlab, a)
    assert mat.read_bytes()[:10] == b"MATLAB 7.3"
    for p in (npz, npy, mat):
        assert np.array_equal(load_sequences(p), u), p


def test_float64_file(tmp_path: Path) -> None:
    """--dtype float64 keeps float64 in the file."""
    out = ns.generate_to_file(tmp_path / "ns.mat", n=1, dtype="float64", cpu_threads=1, **TINY)
    with h5py.File(out, "r") as f:
        assert f["u"].dtype == np.float64 and f["u"].attrs["MATLAB_class"] == b"double"


def test_bad_arguments_write_nothing(tmp_path: Path) -> None:
    """Bad arguments or paths: a one-line KDError before anything (not even the folder) is created."""
    for kwargs, needle in (({"n": 0}, "--n"), ({"n": 1, "res": 15}, "--res"), ({"n": 1, "t_final": 1.2}, "multiple"),
                           ({"n": 1, "batch_size": 0}, "--batch-size"), ({"n": 1, "device": "tpu"}, "device")):
        with pytest.raises(KDError, match=needle) as e:
            ns.generate_to_file(tmp_path / "sub" / "ns.npz", **{**TINY, **kwargs})
        assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KDError, match=r"ns\.h5.*\.npz, \.npy or \.mat"):
        ns.generate_to_file(tmp_path / "ns.h5", n=1, **TINY)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KDError, match="cannot create the output folder") as e:
        ns.generate_to_file(blocker / "deeper" / "ns.npz", n=1, **TINY)
    assert str(blocker) in str(e.value)
    (tmp_path / "adir.npz").mkdir()
    with pytest.raises(KDError, match="is a directory"):
        ns.generate_to_file(tmp_path / "adir.npz", n=1, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.npz", "file"]


def test_damaged_state_is_one_line(tmp_path: Path) -> None:
    """A corrupt state.json is refused with a hint to --restart, and --restart recovers."""
    parts = tmp_path / "ns.npz.parts"
    parts.mkdir()
    (parts / STATE_FILE).write_text("{not json")
    with pytest.raises(KDError, match="unreadable generation state.*--restart"):
        ns.generate_to_file(tmp_path / "ns.npz", n=1, **TINY)
    ns.generate_to_file(tmp_path / "ns.npz", n=1, restart=True, **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["ns.npz"]
