"""Tests for kdmobile.data: loaders for every supported format, every bad input, and the splitters."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdmobile.data import (
    CaptionData, ClassData, ImageFiles, load_captions, load_cifar, load_dataset, load_digits, scan_imagefolder,
    shared_data_dir, split_dataset, split_indices, stratified_split,
)
from kdmobile.errors import KDError

RNG = np.random.default_rng(0)


def _rgb(n: int, h: int = 8, w: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _raises(fn, *args, mention: str, **kw) -> str:
    """Call fn, assert a one-line KDError mentioning `mention`, return the message."""
    with pytest.raises(KDError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert mention in msg, msg
    return msg


@pytest.fixture
def shared() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared data dir not found (set KDMOBILE_SHARED_DATA or provide <repo>/../shared/data)")
    return d


# ---------------------------------------------------------------- digits and splits


def test_digits() -> None:
    d = load_digits()
    assert isinstance(d, ClassData) and d.name == "digits" and len(d) == 1797
    assert d.images.shape == (1797, 8, 8, 3) and d.images.dtype == np.uint8
    assert d.labels.dtype == np.int64 and set(d.labels.tolist()) == set(range(10))
    assert d.classes[0] == "zero" and d.classes[9] == "nine" and len(d.classes) == 10
    assert d.images.max() == 255 and d.images.min() == 0
    assert (d.images[..., 0] == d.images[..., 2]).all()
    sub = d.subset(np.array([3, 1]))
    assert len(sub) == 2 and sub.labels.tolist() == d.labels[[3, 1]].tolist()
    assert load_dataset("digits").images.shape == d.images.shape


@pytest.mark.parametrize("n", [3, 10, 101, 1000])
def test_split_indices(n: int) -> None:
    tr, va, te = split_indices(n, seed=7, val_frac=0.1, test_frac=0.2)
    again = split_indices(n, seed=7, val_frac=0.1, test_frac=0.2)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    assert len(tr) and len(va) and len(te)
    allidx = np.concatenate([tr, va, te])
    assert len(allidx) == n and set(allidx.tolist()) == set(range(n))
    other = split_indices(n, seed=8, val_frac=0.1, test_frac=0.2)
    if n >= 100:
        assert not np.array_equal(te, other[2])
        assert abs(len(te) - 0.2 * n) <= 1 and abs(len(va) - 0.1 * n) <= 1


def test_split_bad_fracs() -> None:
    _raises(split_indices, 10, 0, 0.6, 0.5, mention="fractions")


def test_stratified_split() -> None:
    labels = np.repeat(np.arange(5), [3, 10, 20, 50, 4])
    tr, va, te = stratified_split(labels, seed=1, val_frac=0.1, test_frac=0.2)
    assert set(np.concatenate([tr, va, te]).tolist()) == set(range(len(labels)))
    assert len(tr) + len(va) + len(te) == len(labels)
    for part in (tr, va, te):
        assert set(labels[part].tolist()) == set(range(5))
    assert np.array_equal(te, stratified_split(labels, seed=1, val_frac=0.1, test_frac=0.2)[2])


def test_split_dataset_class_and_truncation() -> None:
    d = ClassData(_rgb(1000), np.repeat(np.arange(10), 100).astype(np.int64), [str(i) for i in range(10)], "t")
    tr, va, te = split_dataset(d, seed=0, val_frac=0.0, test_frac=0.2, max_train=400, max_test=100)
    assert (len(tr), len(va), len(te)) == (400, 0, 100)
    assert np.bincount(tr.labels, minlength=10).tolist() == [40] * 10
    assert np.bincount(te.labels, minlength=10).tolist() == [10] * 10
    tr2, _, te2 = split_dataset(d, seed=0, val_frac=0.0, test_frac=0.2, max_train=400, max_test=100)
    assert np.array_equal(tr.images, tr2.images) and np.array_equal(te.labels, te2.labels)


def test_split_dataset_captions() -> None:
    d = CaptionData(_rgb(20), [[f"c{i}"] for i in range(20)], "caps")
    tr, va, te = split_dataset(d, seed=3)
    assert (len(tr), len(va), len(te)) == (14, 2, 4)
    seen = [c[0] for part in (tr, va, te) for c in part.captions]
    assert sorted(seen) == sorted(f"c{i}" for i in range(20))


# ---------------------------------------------------------------- CIFAR


def _cifar_npz(path: Path, n: int = 12, **override) -> Path:
    arrays = {"images": _rgb(n, 32, 32), "labels": np.arange(n) % 3, "classes": np.array(["a", "b", "c"])}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_cifar_npz(tmp_path: Path) -> None:
    p = _cifar_npz(tmp_path / "tiny.npz")
    d = load_dataset(f"cifar10:{p}")
    assert d.name == "cifar10" and d.classes == ["a", "b", "c"] and d.images.shape == (12, 32, 32, 3)
    assert d.labels.dtype == np.int64
    assert load_cifar(p).name == "tiny"


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in obj.items()}, f, protocol=2)


def test_cifar10_pickle_dir(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    names = [f"class{i}".encode() for i in range(10)]
    _pickle(d / "batches.meta", {"label_names": names, "num_cases_per_batch": 4})
    expected = []
    for i, f in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        hwc = _rgb(4, 32, 32)
        expected.append(hwc)
        rows = hwc.transpose(0, 3, 1, 2).reshape(4, 3072)
        _pickle(d / f, {"data": rows, "labels": [i, i, (i + 1) % 10, 9], "batch_label": b"x"})
    for p in (d, tmp_path):  # the batches dir or its parent
        data = load_dataset(f"cifar10:{p}")
        assert data.name == "cifar10" and data.classes[3] == "class3" and len(data) == 24
        assert np.array_equal(data.images, np.concatenate(expected))
        assert data.labels[:4].tolist() == [0, 0, 1, 9]


def test_cifar100_pickle_dir(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    _pickle(d / "meta", {"fine_label_names": [f"f{i}".encode() for i in range(100)], "coarse_label_names": []})
    for f, n in (("train", 5), ("test", 3)):
        rows = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        _pickle(d / f, {"data": rows, "fine_labels": list(range(n)), "coarse_labels": [0] * n})
    data = load_dataset(f"cifar100:{tmp_path}")
    assert data.name == "cifar100" and len(data.classes) == 100 and len(data) == 8
    assert data.labels.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]


def test_cifar_pickle_dir_bad(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    _pickle(d / "meta", {"fine_label_names": [b"a", b"b"]})
    _raises(load_cifar, d, mention="train")  # missing files
    _pickle(d / "train", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]})
    (d / "test").write_bytes(b"garbage")
    _raises(load_cifar, d, mention=str(d / "test"))
    _pickle(d / "test", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]})
    assert len(load_cifar(d)) == 4
    _pickle(d / "train", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 5]})
    assert "out of range" in _raises(load_cifar, d, mention=str(d / "train"))
    _pickle(d / "train", {"data": np.zeros((2, 3, 32, 32), np.uint8), "fine_labels": [0, 1]})
    assert "3072" in _raises(load_cifar, d, mention=str(d / "train"))
    with open(d / "train", "wb") as f:  # a pickle that would run code
        pickle.dump({b"data": Path("x"), b"fine_labels": []}, f)
    _raises(load_cifar, d, mention="pathlib")


def test_cifar_shared_real(shared: Path) -> None:
    p = shared / "cifar10" / "cifar10_test.npz"
    if not p.exists():
        pytest.skip(f"{p} not present")
    d = load_dataset(f"cifar10:{p}")
    assert d.images.shape == (10000, 32, 32, 3) and d.classes[0] == "airplane" and d.classes[9] == "truck"
    assert np.bincount(d.labels).tolist() == [1000] * 10
    tr, va, te = split_dataset(d, seed=0, val_frac=0.0, test_frac=0.2, max_train=8000, max_test=2000)
    assert (len(tr), len(va), len(te)) == (8000, 0, 2000)
    assert np.bincount(te.labels).tolist() == [200] * 10


# ---------------------------------------------------------------- image folders


def test_imagefolder(tmp_path: Path) -> None:
    for cls, sizes in (("cat", [(10, 12), (20, 20)]), ("dog", [(10, 12)])):
        (tmp_path / cls).mkdir()
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(_rgb(1, h, w)[0]).save(tmp_path / cls / f"{i}.png")
    Image.fromarray(_rgb(1, 5, 5)[0][..., 0]).convert("L").save(tmp_path / "dog" / "grey.JPG")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    d = load_dataset(f"imagefolder:{tmp_path}")
    assert isinstance(d, ImageFiles) and not d.given  # a file list: nothing decoded
    assert d.classes == ["cat", "dog"] and d.labels.tolist() == [0, 0, 1, 1]
    assert [d.path(i).name for i in range(len(d))] == ["0.png", "1.png", "0.png", "grey.JPG"]
    assert d.native_size() == (12, 10)


def test_imagefolder_bad(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.fromarray(_rgb(1)[0]).save(tmp_path / "a" / "ok.png")
    (tmp_path / "empty").mkdir()
    _raises(scan_imagefolder, tmp_path, mention="empty")
    _raises(scan_imagefolder, tmp_path / "a" / "ok.png", mention="ok.png")


# ---------------------------------------------------------------- captions


def test_flickr_npz_synthetic(tmp_path: Path) -> None:
    caps = [["a dog", "a brown dog"], ["a cat"], ["sky"]]
    np.savez(tmp_path / "f.npz", images=_rgb(3, 16, 16), captions=np.array(json.dumps(caps)),
             filenames=np.array(["1.jpg", "2.jpg", "3.jpg"]))
    for p in (tmp_path, tmp_path / "f.npz"):
        d = load_dataset(f"captions:{p}")
        assert isinstance(d, CaptionData) and d.captions == caps and d.images.shape == (3, 16, 16, 3)
    assert load_captions(tmp_path, size=8, limit=2).images.shape == (2, 8, 8, 3)
    sub = d.subset(np.array([2, 0]))
    assert sub.captions == [caps[2], caps[0]] and len(sub) == 2


def test_flickr_shared_real(shared: Path) -> None:
    p = shared / "flickr8k"
    if not p.is_dir():
        pytest.skip(f"{p} not present")
    d = load_captions(p)
    assert d.images.shape == (1000, 64, 64, 3) and len(d.captions) == 1000
    assert all(len(c) == 5 for c in d.captions)


def _jpegs(folder: Path, names: list[str]) -> None:
    for i, n in enumerate(names):
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(1, 20 + 10 * i, 30)[0]).save(folder / n)


def test_karpathy_json(tmp_path: Path) -> None:
    _jpegs(tmp_path, ["val2014/a.jpg", "b.png"])
    obj = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "A man.", "tokens": ["a", "man"]}, {"tokens": ["two", "men"]}]},
        {"filename": "b.png", "sentences": [{"raw": "A bird."}]},
        {"filename": "missing_but_uncaptioned.jpg", "sentences": []},
    ], "dataset": "coco"}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(obj))
    d = load_dataset(f"captions:{tmp_path / 'dataset_coco.json'}")
    assert isinstance(d, ImageFiles) and d.captions == [["A man.", "two men"], ["A bird."]]  # a file list
    assert [d.path(i).relative_to(tmp_path).as_posix() for i in range(len(d))] == ["val2014/a.jpg", "b.png"]
    train, _, test = split_dataset(d, 0, 0.0, 0.5)  # split like any caption set, not stratified by image
    assert len(train) == 1 and len(test) == 1 and train.captions != test.captions


def test_coco_json(tmp_path: Path) -> None:
    _jpegs(tmp_path / "imgs", ["x.jpg", "y.jpg"])
    obj = {"images": [{"id": 7, "file_name": "x.jpg"}, {"id": 9, "file_name": "y.jpg"}],
           "annotations": [{"image_id": 9, "caption": "why"}, {"image_id": 7, "caption": "ex"},
                           {"image_id": 9, "caption": "why two"}]}
    j = tmp_path / "captions_val.json"
    j.write_text(json.dumps(obj))
    d = load_captions(j, image_root=tmp_path / "imgs")
    assert d.captions == [["ex"], ["why", "why two"]] and d.path(1) == tmp_path / "imgs" / "y.jpg"
    _raises(load_captions, j, mention="x.jpg")  # images not beside the JSON
    obj["annotations"].append({"image_id": 3, "caption": "?"})
    j.write_text(json.dumps(obj))
    _raises(load_captions, j, image_root=tmp_path / "imgs", mention="captions_val.json")


# ---------------------------------------------------------------- bad inputs


def test_missing_paths(tmp_path: Path) -> None:
    for spec in ("cifar10", "cifar100", "imagefolder", "captions"):
        _raises(load_dataset, f"{spec}:{tmp_path / 'nope_xyz'}", mention="nope_xyz")
    _raises(load_dataset, "cifar10:", mention="PATH")


def test_unknown_scheme(tmp_path: Path) -> None:
    msg = _raises(load_dataset, f"mnist:{tmp_path / 'm.npz'}", mention="m.npz")
    assert "cifar10:PATH" in msg and "digits" in msg


def test_text_file_named_npz(tmp_path: Path) -> None:
    p = tmp_path / "fake.npz"
    p.write_text("hello, not a zip\n")
    _raises(load_cifar, p, mention="fake.npz")
    _raises(load_captions, p, mention="fake.npz")


@pytest.mark.parametrize("override,mention", [
    ({"labels": None}, "labels"),
    ({"images": _rgb(12, 32, 32).astype(np.float32)}, "uint8"),
    ({"images": _rgb(12, 32, 32)[..., :1]}, "(N,H,W,3)"),
    ({"images": np.zeros((0, 32, 32, 3), np.uint8), "labels": np.zeros(0, np.int64)}, "empty"),
    ({"labels": np.arange(12)}, "out of range"),
    ({"labels": np.arange(5) % 3}, "12 images but 5 labels"),
    ({"labels": (np.arange(12) % 3).astype(np.float32)}, "integer"),
    ({"classes": np.array([1, 2, 3])}, "classes"),
])
def test_bad_cifar_npz(tmp_path: Path, override: dict, mention: str) -> None:
    p = _cifar_npz(tmp_path / "bad.npz", **override)
    msg = _raises(load_cifar, p, mention="bad.npz")
    assert mention in msg


def test_bad_caption_npz(tmp_path: Path) -> None:
    p = tmp_path / "c.npz"
    np.savez(p, images=_rgb(2))
    _raises(load_captions, p, mention="c.npz")
    np.savez(p, images=_rgb(2), captions=np.array("[[\"a\"]]"))
    assert "2 images but 1" in _raises(load_captions, p, mention="c.npz")
    np.savez(p, images=_rgb(2), captions=np.array("[[\"a\"], ["))
    _raises(load_captions, p, mention="c.npz")
    np.savez(p, images=_rgb(2), captions=np.array("[[\"a\"], []]"))
    _raises(load_captions, p, mention="c.npz")


def test_malformed_json(tmp_path: Path) -> None:
    p = tmp_path / "dataset_bad.json"
    p.write_text('{"images": [ {"filename": "a.jpg", ')
    assert "line 1" in _raises(load_captions, p, mention="dataset_bad.json")
    p.write_text('{"images": [{"filename": "a.jpg"}]}')
    _raises(load_captions, p, mention="dataset_bad.json")
    p.write_text('[1, 2]')
    _raises(load_captions, p, mention="dataset_bad.json")
    p.write_text('{"images": []}')
    assert "empty" in _raises(load_captions, p, mention="dataset_bad.json")
