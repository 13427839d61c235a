"""Files someone else made are read under size, depth and element-count limits (issue 21 classes 1, 2 and 4): each
hostile file below is small on disk and would expand to gigabytes, exhaust the recursion limit or carry an impossible
value; every verb that reads it ends in one `kdmobile:` line, exit 2, quickly, without growing the process by more
than 2 GB and without writing anything. The cases are data: (name, file builder, argv, message fragment)."""

from __future__ import annotations

import json
import pickle
import resource
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from kdmobile.errors import KDError
from kdmobile.metrics import retrieval_recall, topk_accuracy
from untrusted_helpers import fake_forecast_run, main, one_line_err, reseal

CIFAR_FILES = [f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]


def _cifar(root: Path, labels: object, names: object = None) -> Path:
    """A CIFAR-10 python directory whose batches hold `labels` (and meta `names`)."""
    d = root / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names or [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    for name in CIFAR_FILES:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, f, protocol=2)
    return d


def _shared_lists() -> list:
    """10^9 integers as three levels of shared references: a 12 KB pickle, 8 GB once numpy expands it."""
    row = [0] * 1000
    return [[row] * 1000] * 1000


def _npy_header(f, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    f.write(b"\0" * 4096)


def _npz_bomb(path: Path, key: str = "images") -> Path:
    """An .npz of 2 KB whose member declares a 2 TB array."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open(f"{key}.npy", "w", force_zip64=True) as f:
        _npy_header(f, (200_000, 1024, 1024, 3))
    return path


def _npz_odd(path: Path, kind: str) -> Path:
    """.npz files numpy reads in ways a header scan of `*.npy` members misses."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        if kind == "no-suffix":  # numpy also serves a member named plainly `images`
            with z.open("images", "w", force_zip64=True) as f:
                _npy_header(f, (200_000, 1024, 1024, 3))
        elif kind == "junk-beside":  # an unreadable member must not switch the check off
            z.writestr("junk.npy", b"garbage")
            with z.open("images.npy", "w", force_zip64=True) as f:
                _npy_header(f, (200_000, 1024, 1024, 3))
        elif kind == "raw-bytes":  # not a .npy at all: numpy returns bytes, which no loader can use
            z.writestr("images.npy", b"\0" * 64)
            z.writestr("labels", b"not an array")
    return path


def _npy_bomb(path: Path, shape: tuple[int, ...]) -> Path:
    with open(path, "wb") as f:
        _npy_header(f, shape)
    return path


def _deep_json(path: Path) -> Path:
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def _deep_caption_npz(path: Path) -> Path:
    np.savez(path, images=np.zeros((2, 8, 8, 3), np.uint8), captions=np.array("[" * 50_000 + "]" * 50_000))
    return path


TRAIN = ["train", "ammkd", "--out", "{tmp}/runs", "--data"]
Build = Callable[[Path], Path]
CASES: list[tuple[str, Build, list[str], str]] = [
    ("cifar shared nested labels", lambda t: _cifar(t, _shared_lists()), [*TRAIN, "cifar10:{file}"],
     "must be a flat list of 2 integers"),
    ("cifar nested class names", lambda t: _cifar(t, [0, 1], names=[_shared_lists()] * 10),
     [*TRAIN, "cifar10:{file}"], "must be a list of 1 to 100000 names"),
    ("cifar labels out of range", lambda t: _cifar(t, [0, 10]), [*TRAIN, "cifar10:{file}"], "out of range"),
    ("npz dataset declaring 2 TB", lambda t: _npz_bomb(t / "c.npz"), [*TRAIN, "cifar10:{file}"], "GiB limit"),
    ("npz member without the .npy suffix", lambda t: _npz_odd(t / "c.npz", "no-suffix"), [*TRAIN, "cifar10:{file}"],
     "GiB limit"),
    ("npz huge member beside a junk one", lambda t: _npz_odd(t / "c.npz", "junk-beside"),
     [*TRAIN, "cifar10:{file}"], "GiB limit"),
    ("cifar label beyond int64", lambda t: _cifar(t, [0, 2**100]), [*TRAIN, "cifar10:{file}"],
     "must be a flat list of 2 integers"),
    ("cifar labels as a 0-d array", lambda t: _cifar(t, np.array(3)), [*TRAIN, "cifar10:{file}"],
     "must be a flat list of 2 integers"),
    ("caption npz declaring 2 TB", lambda t: _npz_bomb(t / "f.npz"), [*TRAIN, "captions:{file}"], "GiB limit"),
    ("deeply nested captions JSON", lambda t: _deep_json(t / "dataset_x.json"), [*TRAIN, "captions:{file}"],
     "nested too deeply"),
    ("deeply nested captions in an npz", lambda t: _deep_caption_npz(t / "f.npz"), [*TRAIN, "captions:{file}"],
     "nested too deeply"),
    ("sequence .npy declaring 8 TB", lambda t: _npy_bomb(t / "u.npy", (100_000, 20, 1024, 1024)),
     ["train", "sdkd", "--out", "{tmp}/runs", "--data", "{file}"], "GiB limit"),
]


@pytest.fixture(scope="module")
def forecast_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    assert main(["export", fake_forecast_run(root), "--out", root / "bundles"]) == 0
    return root / "bundles" / "fc-onnx-fp32"


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("name,build,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_file_is_refused_in_one_line(tmp_path: Path, capsys, name, build, argv, fragment) -> None:
    src = tmp_path / "in"
    src.mkdir()
    path = build(src)
    before_files = sorted(tmp_path.rglob("*"))
    peak = _peak_rss()
    started = time.perf_counter()
    assert main([a.format(tmp=tmp_path, file=path) for a in argv]) == 2
    assert time.perf_counter() - started < 10
    assert fragment in one_line_err(capsys)
    assert _peak_rss() - peak < 2 << 30
    assert sorted(tmp_path.rglob("*")) == before_files  # no run directory, no partial output


def test_npz_members_that_are_not_arrays_are_refused(tmp_path: Path, capsys, forecast_bundle) -> None:
    path = _npz_odd(tmp_path / "odd.npz", "raw-bytes")
    with pytest.raises(KDError, match="is not a NumPy array"):
        from kdmobile.untrusted import load_npz

        load_npz(path)
    window = tmp_path / "w.npz"
    with zipfile.ZipFile(window, "w") as z:
        z.writestr("frames", b"not an array")
    assert main(["predict", forecast_bundle, window]) == 2
    assert "not a .npy array" in one_line_err(capsys)


def test_predict_refuses_an_input_array_declaring_terabytes(tmp_path: Path, capsys, forecast_bundle) -> None:
    bomb = _npy_bomb(tmp_path / "window.npy", (100_000, 20, 1024, 1024))
    assert main(["predict", forecast_bundle, bomb]) == 2
    assert "GiB limit" in one_line_err(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["window.npy"]


@pytest.mark.parametrize("change,fragment", [
    (lambda m: m["input"].update(shape=[1, 3, 60000, 60000]), "input: shape must be 4 integers"),
    (lambda m: m["input"].update(shape=[1, 3, 2048, 2048 * 8]), "at most 67108864 values"),
    (lambda m: m["input"].update(shape=[1, 3, 8.5, 8]), "shape must be 4 integers"),
    (lambda m: m["forecast"].update(frames_out=0), "frames_in and frames_out must be in 1..16384"),
], ids=["60000-square", "too-many-values", "fractional", "zero-frames"])
def test_export_verify_refuses_impossible_shapes_before_allocating(tmp_path: Path, capsys, forecast_bundle,
                                                                   change, fragment) -> None:
    import shutil

    b = shutil.copytree(forecast_bundle, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    change(m)
    (b / "manifest.json").write_text(json.dumps(m))
    reseal(b)
    peak = _peak_rss()
    started = time.perf_counter()
    for argv in (["export", "--verify", b], ["predict", b, tmp_path / "none.npy"]):
        assert main(argv) == 2
        assert fragment in one_line_err(capsys)
    assert time.perf_counter() - started < 10 and _peak_rss() - peak < 2 << 30


def test_scores_refuse_labels_outside_the_class_list() -> None:
    scores = np.zeros((3, 4), np.float32)
    assert topk_accuracy(scores, np.array([0, 1, 3]))["top1"] >= 0
    for bad in (np.array([0, 1, 4]), np.array([0, -1, 2]), np.array([0.0, 1.0, 2.0])):
        with pytest.raises(KDError, match="class labels outside 0..3"):
            topk_accuracy(scores, bad)
    with pytest.raises(KDError, match="caption owners outside 0..1"):
        retrieval_recall(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), np.array([0, 2]))


def test_heldout_refuses_negative_labels_and_stray_caption_owners(tmp_path: Path) -> None:
    from kdmobile.contracts.heldout import read_heldout

    images = np.zeros((3, 8, 8, 3), np.uint8)
    for extra, fragment in (({"labels_test": np.array([0, -1, 2])}, "labels_test should be 3 integers"),
                            ({"labels_test": np.array([0.5, 1, 2])}, "labels_test should be 3 integers"),
                            ({"caption_owner_test": np.array([0, 3])}, "caption_owner_test should be")):
        np.savez(tmp_path / "heldout.npz", images_test=images, **extra)
        with pytest.raises(KDError, match=fragment):
            read_heldout(tmp_path)


def test_predict_sizes_a_long_rollout_before_running_it(tmp_path: Path, capsys, forecast_bundle) -> None:
    """--steps <= 10,000 bounds the loop, not the output: 5,000 windows x 10,000 steps would be ~50 GB."""
    from untrusted_helpers import T_IN

    windows = tmp_path / "windows.npy"
    np.save(windows, np.zeros((5000, T_IN, 8, 8), np.float32))
    started = time.perf_counter()
    assert main(["predict", forecast_bundle, windows, "--steps", "10000", "--out", tmp_path / "f.npy"]) == 2
    assert "refused before allocating" in one_line_err(capsys)
    assert time.perf_counter() - started < 10 and not (tmp_path / "f.npy").exists()
