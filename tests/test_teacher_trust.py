"""Reliability-aware teacher weighting (CA-MKD confidence, reliable min-norm), CLIP-KD feature terms, and the
teacher health check, against known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdmobile.train.health import check_teachers, health_record
from kdmobile.train.losses import feature_distill, interactive_contrastive, kd_kl
from kdmobile.train.weighting import TeacherWeighting, confidence_weights, reliable_weights


def _teachers(batch: int = 64, classes: int = 10, seed: int = 0):
    """Labels, a perfect teacher's logits (confident and right) and a random teacher's logits."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (batch,), generator=g)
    perfect = F.one_hot(labels, classes).float() * 12.0
    random = torch.randn(batch, classes, generator=g) * 3.0
    return labels, perfect, random


def test_confidence_weights_known_answers():
    errors = torch.tensor([[0.0, 1.0, 3.0], [math.log(10), 1.0, 0.5]])
    w = confidence_weights(errors)
    assert torch.allclose(w.sum(0), torch.ones(3))
    # two teachers: w_1 = 1 - softmax_1 = sigmoid(e_2 - e_1)
    assert w[0, 0].item() == pytest.approx(1 / (1 + math.exp(-math.log(10))), abs=1e-6)
    assert torch.allclose(w[:, 1], torch.tensor([0.5, 0.5]))  # equal confidences -> equal weights
    assert w[1, 2] > w[0, 2]  # the teacher with the lower loss on a sample gets more of it
    three = confidence_weights(torch.full((3, 5), 0.7))
    assert torch.allclose(three, torch.full((3, 5), 1 / 3))


@pytest.mark.parametrize("mode", ["confidence", "reliable"])
def test_perfect_teacher_gets_the_weight_random_teacher_does_not(mode):
    labels, perfect, random = _teachers()
    student = torch.randn(64, 10, requires_grad=True)
    w = TeacherWeighting(mode, ["perfect", "random"])
    losses = {"perfect": kd_kl(student, perfect, 4.0, reduce=False), "random": kd_kl(student, random, 4.0, reduce=False)}
    errors = {"perfect": F.cross_entropy(perfect, labels, reduction="none"),
              "random": F.cross_entropy(random, labels, reduction="none")}
    total, weights = w.combine(losses, wrt=student, teacher_errors=errors)
    assert weights["perfect"] > 0.75 and weights["random"] < 0.25, weights
    assert weights["perfect"] + weights["random"] == pytest.approx(1.0, abs=1e-5)
    total.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("mode", ["confidence", "reliable"])
def test_equal_teachers_get_equal_weights(mode):
    labels, perfect, _ = _teachers()
    student = torch.randn(64, 10, requires_grad=True)
    w = TeacherWeighting(mode, ["a", "b"])
    same = kd_kl(student, perfect, 4.0, reduce=False)
    err = F.cross_entropy(perfect, labels, reduction="none")
    _, weights = w.combine({"a": same, "b": same}, wrt=student, teacher_errors={"a": err, "b": err})
    assert weights["a"] == pytest.approx(0.5, abs=1e-6) and weights["b"] == pytest.approx(0.5, abs=1e-6)


def test_reliable_ignores_gradient_norm_unlike_adaptive():
    """AE-KD favours the flatter (smaller-gradient) teacher; `reliable` does not when confidences are equal."""
    grads = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    w = reliable_weights(grads, torch.tensor([0.5, 0.5]))
    assert torch.allclose(w, torch.tensor([0.5, 0.5]), atol=1e-6)
    trusted = reliable_weights(grads, torch.tensor([0.9, 0.1]))
    assert trusted[0] == pytest.approx(0.9, abs=1e-5)


def test_reliability_modes_need_errors_and_active_restricts():
    student = torch.randn(8, 10, requires_grad=True)
    loss = kd_kl(student, torch.randn(8, 10), 2.0, reduce=False)
    with pytest.raises(ValueError, match="errors"):
        TeacherWeighting("confidence", ["a", "b"]).combine({"a": loss, "b": loss}, wrt=student)
    total, weights = TeacherWeighting("adaptive", ["a", "b"]).combine({"a": loss, "b": loss * 3}, wrt=student,
                                                                      active=["b"])
    assert weights == {"a": 0.0, "b": 1.0}
    assert total.item() == pytest.approx((loss * 3).mean().item(), rel=1e-6)


def test_feature_distill_shapes_values_and_gradients():
    proj = torch.randn(6, 32, requires_grad=True)
    teacher = torch.randn(6, 32, requires_grad=True)
    per = feature_distill(proj, teacher, reduce=False)
    assert per.shape == (6,) and (per >= 0).all() and (per <= 4 + 1e-5).all()
    assert feature_distill(teacher.detach(), teacher.detach() * 5).item() == pytest.approx(0.0, abs=1e-6)
    feature_distill(proj, teacher).backward()
    assert proj.grad is not None and proj.grad.abs().sum() > 0 and teacher.grad is None  # teacher side detached
    with pytest.raises(ValueError):
        feature_distill(torch.randn(6, 32), torch.randn(6, 16))


def test_interactive_contrastive_prefers_the_right_teacher_text():
    texts = F.normalize(torch.randn(10, 16), dim=-1)
    labels = torch.arange(10)
    right = interactive_contrastive(texts.clone(), texts, labels, 50.0)
    wrong = interactive_contrastive(texts.roll(1, 0), texts, labels, 50.0)
    assert right.item() < 0.1 < wrong.item()
    proj = torch.randn(10, 16, requires_grad=True)
    per = interactive_contrastive(proj, texts, labels, 10.0, reduce=False)
    assert per.shape == (10,)
    per.mean().backward()
    assert proj.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        interactive_contrastive(torch.randn(4, 16), torch.randn(10, 8), labels[:4], 10.0)


def test_health_check_flags_a_teacher_worse_than_the_student():
    checks = check_teachers({"good": 80.0, "weak": 46.0, "tie": 50.5}, 50.0, "top1", True, margin=0.1)
    verdict = {c.teacher: c.healthy for c in checks}
    assert verdict == {"good": True, "weak": False, "tie": False}  # errors 20, 54, 49.5 vs 0.9 x 50 = 45
    assert "WEAK" in checks[1].message() and "46" in checks[1].message()
    near_100 = check_teachers({"vit": 98.3, "rn": 95.0}, 96.65, "top1", True, margin=0.1)
    assert [c.healthy for c in near_100] == [True, False]  # half the student's errors is clearly better
    rec = health_record(checks, ["weak", "tie"])
    assert rec["weak"] == ["weak", "tie"] and rec["excluded_from_kd"] == ["weak", "tie"]
    errors = check_teachers({"t": 0.02, "u": 0.029}, 0.03, "mse", False, margin=0.1)
    assert [c.healthy for c in errors] == [True, False]  # errors: must be 10 % lower
