"""Photos decoded where they are used: a Dataset over a file list with timm's transforms, run in DataLoader workers.

Training views are timm's RandomResizedCrop (+ flip, + TrivialAugmentWide at `strong`, as for in-memory sets);
evaluation is timm's resize of the
shorter side then a center crop at `crop_pct` (never a stretch). Both end in uint8 (3,S,S) tensors, as the in-memory
sets do, so every step normalises on the device the same way and a batch crosses to the device at a quarter of the
float size (timm's own `use_prefetcher` layout).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdmobile.data.folders import ImageFiles
from kdmobile.errors import KDError, UserError
from kdmobile.untrusted import open_image

CROP_PCT = 0.875  # timm's DEFAULT_CROP_PCT: resize the shorter side to S / 0.875, center-crop S
INTERPOLATION = "bilinear"
MAX_WORKERS = 64


def default_workers() -> int:
    """DataLoader workers for decoding photos: one per core, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def check_workers(n: int) -> int:
    """`n` if it is a sane worker count; a one-line error otherwise (each worker is a process with its own memory)."""
    if not 0 <= n <= MAX_WORKERS:
        raise UserError(f"--workers {n}: must be between 0 and {MAX_WORKERS}")
    return n


def train_transform(size: int, level: str) -> Any:
    """timm's training transform for augmentation `level` (none: the evaluation transform), ending in uint8.

    `strong` adds torchvision's TrivialAugmentWide between timm's crop/flip and its tensor step (the in-memory
    sets' `strong` policy): timm's RandAugment posterizes to 0 bits at some magnitudes, which Pillow 13 refuses."""
    from timm.data import create_transform
    from torchvision import transforms as tv

    if level == "none":
        return eval_transform(size)
    primary, secondary, final = create_transform(
        size, is_training=True, use_prefetcher=True, interpolation=INTERPOLATION,
        scale=(0.08, 1.0) if level == "strong" else (0.35, 1.0),
        hflip=0.5 if level in ("crop-flip", "strong") else 0.0, color_jitter=0.0, separate=True)
    extra = [tv.TrivialAugmentWide()] if level == "strong" else []
    return tv.Compose([*primary.transforms, *secondary.transforms, *extra, *final.transforms])


def eval_transform(size: int) -> Any:
    """timm's evaluation transform: shorter side to size / CROP_PCT, center crop size x size, uint8."""
    from timm.data import create_transform

    return create_transform(size, is_training=False, use_prefetcher=True, interpolation=INTERPOLATION,
                            crop_pct=CROP_PCT)


class FileImages(Dataset):
    """Images of an `ImageFiles` list, decoded and transformed per item; items are (uint8 (3,S,S), target)."""

    default_workers = staticmethod(default_workers)  # the training loop asks the dataset how many workers suit it

    def __init__(self, files: ImageFiles, targets: torch.Tensor, transform: Any) -> None:
        self.files = files
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files.path(int(i))
        try:
            img = open_image(path)  # pixel limit before decoding; one-line error naming the file
        except KDError as e:
            raise UserError(f"cannot read image {e}") from None
        x = self.transform(img)
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.asarray(x))
        return x, self.targets[i]


def ordered_batches(files: ImageFiles, size: int, batch_size: int = 128,
                    workers: int | None = None) -> DataLoader:
    """Evaluation batches of (uint8 images, labels) in file order, decoded by workers."""
    ds = FileImages(files, torch.from_numpy(files.labels), eval_transform(size))
    n = default_workers() if workers is None else workers
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=n)


def decode_sample(files: ImageFiles, idx: np.ndarray, size: int) -> np.ndarray:
    """(N,S,S,3) uint8 of the images at `idx` with the evaluation transform (heldout.npz, calibration)."""
    sub = files.subset(idx)
    out = np.empty((len(sub), size, size, 3), np.uint8)
    k = 0
    for images, _ in ordered_batches(sub, size):
        out[k:k + len(images)] = images.permute(0, 2, 3, 1).numpy()
        k += len(images)
    return out


class FileViews:
    """Training views of a photo folder regenerated from a seed (the view cache's source for files)."""

    def __init__(self, files: ImageFiles, size: int, level: str) -> None:
        self.data = FileImages(files, torch.from_numpy(files.labels), train_transform(size, level))

    def __len__(self) -> int:
        return len(self.data)

    def view(self, i: int, seed: int) -> torch.Tensor:
        from kdmobile.train.view_cache import seeded

        return seeded(seed, lambda: self.data[i][0])

    def fingerprint(self) -> str:
        """sha256 of the relative paths with each file's size and modification time (an edited photo changes it)."""
        files = self.data.files
        h = hashlib.sha256(str(files.root).encode())
        for i in range(len(files)):
            st = os.stat(files.path(i))
            h.update(bytes(files.files[i]) + b"\0" + f"{st.st_size},{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def default_workers(self) -> int:
        return default_workers()
