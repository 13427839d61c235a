"""Image preprocessing shared by training, export and verification: resize once, normalise like CLIP."""

from __future__ import annotations

import numpy as np
from PIL import Image

# OpenAI CLIP's statistics: teachers and student see the same normalised input; bundles record these.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N,H,W,3) uint8 -> (N,size,size,3) uint8 with Pillow bilinear (what the runtime does on the phone side)."""
    if images.shape[1] == size and images.shape[2] == size:
        return np.ascontiguousarray(images)
    from kdmobile.untrusted import check_array_bytes

    check_array_bytes(f"{len(images)} images at {size}x{size}", len(images) * size * size * 3, "allocating")
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return out


def normalise(images: np.ndarray, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> np.ndarray:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32, scaled to [0,1] then standardised per channel."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
