"""AMMKD evaluation: one split (tensors in memory, or a file list streamed from disk), teacher and student metrics
on it, and the end-of-run table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from kdmobile.data import CaptionData, ClassData, ImageFiles
from kdmobile.data.transforms import CLIP_MEAN, CLIP_STD, resize_images
from kdmobile.evaluation import score_captions, score_classes
from kdmobile.models.clip_teacher import ClipTeacher
from kdmobile.table import format_table
from kdmobile.train.image_stream import ordered_batches
from kdmobile.train.loop import iterate_batches

HEALTH_METRIC = {"classes": "top1", "captions": "i2t_R@5"}


@dataclass
class Split:
    """One split: images (N,3,S,S) uint8 in memory, or `files` decoded on use; labels (class data) or caption
    ownership (captions)."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    captions: list[str]
    caption_owner: np.ndarray
    files: ImageFiles | None = None
    size: int = 0

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else int(len(self.images))

    def targets(self) -> torch.Tensor:
        """What a training dataset pairs with each image: its label, or its index (captions are picked per step)."""
        return self.labels if self.labels is not None else torch.arange(len(self))


def as_split(data: ClassData | CaptionData | ImageFiles, size: int) -> Split:
    """An in-memory split resized once to (N,3,S,S) uint8; a file list stays a file list."""
    if isinstance(data, ImageFiles) and data.captions is None:
        return Split(None, torch.from_numpy(data.labels.astype(np.int64)), [], np.zeros(0, np.int64), data, size)
    if isinstance(data, ImageFiles):
        caps, owner = _flat_captions(data.captions or [])
        return Split(None, None, caps, owner, data, size)
    images = torch.from_numpy(resize_images(data.images, size)).permute(0, 3, 1, 2).contiguous()
    if isinstance(data, ClassData):
        return Split(images, torch.from_numpy(data.labels.astype(np.int64)), [], np.zeros(0, np.int64), size=size)
    caps, owner = _flat_captions(data.captions)
    return Split(images, None, caps, owner, size=size)


def _flat_captions(captions: list[list[str]]) -> tuple[list[str], np.ndarray]:
    """Every caption in one list, and the index of the image each belongs to."""
    caps = [c for cs in captions for c in cs]
    owner = np.concatenate([np.full(len(cs), i) for i, cs in enumerate(captions)]).astype(np.int64)
    return caps, owner


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,H,W) -> CLIP-normalised float (what teachers and student are fed), on x's device."""
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


@torch.no_grad()
def embed(encode: Callable[[torch.Tensor], torch.Tensor], split: Split, device: torch.device,
          batch: int = 256) -> torch.Tensor:
    """Image embeddings of a whole split, in batches (a file split decoded by DataLoader workers)."""
    if split.files is not None:
        out = [encode(normalise(x.to(device))).float() for x, _ in ordered_batches(split.files, split.size, batch)]
    else:
        out = [encode(normalise(split.images[s].to(device))).float() for s in iterate_batches(len(split), batch)]
    return torch.cat(out)


@torch.no_grad()
def eval_teacher(teacher: ClipTeacher, split: Split, classes: Sequence[str], templates: Sequence[str]) -> dict:
    """A teacher's top-1/top-5 with its own class vectors, or its retrieval recall on the split's captions."""
    device = next(teacher.parameters()).device
    img = embed(teacher.encode_image, split, device).cpu().numpy()
    if split.labels is not None:
        return score_classes(img, teacher.class_vectors(classes, templates).cpu().numpy(), split.labels.numpy())
    return score_captions(img, teacher.encode_texts(split.captions).cpu().numpy(), split.caption_owner)


@torch.no_grad()
def eval_student(student: nn.Module, vectors: Sequence[torch.Tensor], split: Split) -> dict:
    """The student on a split: `vectors` are each teacher's class vectors (or this split's caption vectors)."""
    device = next(student.parameters()).device
    fused = student.fuse_text([v.to(device) for v in vectors]).cpu().numpy()
    img = embed(student, split, device).cpu().numpy()
    if split.labels is not None:
        return score_classes(img, fused, split.labels.numpy())
    return score_captions(img, fused, split.caption_owner)


def metrics_table(metrics: dict[str, Any]) -> str:
    """The table `kdmobile train ammkd` prints: accuracy (or recall), parameters, FLOPs per model."""
    keys = ["top1", "top5"] if metrics["task"] == "classes" else ["i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"]
    weak = set(metrics.get("teacher_health", {}).get("weak", []))
    rows = [[name + (" (WEAK)" if name.split(":", 1)[-1] in weak and m["role"] == "teacher" else ""),
             *(m.get(k) for k in keys), m["params"], m["image_params"], m["flops"] / 1e6]
            for name, m in metrics["models"].items()]
    return format_table(["model", *keys, "params", "image params", "MFLOPs/img"], rows)
