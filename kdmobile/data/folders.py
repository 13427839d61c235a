"""Photo folders as file lists: only relative paths and labels are held in RAM; images are decoded where they are used
(DataLoader workers), so memory does not grow with the folder. No torch.

Two layouts: `DIR/CLASS/*` (kdmobile splits it) and `DIR/{train,val[,test]}/CLASS/*` (ImageNet, Imagenette, most Kaggle
sets), whose splits are used as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdmobile.data.images import IMAGE_EXTS, as_index, existing
from kdmobile.errors import UserError
from kdmobile.untrusted import MAX_CLASSES

# A file list costs ~40 bytes per image here (relative path bytes + label): 20 M images is under 1 GB. Above it a user
# splits the folder (or raises the limit with KDMOBILE_MAX_FILES) rather than finding out when memory runs out.
MAX_FILES = int(os.environ.get("KDMOBILE_MAX_FILES", 20_000_000))
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class ImageFiles:
    """Labelled image files under `root`: `files` are relative paths (bytes, fixed width: a numpy array, not a list of
    Python objects, so forked DataLoader workers do not copy it page by page through reference counting)."""

    root: Path
    files: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    layout: str = "CLASS/ folders, split here"
    given: dict[str, np.ndarray] = field(default_factory=dict)  # split name -> indices, when the folder was split
    captions: list[list[str]] | None = None  # caption data (Karpathy / COCO JSON): each image's captions, no classes

    def __post_init__(self) -> None:
        if len(self.files) != len(self.labels):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(len(self.files))

    def path(self, i: int) -> Path:
        """The absolute path of image i."""
        return self.root / os.fsdecode(bytes(self.files[i]))

    def subset(self, idx: np.ndarray) -> ImageFiles:
        """The files at `idx` (integer indices or a boolean mask); the split layout is not carried over."""
        i = as_index(idx)
        caps = [list(self.captions[j]) for j in i.tolist()] if self.captions is not None else None
        return ImageFiles(self.root, self.files[i], self.labels[i], list(self.classes), self.name, self.layout,
                          captions=caps)

    def native_size(self) -> tuple[int, int]:
        """(height, width) of the first image, read from its header only."""
        from PIL import Image

        from kdmobile.untrusted import open_image

        p = self.path(0)
        try:
            with Image.open(p) as im:
                return int(im.height), int(im.width)
        except Exception:  # noqa: BLE001 - let the checked decoder name the problem in one line
            img = open_image(p)
            return int(img.height), int(img.width)


def _images_under(d: Path) -> list[str]:
    """Image files below `d` (recursively, hidden entries skipped), as paths relative to d, sorted."""
    found: list[str] = []
    stack = [d]
    while stack:
        cur = stack.pop()
        with os.scandir(cur) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.is_file():
                    found.append(os.path.relpath(e.path, d))
                    if len(found) > MAX_FILES:
                        raise UserError(f"{d}: more than {MAX_FILES} images (the limit of one data set here; "
                                        "raise it with KDMOBILE_MAX_FILES)")
    return sorted(found)


def _class_dirs(d: Path) -> list[Path]:
    dirs = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    if len(dirs) > MAX_CLASSES:
        raise UserError(f"{d}: {len(dirs)} class folders, over the limit of {MAX_CLASSES}")
    return dirs


def _scan_classes(d: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """(relative paths from d, labels) of every image in d's class folders named in `classes`."""
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        cdir = d / name
        if not cdir.is_dir():
            continue
        found = _images_under(cdir)
        files += [os.path.join(name, f) for f in found]
        labels += [label] * len(found)
        if len(files) > MAX_FILES:
            raise UserError(f"{d}: more than {MAX_FILES} images (raise the limit with KDMOBILE_MAX_FILES)")
    return files, labels


def _split_layout(root: Path, subdirs: list[Path]) -> dict[str, Path] | None:
    """{split: folder} when root holds only train/ and val/ (valid, validation) and/or test/ folders, else None."""
    names = {d.name.lower() for d in subdirs}
    if not subdirs or not names <= set(SPLIT_NAMES) or "train" not in names or len(names) < 2:
        return None
    out: dict[str, Path] = {}
    for d in subdirs:
        split = SPLIT_NAMES[d.name.lower()]
        if split in out:
            raise UserError(f"{root}: both {out[split].name}/ and {d.name}/ look like the {split} split; keep one")
        out[split] = d
    return out


def scan_imagefolder(path: str | os.PathLike) -> ImageFiles:
    """The images of `DIR/CLASS/*` or `DIR/{train,val[,test]}/CLASS/*` as a file list (nothing decoded)."""
    root = existing(path, "imagefolder")
    if not root.is_dir():
        raise UserError(f"imagefolder: {root} is not a directory (expected one subfolder per class)")
    subdirs = _class_dirs(root)
    if not subdirs:
        raise UserError(f"{root}: no class subfolders (expected one subfolder per class with images inside)")
    splits = _split_layout(root, subdirs)
    if splits is None:
        classes = [d.name for d in subdirs]
        for d in subdirs:
            if not _images_under(d):
                raise UserError(f"{d}: class folder has no images ({', '.join(IMAGE_EXTS)})")
        files, labels = _scan_classes(root, classes)
        return ImageFiles(root, _as_bytes(files), np.asarray(labels, np.int64), classes, root.name)
    classes = [d.name for d in _class_dirs(splits["train"])]
    if not classes:
        raise UserError(f"{splits['train']}: no class subfolders")
    files, labels, given = [], [], {}
    for split, d in splits.items():
        unknown = sorted({c.name for c in _class_dirs(d)} - set(classes))
        if unknown:
            raise UserError(f"{d}: class folder(s) {', '.join(unknown[:5])} not in {splits['train'].name}/")
        f, lab = _scan_classes(d, classes)
        if not f:
            raise UserError(f"{d}: no images in its class folders ({', '.join(IMAGE_EXTS)})")
        given[split] = np.arange(len(files), len(files) + len(f), dtype=np.int64)
        files += [os.path.join(d.name, x) for x in f]
        labels += lab
    found = " + ".join(f"{splits[s].name}/" for s in ("train", "val", "test") if s in splits)
    use = "" if "test" in splits and "val" in splits else (
        f" (test = {splits['val'].name}/; validation drawn from train/)" if "val" in splits
        else " (validation drawn from train/)")
    layout = f"{found} used as given{use}"
    return ImageFiles(root, _as_bytes(files), np.asarray(labels, np.int64), classes, root.name, layout, given)


def caption_files(root: Path, rel: list[str], captions: list[list[str]], name: str) -> ImageFiles:
    """Captioned images (Karpathy / COCO JSON) as a file list: each image its own target, no classes."""
    return ImageFiles(root, _as_bytes(rel), np.arange(len(rel), dtype=np.int64), [], name, "captions JSON",
                      captions=captions)


def _as_bytes(files: list[str]) -> np.ndarray:
    """Relative paths as a fixed-width bytes array (file-system encoding, so odd names round-trip)."""
    return np.asarray([os.fsencode(f) for f in files], dtype=bytes) if files else np.zeros(0, "S1")
