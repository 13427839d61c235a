"""The student zoo's pieces: reparameterisable backbones are fused before export with the same outputs, and the
Pareto front and default rule pick what they say."""

from __future__ import annotations

import torch

from kdmobile.models import create_model
from kdmobile.models.registry import fuse_for_inference

from kdmobile.student_choice import choose_student as choose_default
from kdmobile.student_choice import pareto


def test_mobileone_student_is_fused_with_the_same_outputs():
    torch.manual_seed(0)
    model = create_model("ammkd_student", backbone="mobileone_s0", embed_dim=16, teacher_dims=[8, 8], image_size=32)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial BatchNorm statistics, as after training
            model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    n_before = sum(p.numel() for p in model.parameters())
    fused = fuse_for_inference(model)
    with torch.no_grad():
        after = fused(x)
    assert sum(p.numel() for p in fused.parameters()) < 0.5 * n_before  # the parallel branches are gone
    assert torch.nn.functional.cosine_similarity(before, after).min() > 0.9999


def test_fusing_a_plain_backbone_changes_nothing():
    model = create_model("ammkd_student", backbone="mobilenetv3_small_050", embed_dim=16, teacher_dims=[8],
                         image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        assert torch.equal(fuse_for_inference(model)(x), before)


def test_pareto_front_and_default_rule():
    points = {"fast": (1.0, 50.0), "mid": (2.0, 60.0), "slow_bad": (3.0, 55.0), "slow_best": (5.0, 70.0)}
    assert pareto(points) == ["fast", "mid", "slow_best"]
    # the reference takes 250 ms: fast and mid are >= 100x faster; mid is the more accurate of them
    assert choose_default(points, 250.0)[0] == "mid"
    # a slower reference: nothing reaches 100x, so the fastest front model
    name, why = choose_default(points, 50.0)
    assert name == "fast" and "no Pareto model" in why
