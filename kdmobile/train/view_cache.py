"""Offline distillation that scales: per training image and view, the seed that regenerates the augmented view and
each teacher's float16 embedding of it, in shards of 10,000 images; never the images themselves.

Teachers are frozen while a student distils, so their outputs on a fixed set of views can be computed once and reused
by every epoch, weighting and seed that distils from the same teachers (FKD, Shen & Xing 2022; MobileCLIP's dataset
reinforcement stores augmentation parameters and teacher embeddings the same way). The student's loader regenerates
view (epoch + offset) mod V of image i from its seed, bit for bit, so teacher and student see the same view. Size on
disk: N x V x (sum of teacher dims x 2 + 8) bytes (100k images x 10 views x 2 teachers of 512: 2.1 GB).

The cache is a directory: `cache.json` (the key: a hash of the data, augmentation, V, seed and teachers' weights) and
`shard_NNNNN.safetensors` files, each written atomically, so a killed build resumes at the first missing shard; under
torchrun each rank builds the shards k with k mod world == rank. Views are drawn in DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kdmobile.errors import ToolError, UserError
from kdmobile.fileio import atomic_path
from kdmobile.train import distributed as dist

FORMAT = "kdmobile-views/2"
SHARD_IMAGES = 10_000
MAX_VIEWS = 1000
MANIFEST = "cache.json"
_SEED_BYTES = 8


class ViewSource(Protocol):
    """Regenerates training view `seed` of image i as a uint8 (3,S,S) tensor; identifies its data for the key."""

    def __len__(self) -> int: ...
    def view(self, i: int, seed: int) -> torch.Tensor: ...
    def fingerprint(self) -> str: ...
    def default_workers(self) -> int: ...


def seeded(seed: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`make()` with torch's (CPU) and Python's RNGs seeded by `seed` (timm draws crops from `random`, torchvision
    from torch); the caller's RNG streams are left as they were. The default generator is seeded directly:
    `torch.manual_seed` and `fork_rng` cost ~150 us per call here, as much as augmenting a 32 px image."""
    gen = torch.default_generator
    torch_state, py_state = gen.get_state(), random.getstate()
    gen.manual_seed(seed)
    random.seed(seed)
    try:
        return make()
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)


def view_seeds(start: int, stop: int, n_views: int, base: int) -> np.ndarray:
    """(stop-start, V) int64 seeds of images [start, stop): distinct per (image, view), fixed by `base`."""
    i = np.arange(start, stop, dtype=np.int64)[:, None]
    return (np.int64(base) << np.int64(40)) + i * n_views + np.arange(n_views, dtype=np.int64)[None, :]


def estimate_bytes(n: int, n_views: int, dims: Mapping[str, int], shard_images: int = SHARD_IMAGES) -> int:
    """Bytes on disk of a cache: seeds and float16 embeddings, plus a header per shard."""
    shards = -(-n // shard_images)
    return n * n_views * (_SEED_BYTES + 2 * sum(dims.values())) + shards * 512


def cache_key(source: ViewSource, level: str, n_views: int, seed: int, teachers: Mapping[str, nn.Module]) -> str:
    """sha256 of everything the views and embeddings depend on."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, level, n_views, seed, len(source), source.fingerprint(), sorted(teachers)]).encode())
    for name in sorted(teachers):
        for k, v in teachers[name].state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Rows(Dataset):
    """Every (image, view) of one shard, regenerated from its seed (in DataLoader workers)."""

    def __init__(self, source: ViewSource, start: int, seeds: np.ndarray) -> None:
        self.source, self.start, self.seeds = source, start, seeds

    def __len__(self) -> int:
        return int(self.seeds.size)

    def __getitem__(self, j: int) -> torch.Tensor:
        i, v = divmod(j, self.seeds.shape[1])
        return self.source.view(self.start + i, int(self.seeds[i, v]))


class SeedCache:
    """A built cache: `lookup(i, v)` -> (seed, {teacher: float16 (D,)}), shards opened lazily in each process."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.n, self.n_views, self.shard_images = int(meta["n"]), int(meta["views"]), int(meta["shard_images"])
        self.names: list[str] = list(meta["dims"])
        self._open: dict[int, Any] = {}

    def shard_path(self, k: int) -> Path:
        return self.path / f"shard_{k:05d}.safetensors"

    def _shard(self, k: int) -> Any:
        if k not in self._open:
            from safetensors import safe_open

            self._open[k] = safe_open(str(self.shard_path(k)), framework="pt", device="cpu")
        return self._open[k]

    def lookup(self, i: int, v: int) -> tuple[int, dict[str, torch.Tensor]]:
        """The seed of view v of image i and every teacher's embedding of that view."""
        k, j = divmod(i, self.shard_images)
        f = self._shard(k)
        seed = int(f.get_slice("seeds")[j:j + 1, v:v + 1].reshape(-1)[0])
        return seed, {n: f.get_slice(f"emb.{n}")[j:j + 1, v:v + 1].reshape(-1) for n in self.names}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": {}}


def check_cache_dir(path: Path) -> dict[str, Any] | None:
    """The manifest of an existing cache directory, None for a new or empty one; refuses anything else (a file, a
    directory of someone's files) in one line. Runs check it before training, so a bad path fails at once."""
    if path.is_file() or path.suffix == ".safetensors":
        raise UserError(f"data.view_cache={path}: give a directory (the cache is a folder of shards)")
    if not path.is_dir() or not any(path.iterdir()):
        return None
    manifest = path / MANIFEST
    try:
        meta = json.loads(manifest.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError
    except (OSError, ValueError):
        raise UserError(f"data.view_cache={path}: a directory that is not a kdmobile view cache "
                        "(refusing to write into it)") from None
    return meta


def _shard_ok(path: Path, key: str, start: int, stop: int) -> bool:
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            m = f.metadata() or {}
        return m.get("key") == key and m.get("start") == str(start) and m.get("stop") == str(stop)
    except Exception:  # noqa: BLE001 - truncated or foreign: rebuilt
        return False


@torch.no_grad()
def _build_shard(out: Path, source: ViewSource, start: int, stop: int, meta: dict[str, Any],
                 teachers: Mapping[str, nn.Module], prepare: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, workers: int, batch_size: int, progress: bool) -> None:
    from safetensors.torch import save_file

    V = int(meta["views"])
    seeds = view_seeds(start, stop, V, int(meta["seed"]))
    loader = DataLoader(_Rows(source, start, seeds), batch_size=batch_size, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))  # its base seed must not consume the caller's RNG
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in teachers}
    for x in tqdm(loader, desc=f"teacher views {start:,}-{stop:,}", disable=not progress, leave=False):
        x = prepare(x.to(device))
        for name, teacher in teachers.items():
            parts[name].append(teacher.encode_image(x).float().cpu().half())
    tensors = {"seeds": torch.from_numpy(seeds)}
    tensors.update({f"emb.{n}": torch.cat(p).view(stop - start, V, -1).contiguous() for n, p in parts.items()})
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "key": meta["key"], "start": str(start),
                                               "stop": str(stop)})


def load_or_build(path: Path, source: ViewSource, level: str, n_views: int, seed: int,
                  teachers: Mapping[str, nn.Module], dims: Mapping[str, int],
                  prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device, workers: int | None = None,
                  progress: bool = True, shard_images: int = SHARD_IMAGES, batch_size: int = 256) -> SeedCache:
    """The cache at `path` for exactly these inputs: complete shards are kept, missing ones built (this rank's share);
    a cache made for other inputs is replaced."""
    if not 1 <= n_views <= MAX_VIEWS:
        raise UserError(f"data.views={n_views}: must be between 1 and {MAX_VIEWS}")
    path = Path(path).expanduser()
    n = len(source)
    key = cache_key(source, level, n_views, seed, teachers)
    meta = {"format": FORMAT, "key": key, "n": n, "views": n_views, "seed": seed, "shard_images": shard_images,
            "dims": dict(dims)}
    if dist.is_main():  # only rank 0 looks at and writes the directory: another rank could see it half-made
        old = check_cache_dir(path)
        if old is not None and old != meta:  # other inputs: its shards are stale
            for f in path.glob("shard_*.safetensors"):
                f.unlink()
        path.mkdir(parents=True, exist_ok=True)
        need = estimate_bytes(n, n_views, dims, shard_images)
        free = shutil.disk_usage(path).free
        if old != meta and need > free:
            raise ToolError(f"data.view_cache={path}: the cache needs about {need / 2**30:.1f} GiB, "
                            f"{free / 2**30:.1f} GiB free")
        with atomic_path(path / MANIFEST) as tmp:
            tmp.write_text(json.dumps(meta))
    dist.barrier()
    cache = SeedCache(path, meta)
    mine = [k for k in range(-(-n // shard_images)) if k % dist.world_size() == dist.rank()]
    todo = [k for k in mine if not _shard_ok(cache.shard_path(k), key, k * shard_images,
                                             min(n, (k + 1) * shard_images))]
    workers = source.default_workers() if workers is None else workers
    for t in teachers.values():
        t.eval()
    for k in tqdm(todo, desc="view cache shards", disable=not progress or len(todo) < 2, leave=False):
        start, stop = k * shard_images, min(n, (k + 1) * shard_images)
        _build_shard(cache.shard_path(k), source, start, stop, meta, teachers, prepare, device, workers, batch_size,
                     progress)
    dist.barrier()
    return cache


class CachedViews(Dataset):
    """The training set for distillation: item i of epoch e is view (e + offset) mod V of image i, regenerated from its
    seed, with the cached embeddings of every teacher for exactly that view."""

    def __init__(self, cache: SeedCache, source: ViewSource, targets: torch.Tensor, offset: int = 0) -> None:
        self.cache, self.source, self.targets, self.offset = cache, source, targets, offset
        self.view = offset % cache.n_views

    def default_workers(self) -> int:
        """As many workers as regenerating this source's views asks for (photos: per core; in-memory: none)."""
        return self.source.default_workers()

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop before each epoch's loader is built."""
        self.view = (epoch + self.offset) % self.cache.n_views

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        seed, emb = self.cache.lookup(int(i), self.view)
        return self.source.view(int(i), seed), self.targets[i], emb


class TensorViews:
    """Views of in-memory (N,3,S,S) uint8 images with the torchvision augmentation of `level`."""

    def __init__(self, images: torch.Tensor, level: str) -> None:
        from kdmobile.train.augment import build_augment

        self.images = images
        self.transform = build_augment(level, int(images.shape[-1]))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def view(self, i: int, seed: int) -> torch.Tensor:
        img = self.images[i]
        return img.clone() if self.transform is None else seeded(seed, lambda: self.transform(img))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.images.contiguous().numpy().tobytes()).hexdigest()

    def default_workers(self) -> int:
        return 0
