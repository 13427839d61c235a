"""Labelled in-memory image datasets (digits, CIFAR-10/100) as uint8 RGB numpy arrays, and the checks every image
loader shares; no torch. Photo folders stream from disk instead (folders.py)."""

from __future__ import annotations

import abc
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdmobile.errors import KDError, UserError
from kdmobile.untrusted import MAX_CLASSES, check_array_file, only_arrays

MAX_NAME_CHARS = 256

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR100_FILES = ["train", "test"]


@dataclass
class Samples(abc.ABC):
    """Images (N,H,W,3) uint8 RGB, each paired with one entry of `targets` (a label or a caption list)."""

    TARGETS = "targets"  # what the targets are called in errors
    images: np.ndarray

    @abc.abstractmethod
    def targets(self) -> Any:
        """What each image is paired with."""

    def __post_init__(self) -> None:
        t = self.targets()
        if len(self.images) != len(t):
            raise ValueError(f"{len(self.images)} images but {len(t)} {type(self).TARGETS}")

    def __len__(self) -> int:
        return int(len(self.images))


@dataclass
class ClassData(Samples):
    """Images with integer class labels: images (N,H,W,3) uint8 RGB, labels (N,) int64 in [0, len(classes))."""

    TARGETS = "labels"
    labels: np.ndarray
    classes: list[str]
    name: str

    def targets(self) -> np.ndarray:
        return self.labels

    def subset(self, idx: np.ndarray) -> ClassData:
        """The samples at `idx` (integer indices or a boolean mask), same classes and name."""
        i = as_index(idx)
        return ClassData(self.images[i], self.labels[i], list(self.classes), self.name)


# ---------------------------------------------------------------- shared helpers (also used by captions.py)


def as_index(idx: Any) -> np.ndarray:
    """Integer index array from indices or a boolean mask (so subsets never silently mis-index)."""
    a = np.asarray(idx)
    if a.dtype == bool:
        return np.flatnonzero(a)
    if a.size == 0:
        return a.astype(np.int64).reshape(0)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"subset indices must be integers or a boolean mask, got {a.dtype}")
    return a.astype(np.int64, copy=False)


def short(exc: BaseException, limit: int = 160) -> str:
    """An exception as a short single line, for embedding in a KDError."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def existing(path: str | os.PathLike, what: str) -> Path:
    """`path` with ~ expanded, or a KDError saying it does not exist."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.exists():
        raise UserError(f"{what}: {p}: no such file or directory")
    return p


def read_npz(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read the named arrays of an .npz (no pickles); KDError if unreadable, too large or a required key is missing."""
    check_array_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not an .npz archive")
            missing = [k for k in required if k not in z.files]
            if missing:
                raise UserError(
                    f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(z.files) or 'none'})"
                )
            return only_arrays({k: z[k] for k in required + optional if k in z.files}, path)
    except KDError:
        raise
    except Exception as e:  # zipfile, zlib, pickle-refusal and format errors all mean "corrupt"
        raise UserError(f"cannot read {path}: not a valid .npz archive ({short(e)})") from None


def check_images(images: np.ndarray, src: Path, key: str = "images") -> None:
    """KDError unless `images` is a non-empty uint8 (N,H,W,3) array."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:3]:
        raise UserError(f"{src}: '{key}' must be a uint8 array of shape (N,H,W,3), got {images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise UserError(f"{src}: dataset is empty (0 images)")


def check_labels(labels: np.ndarray, n: int, n_classes: int, src: Path) -> np.ndarray:
    """`labels` as int64 after checking it is 1-D, integer, length n and within [0, n_classes)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{src}: 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) != n:
        raise UserError(f"{src}: {n} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"{src}: label {int(labels[i])} at index {i} is out of range [0, {n_classes})")
    return labels.astype(np.int64)


def hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(height, width) from an int (square) or an (H, W) pair; None stays None."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise UserError(f"image size must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def read_image(path: Path) -> Image.Image:
    """Decode one image file to RGB with Pillow; KDError naming the file if it cannot be read."""
    from kdmobile.untrusted import open_image

    try:
        return open_image(path, "RGB")  # pixel limit before decoding; 16-bit greyscale scaled, not saturated
    except KDError as e:
        raise UserError(f"cannot read image {e}") from None


# ---------------------------------------------------------------- digits


def load_digits() -> ClassData:
    """scikit-learn's bundled 8x8 digits (1797 images) as uint8 RGB: a dataset that needs no files."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    grey = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    return ClassData(images, d.target.astype(np.int64), list(DIGIT_CLASSES), "digits")


# ---------------------------------------------------------------- CIFAR


def load_cifar(path: str | os.PathLike, name: str | None = None) -> ClassData:
    """CIFAR-10/100 from an .npz (images, labels, classes) or the official python pickle directory."""
    p = existing(path, "cifar")
    if p.is_dir():
        return _load_cifar_pickles(_cifar_dir(p), name)
    arrays = read_npz(p, ("images", "labels", "classes"))
    images, labels, classes = arrays["images"], arrays["labels"], _class_names(arrays["classes"], p)
    check_images(images, p)
    labels = check_labels(labels, len(images), len(classes), p)
    default = {10: "cifar10", 100: "cifar100"}.get(len(classes), p.stem)
    return ClassData(images, labels, classes, name or default)


def _class_names(arr: np.ndarray, src: Path) -> list[str]:
    """Class names from a 1-D str/bytes array, checked non-empty and unique."""
    if arr.ndim != 1 or arr.dtype.kind not in "US" or arr.size == 0:
        raise UserError(f"{src}: 'classes' must be a non-empty 1-D string array, got {arr.dtype} {arr.shape}")
    names = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in arr.tolist()]
    if len(set(names)) != len(names):
        raise UserError(f"{src}: 'classes' has duplicate names")
    return names


def _cifar_dir(p: Path) -> Path:
    """The batches directory itself, or its `cifar-10-batches-py` / `cifar-100-python` child."""
    if (p / "batches.meta").exists() or (p / "meta").exists():
        return p
    for child in ("cifar-10-batches-py", "cifar-100-python"):
        if (p / child).is_dir():
            return p / child
    raise UserError(
        f"{p}: not a CIFAR python directory (expected batches.meta with data_batch_1..5 and test_batch, "
        "or meta with train and test) and not an .npz file"
    )


def _load_cifar_pickles(d: Path, name: str | None) -> ClassData:
    """All training batches plus the test batch of a CIFAR-10 or CIFAR-100 python directory, concatenated."""
    if (d / "batches.meta").exists():
        meta_file, names_key, files, labels_key, default = d / "batches.meta", "label_names", CIFAR10_FILES, "labels", "cifar10"
    else:
        meta_file, names_key, files, labels_key, default = d / "meta", "fine_label_names", CIFAR100_FILES, "fine_labels", "cifar100"
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise UserError(f"{d}: missing CIFAR file(s) {', '.join(missing)}")
    meta = _unpickle_dict(meta_file, (names_key,))
    raw_names = meta[names_key]
    if (not isinstance(raw_names, (list, tuple)) or not 0 < len(raw_names) <= MAX_CLASSES
            or not all(isinstance(c, (bytes, str)) and len(c) <= MAX_NAME_CHARS for c in raw_names)):
        raise UserError(f"{meta_file}: '{names_key}' must be a list of 1 to {MAX_CLASSES} names (strings of at most "
                        f"{MAX_NAME_CHARS} characters)")
    classes = [c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in raw_names]
    images, labels = [], []
    for f in files:
        batch = _unpickle_dict(d / f, ("data", labels_key))
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise UserError(f"{d / f}: 'data' must be a uint8 array of shape (N, 3072), got {got}")
        lab = _flat_labels(batch[labels_key], len(data), d / f, labels_key)
        labels.append(check_labels(lab, len(data), len(classes), d / f))
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    all_images = np.concatenate(images)
    if len(all_images) == 0:
        raise UserError(f"{d}: dataset is empty (0 images)")
    return ClassData(all_images, np.concatenate(labels), classes, name or default)


def _flat_labels(raw: Any, n: int, src: Path, key: str) -> np.ndarray:
    """A batch's labels as a 1-D array, checked element by element *before* numpy sees them: a pickle of shared
    nested lists is a few KB on disk and expands without bound in np.asarray."""
    if isinstance(raw, np.ndarray) and raw.ndim == 1 and raw.dtype.kind in "iu" and len(raw) == n:
        return raw
    if isinstance(raw, (list, tuple)) and len(raw) == n and all(type(v) is int and -1 <= v <= MAX_CLASSES
                                                               for v in raw):
        return np.asarray(raw, dtype=np.int64)  # -1 and MAX_CLASSES fit int64; check_labels reports the range
    got = (f"an array of shape {raw.shape}" if isinstance(raw, np.ndarray)  # never np.shape(list): it expands it
           else f"{len(raw)} entries" if isinstance(raw, (list, tuple)) else type(raw).__name__)
    raise UserError(f"{src}: '{key}' must be a flat list of {n} integers (one per image), got {got}")


_PICKLE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain containers, so a data file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        canonical = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (canonical, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR batch never contains")
        try:
            return super().find_class(canonical, name)
        except (ImportError, AttributeError):  # numpy < 2 has no numpy._core
            return super().find_class(module, name)


def _unpickle_dict(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """A CIFAR pickle (bytes or str keys) as a str-keyed dict; KDError if unreadable or keys are missing."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise UserError(f"cannot read {path}: not a valid CIFAR pickle ({short(e)})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    out = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}
    missing = [k for k in required if k not in out]
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(sorted(out)) or 'none'})")
    return out
