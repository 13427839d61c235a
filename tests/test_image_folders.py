"""Photo folders that stream from disk: layouts used as given, timm's transforms (cropped, never stretched), one-line
errors for a broken photo, and an AMMKD run on a split folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdmobile.data import ImageFiles, load_dataset, split_dataset
from kdmobile.errors import KDError
from kdmobile.train.image_stream import CROP_PCT, FileImages, eval_transform, train_transform

RNG = np.random.default_rng(0)
COLOURS = {"red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220)}


def _folder(root: Path, splits: dict[str, int], size: tuple[int, int] = (40, 30)) -> Path:
    """root/SPLIT/CLASS/i.png with `n` noisy photos per class (root/CLASS/... when SPLIT is '')."""
    for split, n in splits.items():
        for name, colour in COLOURS.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(RNG.normal(0, 30, (size[1], size[0], 3)) + colour, 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def test_train_val_layout_is_used_as_given(tmp_path: Path) -> None:
    root = _folder(tmp_path / "set", {"train": 10, "val": 4})
    d = load_dataset(f"imagefolder:{root}")
    assert isinstance(d, ImageFiles) and d.classes == sorted(COLOURS)  # not two classes "train" and "val"
    assert "train/ + val/ used as given" in d.layout
    train, val, test = split_dataset(d, 0, val_frac=0.2, test_frac=0.3)
    test_files = {str(test.path(i).relative_to(root)) for i in range(len(test))}
    assert len(test) == 12 and all(f.startswith("val/") for f in test_files)  # test = the given val/
    assert len(train) + len(val) == 30 and len(val) == 6  # validation drawn from train/, per class
    assert all(str(val.path(i).relative_to(root)).startswith("train/") for i in range(len(val)))
    assert set(np.bincount(val.labels)) == {2}


def test_train_val_test_layout_keeps_all_three(tmp_path: Path) -> None:
    root = _folder(tmp_path / "set", {"train": 6, "validation": 2, "test": 3})
    train, val, test = split_dataset(load_dataset(f"imagefolder:{root}"), 0)
    assert (len(train), len(val), len(test)) == (18, 6, 9)
    assert str(val.path(0).relative_to(root)).startswith("validation/")


def test_class_folders_are_split_here(tmp_path: Path) -> None:
    root = _folder(tmp_path / "set", {"": 10})
    d = load_dataset(f"imagefolder:{root}")
    assert d.classes == sorted(COLOURS) and not d.given
    train, val, test = split_dataset(d, 0, 0.1, 0.2)
    assert len(train) + len(val) + len(test) == 30 and len(test) == 6


def test_unknown_class_in_val_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "set", {"train": 2, "val": 1})
    (root / "val" / "purple").mkdir()
    with pytest.raises(KDError, match="purple"):
        load_dataset(f"imagefolder:{root}")


def _photo(path: Path, w: int = 150, h: int = 100) -> Image.Image:
    a = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(a).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(2)))
    Image.fromarray(a).save(path)
    return Image.open(path).convert("RGB")


def test_eval_transform_matches_timm(tmp_path: Path) -> None:
    """Within one uint8 level of timm's own evaluation transform (float, normalised) on a non-square photo."""
    from timm.data import create_transform

    img = _photo(tmp_path / "p.png")
    ours = eval_transform(64)(img).numpy().astype(np.float64)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    timm_t = create_transform(64, is_training=False, crop_pct=CROP_PCT, interpolation="bilinear", mean=mean, std=std)
    ref = timm_t(img).numpy() * std[:, None, None] + mean[:, None, None]
    assert ours.shape == (3, 64, 64)
    assert np.abs(ours - ref * 255).max() <= 1.0


def test_non_square_photo_is_cropped_not_stretched(tmp_path: Path) -> None:
    a = np.zeros((40, 120, 3), np.uint8)
    a[:, :40], a[:, 40:80], a[:, 80:] = COLOURS["red"], COLOURS["green"], COLOURS["blue"]
    Image.fromarray(a).save(tmp_path / "wide.png")
    for transform in (eval_transform(32), train_transform(32, "none")):
        x = transform(Image.open(tmp_path / "wide.png").convert("RGB")).numpy()
        assert x.dtype == np.uint8 and x.shape == (3, 32, 32)
        # the center square only: green everywhere; a stretch would put red and blue at the sides
        assert (x[1] > 200).all() and (x[0] < 60).all() and (x[2] < 60).all()


def test_training_views_are_random_crops_at_size(tmp_path: Path) -> None:
    _photo(tmp_path / "p.png")
    files = ImageFiles(tmp_path, np.asarray([b"p.png"]), np.zeros(1, np.int64), ["a"], "x")
    ds = FileImages(files, torch.zeros(1, dtype=torch.int64), train_transform(48, "strong"))
    torch.manual_seed(0)
    views = [ds[0][0] for _ in range(4)]
    assert all(v.shape == (3, 48, 48) and v.dtype == torch.uint8 for v in views)
    assert len({v.numpy().tobytes() for v in views}) == 4


def test_broken_photo_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    root = _folder(tmp_path / "set", {"": 2})
    (root / "red" / "broken.png").write_bytes(b"not a png")
    d = load_dataset(f"imagefolder:{root}")
    ds = FileImages(d, torch.from_numpy(d.labels), eval_transform(16))
    i = next(i for i in range(len(d)) if d.path(i).name == "broken.png")
    with pytest.raises(KDError) as err:
        ds[i]
    assert "broken.png" in str(err.value) and "\n" not in str(err.value)


def test_worker_error_reaches_the_cli_as_one_line(tmp_path: Path, capsys) -> None:
    """A photo that fails inside a DataLoader worker still ends the command with one line and exit 2."""
    from kdmobile.cli import main

    root = _folder(tmp_path / "set", {"train": 4, "val": 2})
    (root / "train" / "red" / "zz_broken.png").write_bytes(b"\x89PNG broken")
    code = main(["train", "ammkd", "--data", f"imagefolder:{root}", "--out", str(tmp_path / "runs"), "--no-progress",
                 "--image-size", "16", "--workers", "1", "--set", "teacher_train.epochs=1", "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "zz_broken.png" in err[0] and "Traceback" not in err[0], err


def test_ammkd_on_a_split_folder(tmp_path: Path) -> None:
    """Trains through the streaming path with workers; heldout.npz holds eval-transformed crops at the run's size."""
    from kdmobile.cli import main

    root = _folder(tmp_path / "set", {"train": 8, "val": 3}, size=(48, 32))
    code = main(["train", "ammkd", "--data", f"imagefolder:{root}", "--out", str(tmp_path / "runs"), "--name", "f",
                 "--no-progress", "--image-size", "24", "--workers", "2", "--set", "teacher_train.epochs=1",
                 "--epochs", "1"])
    assert code == 0
    run = tmp_path / "runs" / "f"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split_sizes"]["test"] == 9 and metrics["student_init"] == "random"
    with np.load(run / "heldout.npz") as z:
        assert z["images_test"].shape == (9, 24, 24, 3) and z["images_calib"].shape[1:] == (24, 24, 3)


def test_caption_json_streams_and_exports(tmp_path: Path) -> None:
    """Karpathy-style captions: photos decoded by workers at the run's size; heldout.npz keeps each kept image's
    captions with owners renumbered; the run exports and verifies."""
    from kdmobile.cli import main

    items = []
    for i in range(24):
        name = list(COLOURS)[i % 3]
        a = np.clip(RNG.normal(0, 30, (30 + i, 40, 3)) + COLOURS[name], 0, 255).astype(np.uint8)
        Image.fromarray(a).save(tmp_path / f"{i}.jpg")
        items.append({"filename": f"{i}.jpg", "sentences": [{"raw": f"a {name} photo"}, {"raw": f"{name} {i}"}]})
    (tmp_path / "dataset.json").write_text(json.dumps({"images": items}))
    out = tmp_path / "runs"
    assert main(["train", "ammkd", "--data", f"captions:{tmp_path / 'dataset.json'}", "--out", str(out), "--name",
                 "c", "--no-progress", "--image-size", "16", "--workers", "1", "--teachers", "kd-vit-tiny,kd-rn-tiny",
                 "--set", "teacher_train.epochs=1", "--epochs", "1", "--set", "health.drop_weak=false"]) == 0
    metrics = json.loads((out / "c" / "metrics.json").read_text())
    assert metrics["task"] == "captions" and "i2t_R@1" in metrics["models"]["student"]
    with np.load(out / "c" / "heldout.npz") as z:
        n = len(z["images_test"])
        assert z["images_test"].shape[1:] == (16, 16, 3) and set(z["caption_owner_test"].tolist()) == set(range(n))
        assert len(z["captions_test"]) == 2 * n
    assert main(["export", str(out / "c"), "--target", "onnx", "--precision", "fp32", "--out",
                 str(tmp_path / "bundles")]) == 0
