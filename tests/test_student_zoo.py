"""The student zoo's pieces: reparameterisable backbones are fused before export with the same outputs, and the
Pareto front and default rule pick what they say."""

from __future__ import annotations

import torch

from kdmobile.models import create_model
from kdmobile.models.registry import fuse_for_inference

from kdmobile.student_choice import ZooPoint, choose_default, pareto


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
    zoo = {"fast": ZooPoint(50.0, 1.5, 1.0), "mid": ZooPoint(60.0, 3.0, 2.0), "slow_bad": ZooPoint(55.0, 3.0, None),
           "slow_best": ZooPoint(70.0, 5.0, 6.0)}
    # reference 250 ms: fast (250x, 1.5x own fp32) and mid (125x, 1.5x) meet the rule; mid is the more accurate
    name, why, failed = choose_default(zoo, 250.0, keep="old")
    assert name == "mid" and failed["fast"] == [] and "most accurate Pareto model" in why
    assert any("own fp32" in w for w in failed["slow_best"])  # int8 slower than its fp32 (and 42x)
    # a faster reference: nobody reaches 120x, the old default stays and each front model says what it missed
    name, why, failed = choose_default(zoo, 100.0, keep="old")
    assert name == "old" and "stays the default" in why and set(failed) == {"fast", "mid", "slow_best"}
    assert all(any("the reference" in w for w in failed[b]) for b in failed)
    # accuracy is a condition too
    name, _, failed = choose_default(zoo, 250.0, keep="old", rule=(120.0, 1.3, 65.0))
    assert name == "old" and failed["mid"] == ["top-1 60.00 < 65.00"]
