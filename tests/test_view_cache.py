"""Offline distillation through the sharded seed cache: a view regenerated from its seed is bit-identical, the
embeddings are the teachers' own, shards do not change the result, a killed build resumes to the same bytes, the size
stays N x V x (2 D + 8), inputs that changed rebuild it, and runs distil from it (in memory and from a photo folder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdmobile.cli import main
from kdmobile.errors import UserError
from kdmobile.train.view_cache import CachedViews, SeedCache, TensorViews, estimate_bytes, load_or_build

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """A stand-in teacher: a linear map of the flattened image, L2-normalised like a CLIP tower."""

    def __init__(self, seed: int, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(3 * 16 * 16, dim)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.lin(x.flatten(1)), dim=-1)


def _images(n: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _prep(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255


def _build(path: Path, teachers: dict[str, nn.Module], views: int = 3, shard: int = 10_000,
           level: str = "strong", n: int = 12) -> SeedCache:
    dims = {k: t.lin.out_features for k, t in teachers.items()}
    return load_or_build(path, TensorViews(_images(n), level), level, views, 7, teachers, dims, _prep, CPU,
                         progress=False, shard_images=shard, batch_size=5)


def _tensors(cache: SeedCache) -> dict[str, np.ndarray]:
    """Every shard's tensors concatenated along the image axis."""
    from safetensors.numpy import load_file

    shards = [load_file(str(p)) for p in sorted(cache.path.glob("shard_*.safetensors"))]
    return {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}


def test_view_from_its_seed_is_bit_identical_and_embedded_by_the_teacher(tmp_path: Path) -> None:
    teachers = {"a": Tiny(1), "b": Tiny(2)}
    state = torch.get_rng_state()
    cache = _build(tmp_path / "c", teachers)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    source = TensorViews(_images(), "strong")
    seed, emb = cache.lookup(5, 2)
    first, again = source.view(5, seed), source.view(5, seed)
    assert torch.equal(first, again) and not torch.equal(first, _images()[5])  # reproducible, and augmented
    other_seed, _ = cache.lookup(5, 1)
    assert other_seed != seed and not torch.equal(source.view(5, other_seed), first)  # each view a different draw
    with torch.no_grad():
        live = teachers["b"].encode_image(_prep(first[None]))[0]
    assert emb["b"].dtype == torch.float16 and torch.allclose(emb["b"].float(), live, atol=2e-3)


def test_two_shards_equal_one_shard(tmp_path: Path) -> None:
    teachers = {"a": Tiny(1)}
    one, two = _tensors(_build(tmp_path / "one", teachers)), _tensors(_build(tmp_path / "two", teachers, shard=6))
    assert len(list((tmp_path / "two").glob("shard_*"))) == 2
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)


def test_size_on_disk_is_seeds_plus_float16_embeddings(tmp_path: Path) -> None:
    cache = _build(tmp_path / "c", {"a": Tiny(1, 512), "b": Tiny(2, 512)}, views=10, shard=6)
    on_disk = sum(p.stat().st_size for p in cache.path.glob("shard_*.safetensors"))
    estimate = estimate_bytes(12, 10, {"a": 512, "b": 512}, 6)
    assert abs(on_disk - estimate) <= 0.02 * estimate
    assert estimate_bytes(100_000, 10, {"a": 512, "b": 512}) <= 4.2e9  # 100k photos x 10 views x 2 teachers


def test_cache_is_reused_only_for_the_same_inputs(tmp_path: Path) -> None:
    path = tmp_path / "c"
    first = _build(path, {"a": Tiny(1)})
    shard = path / "shard_00000.safetensors"
    stamp = shard.stat().st_mtime_ns
    assert _build(path, {"a": Tiny(1)}).meta["key"] == first.meta["key"] and shard.stat().st_mtime_ns == stamp
    second = _build(path, {"a": Tiny(3)})  # other teacher weights: rebuilt
    assert second.meta["key"] != first.meta["key"] and shard.stat().st_mtime_ns != stamp
    shard.write_bytes(b"truncated")  # corrupt: rebuilt, never trusted
    _build(path, {"a": Tiny(3)})
    assert _tensors(second)["seeds"].shape == (12, 3)


def test_cache_path_that_is_not_a_cache_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for bad in (weights, tmp_path / "views.safetensors", tmp_path / "mine"):
        with pytest.raises(UserError):
            _build(bad, {"a": Tiny(1)})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and sorted(os.listdir(tmp_path / "mine")) == [
        "notes.txt"]
    with pytest.raises(UserError, match="data.views"):
        _build(tmp_path / "ok", {"a": Tiny(1)}, views=0)


def test_each_epoch_shows_the_next_view(tmp_path: Path) -> None:
    cache = _build(tmp_path / "c", {"a": Tiny(1)})
    source = TensorViews(_images(), "strong")
    data = CachedViews(cache, source, torch.arange(12), offset=1)
    seen = []
    for epoch in range(3):
        data.set_epoch(epoch)
        img, target, emb = data[5]
        v = data.view
        seed, cached = cache.lookup(5, v)
        seen.append(v)
        assert torch.equal(img, source.view(5, seed)) and int(target) == 5 and torch.equal(emb["a"], cached["a"])
    assert seen == [1, 2, 0]


_KILLABLE = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_view_cache import Tiny, TensorViews, _images, _prep
from kdmobile.train import view_cache as vc
real = vc._build_shard
def slow(*a, **k):
    real(*a, **k)
    print("shard", flush=True)
    time.sleep(float({pause!r}))
vc._build_shard = slow
vc.load_or_build({path!r}, TensorViews(_images(), "strong"), "strong", 3, 7, {{"a": Tiny(1)}}, {{"a": 8}}, _prep,
                 torch.device("cpu"), progress=False, shard_images=4, batch_size=5)
"""


def test_kill_9_during_the_build_resumes_to_the_same_shards(tmp_path: Path) -> None:
    tests = str(Path(__file__).parent)
    path = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE.format(tests=tests, pause=30, path=path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "shard"  # one shard written, the build is mid-way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(Path(path).glob("shard_*.safetensors"))) == 1
    subprocess.run([sys.executable, "-c", _KILLABLE.format(tests=tests, pause=0, path=path)], check=True,
                   capture_output=True)
    whole = _build(tmp_path / "whole", {"a": Tiny(1)}, shard=4)
    resumed = SeedCache(Path(path), json.loads((Path(path) / "cache.json").read_text()))
    a, b = _tensors(resumed), _tensors(whole)
    assert len(list(Path(path).glob("shard_*.safetensors"))) == 3 and all(np.array_equal(a[k], b[k]) for k in a)
    assert not [p for p in Path(path).iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_run_with_cached_views_distils_and_shares_the_cache(tiny_ammkd_args, tmp_path: Path) -> None:
    shared = tmp_path / "views"
    args = [*tiny_ammkd_args, "--set", "data.views=2", "--set", f"data.view_cache={shared}"]
    assert main([*args, "--name", "a"]) == 0
    assert (shared / "cache.json").is_file() and (shared / "shard_00000.safetensors").is_file()
    run = tmp_path / "runs" / "a"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    kd = [r for r in log if r.get("stage") == "student" and r.get("event") == "epoch"]
    assert kd and all(r["kl"] > 0 and abs(r["w_kd-vit-tiny"] + r["w_kd-rn-tiny"] - 1) < 1e-5 for r in kd)
    stamp = (shared / "shard_00000.safetensors").stat().st_mtime_ns
    teachers = ",".join(str(run / "teachers" / f"{t}.safetensors") for t in ("kd-vit-tiny", "kd-rn-tiny"))
    assert main([*args, "--name", "b", "--teachers", teachers, "--teacher-epochs", "0"]) == 0
    assert (shared / "shard_00000.safetensors").stat().st_mtime_ns == stamp  # same inputs: reused


def test_photo_folder_distils_from_the_cache(tmp_path: Path) -> None:
    from tests.test_image_folders import _folder

    root = _folder(tmp_path / "photos", {"train": 6, "val": 2})
    code = main(["train", "ammkd", "--data", f"imagefolder:{root}", "--out", str(tmp_path / "runs"), "--name", "p",
                 "--no-progress", "--image-size", "16", "--workers", "1", "--teachers", "kd-vit-tiny,kd-rn-tiny",
                 "--set", "teacher_train.epochs=1", "--epochs", "1", "--set", "data.views=2",
                 "--set", "health.drop_weak=false"])
    assert code == 0
    cache = tmp_path / "runs" / "p" / "views"
    meta = json.loads((cache / "cache.json").read_text())
    train = json.loads((tmp_path / "runs" / "p" / "metrics.json").read_text())["split_sizes"]["train"]
    assert meta["n"] == train == 15 and meta["views"] == 2  # 18 train/ photos less the validation draw
