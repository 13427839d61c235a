"""Navier–Stokes solver and in-memory generator: exact solutions, divergence-free velocity, FNO equivalence,
dt convergence, seeds, argument errors (files and resuming: test_ns_dataset.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdmobile.data import navier_stokes as ns
from kdmobile.errors import KDError

TWO_PI = 2.0 * math.pi


def grid(res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x along axis 0, y along axis 1, both in [0, 1), float64."""
    t = torch.arange(res, dtype=torch.float64) / res
    return t[:, None].expand(res, res), t[None, :].expand(res, res)


def taylor_green(res: int, k: float = TWO_PI, amp: float = 1.0) -> torch.Tensor:
    """Taylor–Green vorticity w = 2k·amp·cos(kx)cos(ky): ψ = amp·cos(kx)cos(ky)/k, so u·∇w ≡ 0."""
    x, y = grid(res)
    return 2.0 * k * amp * torch.cos(k * x) * torch.cos(k * y)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference ||a - b|| / ||b||."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def band_limited_grf(n: int, res: int, seed: int) -> torch.Tensor:
    """A float64 GRF with its Nyquist modes removed (so derivatives are exact on the grid)."""
    w = ns.gaussian_random_field(n, res, torch.Generator().manual_seed(seed), dtype=torch.float64)
    w_h = torch.fft.rfft2(w)
    w_h[..., res // 2, :] = 0
    w_h[..., -1] = 0
    return torch.fft.irfft2(w_h, s=(res, res))


def spectral_grad(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂f/∂x, ∂f/∂y) by an independent full-FFT derivative (Nyquist zeroed)."""
    res = f.shape[-1]
    k = torch.fft.fftfreq(res, d=1.0 / res, dtype=torch.float64)
    k[res // 2] = 0.0
    f_h = torch.fft.fft2(f)
    fx = torch.fft.ifft2(1j * TWO_PI * k[:, None] * f_h).real
    fy = torch.fft.ifft2(1j * TWO_PI * k[None, :] * f_h).real
    return fx, fy


# ---------------------------------------------------------------- exact solutions and operators


@pytest.mark.parametrize("kmode, nu", [(1, 0.01), (3, 0.001)])
def test_taylor_green_decays_exactly(kmode: int, nu: float) -> None:
    """Unforced Taylor–Green: w(t) = w0·exp(-2νk²t); float64 solver within 1e-6 (measured ~4e-8)."""
    res, k = 32, TWO_PI * kmode
    w0 = taylor_green(res, k)
    info: dict = {}
    out = ns.solve(w0, nu, t_final=2.0, record_every=0.5, dtype=torch.float64, info=info)
    assert out.shape == (4, res, res) and out.dtype == torch.float64
    assert info["dt_max"] <= 1e-3 and info["steps_max"] == 2000
    for j in range(4):
        exact = w0 * math.exp(-2.0 * nu * k * k * 0.5 * (j + 1))
        assert rel(out[j], exact) < 1e-6, (j, rel(out[j], exact))
    # The decay is real (not a trivially constant field): amplitude fell by exp(-2νk²·2).
    assert float(out[-1].abs().max() / w0.abs().max()) == pytest.approx(math.exp(-4.0 * nu * k * k), rel=1e-6)


def test_taylor_green_float32_default_is_close() -> None:
    """The default float32 path stays within 1e-4 of the exact decay over 2000 steps (measured ~3e-5)."""
    res, nu, k = 32, 0.01, TWO_PI
    w0 = taylor_green(res, k).float()
    out = ns.solve(w0, nu, 2.0, 1.0)
    assert out.dtype == torch.float32
    exact = taylor_green(res, k) * math.exp(-2.0 * nu * k * k * 2.0)
    assert rel(out[-1], exact) < 1e-4


def test_velocity_is_divergence_free_and_its_curl_is_w() -> None:
    """u = ψ_y, v = -ψ_x: spectral ∇·u ~ 1e-10 relative, v_x - u_y == w (float64, band-limited GRF)."""
    w = band_limited_grf(3, 64, seed=5)
    u, v = ns.velocity_from_vorticity(w)
    ux, _ = spectral_grad(u)
    vx, vy = spectral_grad(v)
    _, uy = spectral_grad(u)
    scale = torch.sqrt(ux**2 + vy**2).norm()
    assert float((ux + vy).norm() / scale) < 1e-10
    assert rel(vx - uy, w) < 1e-10
    assert float(u.mean().abs()) < 1e-12 and float(v.mean().abs()) < 1e-12


def test_velocity_of_taylor_green_is_analytic() -> None:
    """ψ = cos(kx)cos(ky)/k gives u = -cos(kx)sin(ky), v = sin(kx)cos(ky)."""
    res, k = 32, TWO_PI
    x, y = grid(res)
    u, v = ns.velocity_from_vorticity(taylor_green(res, k))
    assert rel(u, -torch.cos(k * x) * torch.sin(k * y)) < 1e-12
    assert rel(v, torch.sin(k * x) * torch.cos(k * y)) < 1e-12


def fno_reference(w0: torch.Tensor, f: torch.Tensor, visc: float, t_final: float, delta_t: float, record_steps: int) -> torch.Tensor:
    """A transcription of the FNO `ns_2d.py` loop (torch.fft version), kept here as an independent reference."""
    n = w0.size()[-1]
    k_max = math.floor(n / 2.0)
    steps = math.ceil(t_final / delta_t)
    w_h = torch.fft.rfft2(w0)
    f_h = torch.fft.rfft2(f)
    if len(f_h.size()) < len(w_h.size()):
        f_h = torch.unsqueeze(f_h, 0)
    record_time = math.floor(steps / record_steps)
    k_y = torch.cat((torch.arange(0, k_max), torch.arange(-k_max, 0)), 0).repeat(n, 1).double()
    k_x = k_y.transpose(0, 1)
    k_x, k_y = k_x[..., : k_max + 1], k_y[..., : k_max + 1]
    lap = 4 * (math.pi**2) * (k_x**2 + k_y**2)
    lap[0, 0] = 1.0
    dealias = torch.unsqueeze(
        torch.logical_and(torch.abs(k_y) <= (2.0 / 3.0) * k_max, torch.abs(k_x) <= (2.0 / 3.0) * k_max).double(), 0
    )
    sol = torch.zeros(*w0.size(), record_steps, dtype=w0.dtype)
    c = 0
    for j in range(steps):
        psi_h = w_h / lap
        q = torch.fft.irfft2(2.0 * math.pi * k_y * 1j * psi_h, s=(n, n))
        v = torch.fft.irfft2(-2.0 * math.pi * k_x * 1j * psi_h, s=(n, n))
        w_x = torch.fft.irfft2(2.0 * math.pi * k_x * 1j * w_h, s=(n, n))
        w_y = torch.fft.irfft2(2.0 * math.pi * k_y * 1j * w_h, s=(n, n))
        f_nl = dealias * torch.fft.rfft2(q * w_x + v * w_y)
        w_h = (-delta_t * f_nl + delta_t * f_h + (1.0 - 0.5 * delta_t * visc * lap) * w_h) / (
            1.0 + 0.5 * delta_t * visc * lap
        )
        if (j + 1) % record_time == 0:
            sol[..., c] = torch.fft.irfft2(w_h, s=(n, n))
            c += 1
    return sol


def test_matches_the_fno_scheme() -> None:
    """Same update as FNO ns_2d.py: agreement to 1e-10 on a band-limited forced GRF (fixed dt)."""
    res = 32
    w0 = band_limited_grf(2, res, seed=11)
    f = ns.fno_forcing(res, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny FFTs: 2 threads made this reference loop ~30x slower on 2 cores
    try:
        ref = fno_reference(w0, f, 1e-3, 0.4, 1e-3, 2).permute(0, 3, 1, 2)
    finally:
        torch.set_num_threads(threads)
    ours = ns.solve(w0, 1e-3, 0.4, 0.2, dt=1e-3, forcing_field=f)
    assert rel(ours, ref) < 1e-10
    assert rel(ours[:, -1], w0) > 1e-3  # the flow actually evolved


def test_halving_dt_changes_a_forced_run_little_and_first_order() -> None:
    """Forced GRF, 32², t=2, float64: dt 1e-3 vs 5e-4 differ by < 5e-5 relative L2 (measured 2.57e-5);
    the differences shrink 2x per halving (measured 5.146e-5 -> 2.571e-5: ratio 2.00), the first order
    of the explicit nonlinear term."""
    res = 32
    w0 = ns.gaussian_random_field(2, res, torch.Generator().manual_seed(0), dtype=torch.float64)
    f = ns.fno_forcing(res, dtype=torch.float64)
    sols = {dt: ns.solve(w0, 1e-3, 2.0, 1.0, dt, f) for dt in (2e-3, 1e-3, 5e-4)}
    d_coarse = rel(sols[2e-3], sols[1e-3])
    d_fine = rel(sols[1e-3], sols[5e-4])
    assert d_fine < 5e-5, d_fine
    assert 1.8 < d_coarse / d_fine < 2.2, (d_coarse, d_fine)


# ---------------------------------------------------------------- time step selection


@pytest.mark.parametrize(
    "nu, amp, bound, tol",
    [
        # advective CFL: 0.5·dx/U = 6.25e-4 (< ν/U² = 8e-4). This very viscous decay carries
        # Crank–Nicolson's own error Σ n·(2νk²dt)³/12 = 1.0e-4 (80 steps of 6.25e-4) + 2.6e-4 (then 50
        # of 1e-3 once U has decayed) = 3.6e-4; measured 1.0e-4 and 3.6e-4 at the two records.
        (0.5, 25.0, 0.5 / 32 / 25.0, 5e-4),
        # explicit-advection stability: ν/U² = 1e-4 (< CFL 1.6e-3)
        (0.01, 10.0, 0.01 / 10.0**2, 1e-6),
    ],
)
def test_auto_dt_shrinks_for_fast_flows_per_trajectory(nu: float, amp: float, bound: float, tol: float) -> None:
    """A fast trajectory (max|u| = amp) gets dt = bound and stays exact; a slow one in the same batch
    keeps dt = 1e-3 and matches solving it alone (to FFT rounding: batched MKL FFTs are not bitwise
    batch-size invariant)."""
    res, k = 32, TWO_PI
    slow, fast = taylor_green(res, k, 1.0), taylor_green(res, k, amp)
    info: dict = {}
    both = ns.solve(torch.stack([slow, fast]), nu, 0.1, 0.05, info=info)
    assert info["dt_min"] == pytest.approx(bound, rel=1e-9)
    assert info["dt_max"] == pytest.approx(1e-3) and info["steps_min"] == 100
    assert info["steps_max"] > 100
    alone = ns.solve(slow, nu, 0.1, 0.05)
    assert rel(both[0], alone) < 1e-13
    for j, t in enumerate((0.05, 0.1)):
        assert rel(both[1, j], fast * math.exp(-2.0 * nu * k * k * t)) < tol


def test_fixed_dt_blow_up_is_reported() -> None:
    """Forcing dt far above the stability limit yields a one-line KDError, not NaN data."""
    with pytest.raises(KDError, match="non-finite"):
        ns.solve(taylor_green(32, TWO_PI, 100.0), 0.01, 0.2, 0.1, dt=1e-3)


def test_given_dt_is_rounded_to_divide_the_record_interval() -> None:
    """dt=3e-4 with records every 0.1 -> 334 steps of 0.1/334 each."""
    info: dict = {}
    ns.solve(taylor_green(16), 0.01, 0.2, 0.1, dt=3e-4, info=info)
    assert info["steps_max"] == 2 * 334 and info["dt_max"] == pytest.approx(0.1 / 334)


# ---------------------------------------------------------------- generate: seeds, shapes, errors


def test_generate_shape_dtype_and_seed_determinism() -> None:
    """Same seed -> identical data; another seed -> different; batch size changes only rounding."""
    a = ns.generate(3, res=16, t_final=2.0, seed=0, batch_size=3, device="cpu", progress=False)
    assert a.shape == (3, 2, 16, 16) and a.dtype == np.float32 and np.isfinite(a).all()
    b = ns.generate(3, res=16, t_final=2.0, seed=0, batch_size=3, device="cpu", progress=False)
    assert np.array_equal(a, b)
    c = ns.generate(3, res=16, t_final=2.0, seed=1, batch_size=3, device="cpu", progress=False)
    assert np.linalg.norm(a - c) / np.linalg.norm(a) > 0.5
    # Batch size only changes FFT rounding (MKL's batched FFTs are not bitwise batch-invariant):
    # measured max |a - d| ~ 2e-8 on values of O(1).
    d = ns.generate(3, res=16, t_final=2.0, seed=0, batch_size=1, device="cpu", progress=False)
    assert np.abs(a - d).max() < 1e-5 * np.abs(a).max()
    # Trajectories differ from each other, and the forcing drives them (not just decay).
    assert np.linalg.norm(a[0] - a[1]) > 0.1 * np.linalg.norm(a[0])
    unforced = ns.generate(1, res=16, t_final=2.0, seed=0, forcing=None, device="cpu", progress=False)
    assert np.linalg.norm(unforced[0] - a[0]) > 1e-3 * np.linalg.norm(a[0])


def test_generate_dt_record_and_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    """dt_record=0.5 gives 2 snapshots per unit time; the tqdm bar writes to stderr."""
    info: dict = {}
    a = ns.generate(1, res=16, t_final=1.0, dt_record=0.5, device="cpu", progress=True, info=info)
    assert a.shape == (1, 2, 16, 16)
    assert info["dt_max"] <= 1e-3 and info["device"] == "cpu"
    assert "navier-stokes" in capsys.readouterr().err


def test_gaussian_random_field_statistics() -> None:
    """Zero mean per field, the same for a seed, and variance 2σ²Σ(4π²|k|²+τ²)^-α (the FNO scaling)."""
    res, n = 32, 400
    w = ns.gaussian_random_field(n, res, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert w.shape == (n, res, res)
    assert float(w.mean(dim=(-2, -1)).abs().max()) < 1e-12
    again = ns.gaussian_random_field(n, res, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(w, again)
    k = torch.fft.fftfreq(res, d=1.0 / res, dtype=torch.float64)
    lam = 4 * math.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2) + 49.0
    lam[0, 0] = float("inf")
    expected = float(2 * (7.0**1.5) ** 2 * (lam ** -2.5).sum())
    assert float(w.var()) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"n": 0}, "--n"),
        ({"res": 15}, "--res"),
        ({"visc": -1.0}, "--visc"),
        ({"seed": -3}, "--seed"),
        ({"t_final": 2.5}, "whole multiple"),
        ({"forcing": "kolmogorov"}, "forcing"),
        ({"device": "tpu"}, "device"),
        ({"batch_size": 0}, "--batch-size"),
        ({"dt": -1e-3}, "--dt"),
        ({"dtype": "float16"}, "--dtype"),
        ({"cpu_threads": 0}, "--threads"),
    ],
)
def test_generate_refuses_bad_arguments(kwargs: dict, needle: str) -> None:
    """Bad user arguments are one-line KDErrors."""
    args = {"n": 1, "res": 16, "t_final": 1.0, "progress": False, **kwargs}
    with pytest.raises(KDError, match=needle) as e:
        ns.generate(**args)
    assert "\n" not in str(e.value)
