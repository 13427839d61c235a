"""Offline distillation: cached views are reproducible, their teacher embeddings are the teachers' own, a changed
input rebuilds the file, each epoch shows another view, and a run with cached views distils the same way."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdmobile.cli import main
from kdmobile.train.view_cache import CachedViews, ViewCache, build_views, load_or_build


class Tiny(nn.Module):
    """A stand-in teacher: a linear map of the flattened image, L2-normalised like a CLIP tower."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(3 * 16 * 16, 8)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.lin(x.flatten(1)), dim=-1)


def _images(n: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _prep(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255


def test_views_are_seeded_and_embeddings_match_the_teachers():
    images, teachers = _images(), {"a": Tiny(1), "b": Tiny(2)}
    state = torch.get_rng_state()
    c1 = build_views(images, "strong", 3, 7, teachers, _prep, torch.device("cpu"), progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    c2 = build_views(images, "strong", 3, 7, teachers, _prep, torch.device("cpu"), progress=False)
    assert torch.equal(c1.views, c2.views) and c1.key == c2.key
    assert not torch.equal(c1.views[0], c1.views[1])  # each view is a different draw
    assert not torch.equal(c1.views[0], images)  # and actually augmented
    with torch.no_grad():
        live = teachers["b"].encode_image(_prep(c1.views[2]))
    got = c1.teacher_embeddings(torch.arange(2 * 12, 3 * 12), ["b"], torch.device("cpu"))["b"]
    assert torch.allclose(got, live, atol=2e-3)  # float16 storage


def test_cache_file_is_reused_only_for_the_same_inputs(tmp_path):
    images, teachers = _images(), {"a": Tiny(1)}
    path = tmp_path / "views.safetensors"
    first = load_or_build(path, images, "crop", 2, 0, teachers, _prep, torch.device("cpu"), progress=False)
    assert ViewCache.load(path, first.key) is not None
    changed = {"a": Tiny(3)}  # other teacher weights: the file must not be used
    second = load_or_build(path, images, "crop", 2, 0, changed, _prep, torch.device("cpu"), progress=False)
    assert second.key != first.key and ViewCache.load(path, second.key) is not None
    assert ViewCache.load(path, first.key) is None
    path.write_bytes(b"not a safetensors file")
    assert ViewCache.load(path, second.key) is None  # corrupt: rebuilt, never trusted


def test_cache_path_that_is_not_a_view_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    from kdmobile.errors import UserError

    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    original = weights.read_bytes()
    for bad in (weights, tmp_path / "views.npz", tmp_path):
        with pytest.raises(UserError):
            load_or_build(bad, _images(), "crop", 1, 0, {"a": Tiny(1)}, _prep, torch.device("cpu"), progress=False)
    assert weights.read_bytes() == original and not (tmp_path / "views.npz").exists()


def test_each_epoch_shows_the_next_view():
    cache = build_views(_images(), "strong", 3, 0, {"a": Tiny(1)}, _prep, torch.device("cpu"), progress=False)
    data = CachedViews(cache, torch.arange(12), offset=1)
    seen = []
    for epoch in range(3):
        data.set_epoch(epoch)
        img, target, row = data[5]
        seen.append(int(row) // 12)
        assert torch.equal(img, cache.views[int(row) // 12, 5]) and int(target) == 5 and int(row) % 12 == 5
    assert seen == [1, 2, 0]


def test_run_with_cached_views_distils_and_shares_the_file(tiny_ammkd_args, tmp_path, capsys):
    shared = tmp_path / "views.safetensors"
    args = [*tiny_ammkd_args, "--set", "data.views=2", "--set", f"data.view_cache={shared}"]
    assert main([*args, "--name", "a"]) == 0
    assert shared.is_file()
    run = tmp_path / "runs" / "a"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    kd = [r for r in log if r.get("stage") == "student" and r.get("event") == "epoch"]
    assert kd and all(r["kl"] > 0 and abs(r["w_kd-vit-tiny"] + r["w_kd-rn-tiny"] - 1) < 1e-5 for r in kd)
    stamp = shared.stat().st_mtime_ns
    teachers = ",".join(str(run / "teachers" / f"{t}.safetensors") for t in ("kd-vit-tiny", "kd-rn-tiny"))
    assert main([*args, "--name", "b", "--teachers", teachers, "--teacher-epochs", "0"]) == 0
    assert shared.stat().st_mtime_ns == stamp  # same teachers, same data: the second run reused the file
