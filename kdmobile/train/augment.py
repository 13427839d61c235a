"""Per-sample training augmentation on uint8 image tensors (torchvision v2), shared by teachers and student.

Teachers trained from scratch on a few thousand small images need strong augmentation; distillation works best
when teacher and student see the same augmented view ("consistent teaching", Beyer et al. 2022), so the view is
made once in the dataset and both models get it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

AugmentLevel = Literal["none", "crop", "crop-flip", "affine", "strong"]
LEVELS: tuple[str, ...] = ("none", "crop", "crop-flip", "affine", "strong")


def resolve_augment(level: str, flip_invariant: bool, teacher: bool = False) -> AugmentLevel:
    """`auto` -> `strong` for natural images; for data a flip changes the meaning of (digits, text) `crop` for
    students and `affine` for teachers' pre-training (no flips either way)."""
    if level == "auto":
        return "strong" if flip_invariant else ("affine" if teacher else "crop")
    if level not in LEVELS:
        raise ValueError(f"augment must be auto or one of {LEVELS}, got {level!r}")
    return level  # type: ignore[return-value]


def build_augment(level: AugmentLevel, size: int) -> v2.Transform | None:
    """The torchvision pipeline of one level for (3, size, size) uint8 tensors; None for `none`."""
    if level == "none":
        return None
    pad = max(1, size // 16)  # 2 px at 32 px; 4 px cost the digits student 2.4 points (94.3 vs 96.7, 2 seeds)
    if level == "crop":
        return v2.RandomCrop(size, padding=pad, padding_mode="reflect")
    if level == "affine":  # small rotations, shifts, scalings and shears: the classic digits recipe, no flips
        return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5)
    if level == "crop-flip":
        return v2.Compose([v2.RandomCrop(size, padding=pad, padding_mode="reflect"), v2.RandomHorizontalFlip()])
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.TrivialAugmentWide(),
    ])


class AugmentedImages(Dataset):
    """(N,3,H,W) uint8 images + targets; each item is a freshly augmented view (torch RNG, so resume replays it)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, level: AugmentLevel) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected (N,3,H,W) uint8 images, got {tuple(images.shape)} {images.dtype}")
        self.images = images
        self.targets = targets
        self.transform = build_augment(level, int(images.shape[-1]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        return (self.transform(img) if self.transform is not None else img), self.targets[i]
