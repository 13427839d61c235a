"""What AMMKD feeds its models besides the images: the input size chosen from the data, and per step the prompts a
teacher encodes (at most one per image) and the caption each image is paired with."""

from __future__ import annotations

import torch

from kdmobile.data import CaptionData, ClassData, ImageFiles


def native_size(data: ClassData | CaptionData | ImageFiles) -> int:
    """The shorter side of the data's images (of the first photo for a folder)."""
    return int(min(data.native_size() if isinstance(data, ImageFiles) else data.images.shape[1:3]))


def auto_image_size(native: int) -> int:
    """The default input size from the data's `native_size`: 32 px for small images (digits, CIFAR), else the native
    size up to 96 px (photos: enough detail to learn from, still trainable on a CPU; deploy sizes take --image-size)."""
    return 32 if native <= 32 else min(native, 96)


def class_prompts(target: torch.Tensor, classes: list[str], template: str) -> tuple[list[str], torch.Tensor]:
    """The prompts a teacher step encodes and each image's index into them: every class while there are no more
    classes than images (the exact softmax over all classes), else each distinct class of the batch once, so a step
    never runs the text tower on more prompts than it has images (the batch's classes are the negatives, as in CLIP
    training)."""
    if len(classes) <= len(target):
        return [template.format(c) for c in classes], target
    present, index = torch.unique(target, return_inverse=True)
    return [template.format(classes[c]) for c in present.tolist()], index


def pick_caption(owner: torch.Tensor, image: int) -> int:
    """A random caption index belonging to `image` (torch RNG, so resume reproduces it)."""
    idx = torch.nonzero(owner == image).flatten()
    return int(idx[torch.randint(len(idx), (1,))])
