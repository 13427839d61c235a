"""Offline distillation: every training image's augmented views drawn once, with each teacher's embedding of them.

Teachers are frozen while a student distils, so their outputs on a fixed set of views can be computed once and reused
by every epoch, every weighting and every seed that distils from the same teachers (FKD: Shen & Xing, ECCV 2022).
Teacher and student still see the same view ("consistent teaching"), and the student a different one each epoch:
view (epoch + offset) mod V. A distillation epoch then costs about what training the student alone costs. The file
is safetensors (no pickle) keyed by a hash of the images, the augmentation, V, the seed and the teachers' weights;
a file made for other inputs is rebuilt, not used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kdmobile.errors import UserError
from kdmobile.fileio import atomic_path
from kdmobile.train.augment import AugmentLevel, build_augment

MAX_BYTES = 8 * 2**30  # views held in memory; beyond this a user lowers data.views (or the image size)
FORMAT = "kdmobile-views/1"


def cache_key(images: torch.Tensor, level: str, n_views: int, seed: int, teachers: Mapping[str, nn.Module]) -> str:
    """sha256 of everything the cached views and embeddings depend on."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, level, n_views, seed, list(images.shape), sorted(teachers)]).encode())
    h.update(images.contiguous().numpy().tobytes())
    for name in sorted(teachers):
        for k, v in teachers[name].state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ViewCache:
    """V augmented views of N images (uint8) and each teacher's (V, N, D) float16 image embeddings of them."""

    def __init__(self, views: torch.Tensor, embeddings: dict[str, torch.Tensor], key: str) -> None:
        self.views = views
        self.embeddings = embeddings
        self.key = key

    @property
    def n_views(self) -> int:
        """V: how many views each image has."""
        return int(self.views.shape[0])

    def teacher_embeddings(self, rows: torch.Tensor, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Float32 embeddings of the flat rows (view * N + image) for the named teachers, on `device`."""
        rows = rows.cpu()
        return {n: self.embeddings[n].flatten(0, 1)[rows].to(device).float() for n in names}

    def save(self, path: Path) -> None:
        """Atomically: an interrupted write leaves no file under `path`."""
        tensors = {"views": self.views.contiguous(), **{f"emb.{n}": e.contiguous() for n, e in self.embeddings.items()}}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "key": self.key})

    @classmethod
    def load(cls, path: Path, key: str) -> "ViewCache | None":
        """The cache at `path` if it was made for `key`; None when absent, unreadable or made for other inputs.
        A readable safetensors file that is not a view cache (someone's weights) is refused, never overwritten."""
        if path.suffix != ".safetensors" or path.is_dir():
            raise UserError(f"data.view_cache={path}: give a file path ending in .safetensors")
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001 - a truncated or foreign file is rebuilt, never trusted
            return None
        if meta.get("format") != FORMAT:
            raise UserError(f"data.view_cache={path}: not a kdmobile view cache (refusing to overwrite it)")
        if meta.get("key") != key:
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # noqa: BLE001
            return None
        emb = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("emb.")}
        return cls(tensors["views"], emb, key)


@torch.no_grad()
def build_views(images: torch.Tensor, level: AugmentLevel, n_views: int, seed: int,
                teachers: Mapping[str, nn.Module], prepare: Callable[[torch.Tensor], torch.Tensor],
                device: torch.device, batch_size: int = 256, progress: bool = True) -> ViewCache:
    """Draw V views of every image (seeded per view; the global torch RNG is left as it was) and embed them with
    every teacher; `prepare` turns a uint8 batch into the teachers' input (normalisation)."""
    n = int(images.shape[0])
    needed = n_views * images[0].numel() * n
    if needed > MAX_BYTES:
        raise UserError(f"data.views={n_views}: {needed / 2**30:.1f} GiB of views for {n} images at "
                        f"{images.shape[-1]} px (limit {MAX_BYTES / 2**30:.0f} GiB); lower data.views")
    transform = build_augment(level, int(images.shape[-1]))
    views = torch.empty((n_views, *images.shape), dtype=torch.uint8)
    with torch.random.fork_rng(devices=[]):
        for v in tqdm(range(n_views), desc="views", disable=not progress, leave=False):
            torch.manual_seed(seed * 100_003 + v)
            for i in range(n):
                views[v, i] = transform(images[i]) if transform is not None else images[i]
    embeddings: dict[str, torch.Tensor] = {}
    flat = views.flatten(0, 1)
    for name, teacher in teachers.items():
        teacher.eval()
        out = [teacher.encode_image(prepare(flat[s:s + batch_size].to(device))).float().cpu().half()
               for s in tqdm(range(0, len(flat), batch_size), desc=f"teacher {name} on views", disable=not progress,
                             leave=False)]
        embeddings[name] = torch.cat(out).view(n_views, n, -1)
    return ViewCache(views, embeddings, cache_key(images, level, n_views, seed, teachers))


class CachedViews(Dataset):
    """The training set as cached views: item i of epoch e is view (e + offset) mod V of image i, with its flat row
    into the cache so the step can look up the teachers' embeddings of exactly that view."""

    def __init__(self, cache: ViewCache, targets: torch.Tensor, offset: int = 0) -> None:
        self.cache = cache
        self.targets = targets
        self.offset = offset
        self.view = offset % cache.n_views

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop before each epoch's loader is built."""
        self.view = (epoch + self.offset) % self.cache.n_views

    def __len__(self) -> int:
        return int(self.cache.views.shape[1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cache.views[self.view, i], self.targets[i], torch.tensor(self.view * len(self) + i)


def load_or_build(path: Path, images: torch.Tensor, level: AugmentLevel, n_views: int, seed: int,
                  teachers: Mapping[str, nn.Module], prepare: Callable[[torch.Tensor], torch.Tensor],
                  device: torch.device, progress: bool = True) -> ViewCache:
    """The cache at `path` when it was made for exactly these inputs, else a new one, saved there."""
    key = cache_key(images, level, n_views, seed, teachers)
    cache = ViewCache.load(path, key)
    if cache is None:
        cache = build_views(images, level, n_views, seed, teachers, prepare, device, progress=progress)
        cache.save(path)
    return cache
