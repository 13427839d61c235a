"""Tests for the distillation losses: KD-KL, CLIP contrastive, output MSE and spectral band KD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdmobile.train.losses import (
    clip_contrastive,
    kd_kl,
    output_distill,
    radial_masks,
    spectral_band_loss,
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- kd_kl ------------------------------------------------------------------------------

def test_kd_kl_zero_for_equal_logits() -> None:
    x = torch.randn(5, 7)
    assert kd_kl(x, x.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_kl_matches_numpy() -> None:
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = np.array([[0.5, 2.5, 0.0], [1.0, 1.0, 1.0]])
    T = 2.0
    p_t, p_s = _softmax(t / T), _softmax(s / T)
    expected = T * T * float((p_t * (np.log(p_t) - np.log(p_s))).sum(axis=-1).mean())
    got = kd_kl(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), T).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert expected > 0.01


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_kl_gradient_temperature_scaling(T: float) -> None:
    gen = torch.Generator().manual_seed(int(T))
    B = 3
    s = torch.randn(B, 6, generator=gen, dtype=torch.float64).float().requires_grad_(True)
    t = torch.randn(B, 6, generator=gen).requires_grad_(True)
    kd_kl(s, t, T).backward()
    expected = T * (torch.softmax(s.detach() / T, -1) - torch.softmax(t.detach() / T, -1)) / B
    assert torch.allclose(s.grad, expected, atol=1e-6)
    assert t.grad is None  # teacher is detached


def test_kd_kl_gradient_magnitude_roughly_independent_of_T() -> None:
    # For small logit differences, T * (softmax(s/T) - softmax(t/T)) ~ (s - t - mean) / C.
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(4, 10, generator=gen)
    s0 = t + 0.01 * torch.randn(4, 10, generator=gen)
    norms = []
    for T in (4.0, 8.0, 16.0):
        s = (s0 * 1.0).requires_grad_(True)
        kd_kl(s, t, T).backward()
        norms.append(s.grad.norm().item())
    assert max(norms) / min(norms) < 1.2


def test_kd_kl_rejects_bad_temperature_and_shape() -> None:
    with pytest.raises(ValueError):
        kd_kl(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError):
        kd_kl(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


# --- clip_contrastive / output_distill -------------------------------------------------

def test_clip_contrastive_known_values() -> None:
    eye = torch.eye(4)
    # Perfectly aligned orthonormal pairs with a large scale: loss -> ~0.
    assert clip_contrastive(eye, eye, 100.0).item() == pytest.approx(0.0, abs=1e-6)
    # Scale 0: uniform logits, loss = log(B) in both directions.
    assert clip_contrastive(eye, eye, 0.0).item() == pytest.approx(math.log(4), rel=1e-6)
    # Normalisation happens inside: scaling an embedding does not change the loss.
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    a = clip_contrastive(x, y, torch.tensor(10.0))
    b = clip_contrastive(x * 5.0, y * 0.1, torch.tensor(10.0))
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_clip_contrastive_is_symmetric_average() -> None:
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    assert clip_contrastive(x, y, 7.0).item() == pytest.approx(clip_contrastive(y, x, 7.0).item(), rel=1e-6)


def test_output_distill_mse_and_detach() -> None:
    s = torch.tensor([[1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[0.0, 4.0]], requires_grad=True)
    loss = output_distill(s, t)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert t.grad is None and torch.allclose(s.grad, torch.tensor([[1.0, -2.0]]))


# --- spectral ---------------------------------------------------------------------------

def test_radial_masks_shape_partition_and_cutoff_one() -> None:
    masks = radial_masks(8, 6, (0.25, 0.5, 1.0))
    assert masks.shape == (3, 8, 6) and masks.dtype == torch.bool
    assert bool(masks[2].all())  # cutoff 1 covers everything
    assert bool(masks[:, 0, 0].all())  # DC is always low
    assert bool((masks[0] <= masks[1]).all())  # nested
    for m in masks[:2]:
        low, high = m, ~m
        assert int(low.sum()) + int(high.sum()) == 8 * 6 and not bool((low & high).any())
        assert 0 < int(low.sum()) < 48
    # Nyquist corner of an even grid has radius exactly 1: high for every cutoff < 1.
    even = radial_masks(8, 8, (0.999,))
    assert not bool(even[0, 4, 4])


def test_radial_masks_symmetric_under_frequency_negation() -> None:
    m = radial_masks(9, 9, (0.4,))[0]
    idx = (-torch.arange(9)) % 9
    assert torch.equal(m, m[idx][:, idx])


def test_spectral_identical_latents_zero() -> None:
    x = torch.randn(2, 3, 8, 8)
    loss, terms = spectral_band_loss(x, x.clone())
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    assert set(terms) == {"low@0.25", "high@0.25", "low@0.5", "high@0.5"}


def test_spectral_constant_perturbation_is_low_band_only() -> None:
    B, C, H, W = 2, 3, 8, 8
    s = torch.randn(B, C, H, W)
    delta = 0.5
    _, terms = spectral_band_loss(s, s + delta, normalise=False)
    masks = radial_masks(H, W, (0.25, 0.5))
    for c, m in zip((0.25, 0.5), masks):
        # ortho FFT: DC coefficient of a constant delta is delta * sqrt(H*W), in one bin.
        assert terms[f"low@{c}"].item() == pytest.approx(delta**2 * H * W / int(m.sum()), rel=1e-4)
        assert terms[f"high@{c}"].item() == pytest.approx(0.0, abs=1e-9)


def test_spectral_low_cosine_mode_is_low_band_only() -> None:
    B, C, H, W = 1, 2, 16, 16
    s = torch.randn(B, C, H, W)
    x = torch.arange(W, dtype=torch.float32)
    mode = torch.cos(2 * math.pi * x / W).expand(H, W)  # one cycle across the width: r ~ 0.088
    _, terms = spectral_band_loss(s, s + mode)
    for c in (0.25, 0.5):
        assert terms[f"low@{c}"].item() > 1e-3
        assert terms[f"high@{c}"].item() == pytest.approx(0.0, abs=1e-9)


def test_spectral_checkerboard_is_high_band_only() -> None:
    B, C, H, W = 2, 1, 8, 8
    s = torch.randn(B, C, H, W)
    i = torch.arange(H)[:, None]
    j = torch.arange(W)[None, :]
    checker = ((-1.0) ** (i + j)).float()
    loss, terms = spectral_band_loss(s, s + 0.3 * checker, low_weight=0.0, high_weight=1.0, normalise=False)
    masks = radial_masks(H, W, (0.25, 0.5))
    for c, m in zip((0.25, 0.5), masks):
        assert terms[f"low@{c}"].item() == pytest.approx(0.0, abs=1e-9)
        assert terms[f"high@{c}"].item() == pytest.approx(0.09 * H * W / int((~m).sum()), rel=1e-4)
    assert loss.item() == pytest.approx((terms["high@0.25"] + terms["high@0.5"]).item() / 2, rel=1e-6)


def test_spectral_total_is_weighted_band_means() -> None:
    s, t = torch.randn(2, 4, 6, 10), torch.randn(2, 4, 6, 10)
    loss, terms = spectral_band_loss(s, t, cutoffs=(0.3,), low_weight=2.0, high_weight=0.5, normalise=False)
    assert loss.item() == pytest.approx(2.0 * terms["low@0.3"].item() + 0.5 * terms["high@0.3"].item(), rel=1e-6)
    # Parseval: bin-count-weighted band terms add up to the spatial squared error.
    m = radial_masks(6, 10, (0.3,))[0]
    n_low, n_high = int(m.sum()), int((~m).sum())
    spatial = ((s - t) ** 2).sum().item() / (2 * 4)
    assert terms["low@0.3"].item() * n_low + terms["high@0.3"].item() * n_high == pytest.approx(spatial, rel=1e-4)


def test_spectral_normalised_is_relative_to_the_teacher_band_power() -> None:
    """Default: each band's error over the teacher's mean power in that band, so the latents' scale cancels."""
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    raw_loss, raw = spectral_band_loss(s, t, normalise=False)
    _, rel = spectral_band_loss(s, t)
    _, zero_err = spectral_band_loss(torch.zeros_like(t), t)  # predicting 0 costs exactly the teacher's power: 1
    scaled_loss, scaled = spectral_band_loss(100 * s, 100 * t)
    for c, low in zip((0.25, 0.5), radial_masks(8, 8, (0.25, 0.5))):
        ft = torch.fft.fft2(t, norm="ortho").abs().square().reshape(-1, 8, 8).mean(0)
        for kind, band in (("low", low), ("high", ~low)):
            name = f"{kind}@{c}"
            assert rel[name].item() == pytest.approx(raw[name].item() / ft[band].mean().item(), rel=1e-4)
            assert zero_err[name].item() == pytest.approx(1.0, rel=1e-5)
            assert scaled[name].item() == pytest.approx(rel[name].item(), rel=1e-4)
    assert raw_loss.item() > 0


def test_spectral_is_differentiable_and_teacher_detached() -> None:
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss, _ = spectral_band_loss(s, t)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None
    # The loss is quadratic in the student latent, so a central difference with a large step is exact.
    g = s.grad
    eps = 0.5
    bump = torch.zeros_like(s)
    bump[0, 1, 2, 3] = eps
    up, _ = spectral_band_loss(s.detach() + bump, t.detach())
    down, _ = spectral_band_loss(s.detach() - bump, t.detach())
    assert ((up - down) / (2 * eps)).item() == pytest.approx(g[0, 1, 2, 3].item(), rel=1e-3, abs=1e-6)


def test_spectral_under_autocast_is_float32() -> None:
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = spectral_band_loss(s.bfloat16(), t.bfloat16())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_spectral_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        spectral_band_loss(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 8, 8))
