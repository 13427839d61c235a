"""Tests for AE-KD min-norm multi-teacher weighting and TeacherWeighting modes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdmobile.errors import KDError
from kdmobile.train.weighting import (
    TeacherWeighting,
    adaptive_combine,
    min_norm_weights,
    min_norm_weights_2,
    parse_weighting,
    project_capped_simplex,
    tolerance_upper,
)


def _norm_sq(alpha: torch.Tensor, grads: torch.Tensor) -> float:
    """||sum_m alpha_m g_m||^2 in float64."""
    return float((alpha.double() @ grads.double()).square().sum())


@pytest.mark.parametrize("m", [2, 3])
def test_identical_gradients_give_exactly_uniform_weights(m: int) -> None:
    g = torch.randn(1, 37, generator=torch.Generator().manual_seed(m)).repeat(m, 1)
    for upper in (1.0, 0.8, 1.0 / m):
        alpha = min_norm_weights(g, upper=upper)
        assert alpha.dtype == torch.float32 and alpha.device.type == "cpu"
        assert torch.equal(alpha, torch.full((m,), 1.0 / m))


def test_all_zero_gradients_give_uniform() -> None:
    assert torch.equal(min_norm_weights(torch.zeros(3, 5)), torch.full((3,), 1.0 / 3))


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (1.0, 3.0), (2.5, 0.5)])
def test_orthogonal_gradients_analytic_min_norm(a: float, b: float) -> None:
    grads = torch.tensor([[a, 0.0, 0.0], [0.0, b, 0.0]])
    alpha = min_norm_weights(grads, upper=1.0)
    expected = b * b / (a * a + b * b)
    assert alpha[0].item() == pytest.approx(expected, abs=1e-6)
    assert alpha.sum().item() == pytest.approx(1.0, abs=1e-6)
    combined = math.sqrt(_norm_sq(alpha, grads))
    assert combined == pytest.approx(a * b / math.sqrt(a * a + b * b), rel=1e-5)


def test_two_general_gradients_match_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        grads = torch.randn(2, 11, generator=gen) * torch.rand(2, 1, generator=gen) * 3
        grads[1] += 0.7 * grads[0]  # correlated, non-orthogonal
        for upper in (1.0, 0.8, 0.6):
            got = min_norm_weights(grads, upper=upper)
            ref = min_norm_weights_2(grads, upper=upper)
            g1, g2 = grads.double()
            raw = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
            assert ref[0].item() == pytest.approx(min(upper, max(1 - upper, raw)), abs=1e-6)
            assert torch.allclose(got, ref, atol=1e-6), (trial, upper, got, ref)


def test_closed_form_bound_active_when_one_gradient_dominates() -> None:
    # g1 = (1, 0), g2 = (2, 0): unconstrained optimum is a1 = 2 > 1, clipped to u.
    grads = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert torch.allclose(min_norm_weights(grads, 1.0), torch.tensor([1.0, 0.0]), atol=1e-7)
    assert torch.allclose(min_norm_weights(grads, 0.7), torch.tensor([0.7, 0.3]), atol=1e-7)


def _grid_search(grads: torch.Tensor, upper: float, n: int = 400) -> tuple[float, torch.Tensor]:
    """Brute-force min of ||a @ grads||^2 over a grid of the capped 3-simplex."""
    best = (math.inf, torch.zeros(3))
    g = grads.double()
    gram = g @ g.T
    for i, j in itertools.product(range(n + 1), repeat=2):
        a1, a2 = i / n, j / n
        a3 = 1.0 - a1 - a2
        if a3 < -1e-12 or max(a1, a2, a3) > upper + 1e-12:
            continue
        a = torch.tensor([a1, a2, max(a3, 0.0)], dtype=torch.float64)
        val = float(a @ gram @ a)
        if val < best[0]:
            best = (val, a)
    return best


@pytest.mark.parametrize("seed,upper", [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.6)])
def test_three_teachers_against_grid_search(seed: int, upper: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(3, 4, generator=gen)
    grads[0] *= 4.0  # make the norms differ so the bound can bite
    alpha = min_norm_weights(grads, upper=upper)
    assert alpha.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (alpha >= -1e-7).all() and (alpha <= upper + 1e-6).all()
    best_val, best_a = _grid_search(grads, upper)
    val = _norm_sq(alpha, grads)
    assert val <= best_val + 1e-9
    assert val == pytest.approx(best_val, rel=1e-3, abs=1e-4)
    assert torch.allclose(alpha.double(), best_a, atol=5e-3)


def test_tolerance_bound_clips_small_norm_teacher() -> None:
    u = tolerance_upper(0.6, 2)
    assert u == pytest.approx(1.0 / 1.2)
    grads = torch.tensor([[1.0, 0.0], [0.0, 10.0]])  # unconstrained optimum a1 = 100/101 > u
    alpha = min_norm_weights(grads, upper=u)
    assert alpha[0].item() == pytest.approx(0.833333, abs=1e-5)
    assert alpha.sum().item() == pytest.approx(1.0, abs=1e-7)
    unbounded = min_norm_weights(grads, upper=1.0)
    assert unbounded[0].item() == pytest.approx(100.0 / 101.0, abs=1e-6)


def test_tolerance_upper_endpoints() -> None:
    assert tolerance_upper(1.0, 3) == pytest.approx(1.0 / 3)  # C = 1: equal weights forced
    assert tolerance_upper(1.0 / 3, 3) == 1.0  # C = 1/M: no cap
    assert tolerance_upper(0.1, 3) == 1.0  # clipped into [1/M, 1]
    grads = torch.tensor([[1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 9.0]])
    assert torch.allclose(min_norm_weights(grads, tolerance_upper(1.0, 3)), torch.full((3,), 1 / 3))


def test_weights_always_sum_to_one_and_respect_bounds() -> None:
    gen = torch.Generator().manual_seed(7)
    for m in (2, 3, 5):
        for _ in range(10):
            grads = torch.randn(m, 6, generator=gen) * torch.rand(m, 1, generator=gen).mul(10)
            for tol in (1.0, 0.8, 0.6, 1.0 / m):
                u = tolerance_upper(tol, m)
                alpha = min_norm_weights(grads, upper=u)
                assert alpha.sum().item() == pytest.approx(1.0, abs=1e-6)
                assert (alpha >= 0).all() and (alpha <= u + 1e-6).all()


def test_projection_onto_capped_simplex() -> None:
    p = project_capped_simplex(torch.tensor([0.2, 0.3, 0.5]), 1.0)
    assert torch.allclose(p, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), atol=1e-12)
    p = project_capped_simplex(torch.tensor([5.0, 0.0, 0.0]), 0.6)
    assert torch.allclose(p, torch.tensor([0.6, 0.2, 0.2], dtype=torch.float64), atol=1e-12)
    p = project_capped_simplex(torch.tensor([1.0, 1.0, -3.0]), 1.0)
    assert torch.allclose(p, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64), atol=1e-12)


# --- TeacherWeighting -------------------------------------------------------------------

def _tiny_graph() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Student logits z and three per-teacher losses that disagree."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 5, generator=gen, requires_grad=True)
    targets = {n: torch.randn(4, 5, generator=gen) * s for n, s in (("a", 1.0), ("b", 3.0), ("c", 0.5))}
    losses = {n: ((z - t) ** 2).mean() + 0.1 * (z**3).mean() for n, t in targets.items()}
    return z, losses


def test_mode_equal_and_single_and_none() -> None:
    z, losses = _tiny_graph()
    names = ["a", "b", "c"]
    loss, w = TeacherWeighting("equal", names).combine(losses, z)
    assert w == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    assert loss.item() == pytest.approx(sum(v.item() for v in losses.values()) / 3, rel=1e-6)

    loss, w = TeacherWeighting("single:b", names).combine(losses, z)
    assert w == {"a": 0.0, "b": 1.0, "c": 0.0}
    assert loss.item() == pytest.approx(losses["b"].item())

    loss, w = TeacherWeighting("none", names).combine({}, z)
    assert w == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert loss.item() == 0.0 and loss.dtype == z.dtype
    loss.backward()
    assert z.grad is not None and torch.count_nonzero(z.grad) == 0


def test_bad_single_name_raises_one_line_kderror() -> None:
    with pytest.raises(KDError) as exc:
        TeacherWeighting("single:zzz", ["a", "b"])
    msg = str(exc.value)
    assert "\n" not in msg and "single:a" in msg and "single:b" in msg and "zzz" in msg
    with pytest.raises(KDError):
        TeacherWeighting("average", ["a", "b"])
    with pytest.raises(KDError):
        TeacherWeighting("adaptive", ["a", "b"], tolerance=1.5)


def test_parse_weighting() -> None:
    assert parse_weighting(" Adaptive ", ["a"]) == "adaptive"
    assert parse_weighting("single:a", ["a", "b"]) == "single:a"
    assert parse_weighting("none", []) == "none"
    with pytest.raises(KDError):
        parse_weighting("equal", [])
    with pytest.raises(KDError):
        parse_weighting("adaptive:x", ["a"])
    with pytest.raises(KDError):
        parse_weighting("equal", ["a", "a"])


def test_adaptive_matches_manual_gradients() -> None:
    z, losses = _tiny_graph()
    names = ["a", "b", "c"]
    tw = TeacherWeighting("adaptive", names, tolerance=0.6)
    loss, w = tw.combine(losses, z)
    manual = torch.stack([torch.autograd.grad(losses[n], z, retain_graph=True)[0].reshape(-1) for n in names])
    expected = min_norm_weights(manual, upper=tolerance_upper(0.6, 3))
    assert [w[n] for n in names] == pytest.approx(expected.tolist(), abs=1e-7)
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-6)
    assert not all(abs(v - 1 / 3) < 1e-3 for v in w.values())  # teachers disagree: non-trivial weights
    ref = sum(w[n] * losses[n] for n in names)
    assert loss.item() == pytest.approx(ref.detach().item(), rel=1e-6)
    loss.backward()  # the graph survives the per-teacher gradient computation
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_adaptive_with_list_of_tensors() -> None:
    gen = torch.Generator().manual_seed(5)
    lat = torch.randn(3, 2, generator=gen, requires_grad=True)
    out = torch.randn(3, 4, generator=gen, requires_grad=True)
    losses = {"x": (lat**2).sum() + out.sum(), "y": (lat - 1).abs().sum()}  # y ignores out
    loss, w = TeacherWeighting("adaptive", ["x", "y"], tolerance=0.5).combine(losses, [lat, out])
    gx = torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses["x"], [lat, out], retain_graph=True)])
    gy = torch.cat([torch.autograd.grad(losses["y"], lat, retain_graph=True)[0].reshape(-1), torch.zeros(12)])
    expected = min_norm_weights(torch.stack([gx, gy]), upper=1.0)
    assert [w["x"], w["y"]] == pytest.approx(expected.tolist(), abs=1e-7)


def test_adaptive_identical_teachers_uniform_and_functional_api() -> None:
    z = torch.randn(2, 3, requires_grad=True)
    base = (z**2).sum()
    total, alpha = adaptive_combine([base, base * 1.0, base + 0.0], z)
    assert torch.equal(alpha, torch.full((3,), 1 / 3))
    assert total.item() == pytest.approx(base.item(), rel=1e-6)
