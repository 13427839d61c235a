"""A check of the generator's physics beyond "finite and zero-mean", for one (visc, grid, scheme) setting.

Three measurements on a few trajectories (each one deterministic from its seed):
- **Resolution**: the stored field of the solve equals that of a solve on twice the grid (its initial field drawn
  there and spectrally truncated, so both start from the same flow), subsampled the same way, within `tol_rel` in
  relative L2 over the first `t_check` time units. Chaos separates them later; that is physics, not error.
- **Enstrophy budget**: in 2-D the (dealiased) advection term conserves enstrophy Z = <w²>/2, so
  dZ/dt = <w f> - ν <|∇w|²>; the change of Z over the run must match the time integral of the right-hand side within
  `tol_budget` (relative to the change), or the scheme adds or loses enstrophy.
- **Spectrum**: the energy spectrum E(k) of the final field falls at least as steeply as k^-3 (Kraichnan's
  enstrophy cascade; a resolution-starved solve piles energy up at high k and flattens it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kdmobile.data.ns_solver import fno_forcing, gaussian_random_field, solve
from kdmobile.errors import UserError

MAX_CHECK_GRID = 512  # the reference solve is on twice the solve grid


def check_grid(solve_res: int) -> None:
    """Refuse (one line) a solve grid whose reference solve, on twice the grid, is over MAX_CHECK_GRID."""
    if 2 * solve_res > MAX_CHECK_GRID:
        raise UserError(f"--check: the reference solve on {2 * solve_res}² is over the limit of {MAX_CHECK_GRID}²")


def _truncate(w: torch.Tensor, res: int) -> torch.Tensor:
    """The fine field (B, N, N) spectrally truncated to res x res (the modes |k| < res/2, Nyquist dropped)."""
    n = w.shape[-1]
    wh = torch.fft.fft2(w)
    half = res // 2
    keep = torch.cat([torch.arange(0, half), torch.arange(n - half + 1, n)])
    low = torch.zeros(*w.shape[:-2], res, res, dtype=wh.dtype)
    idx = torch.cat([torch.arange(0, half), torch.arange(res - half + 1, res)])
    low[..., idx[:, None], idx[None, :]] = wh[..., keep[:, None], keep[None, :]]
    return torch.fft.ifft2(low).real * (res / n) ** 2


def _enstrophy_terms(w: torch.Tensor, visc: float, f: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Z = <w²>/2 and dZ/dt = <w f> - ν <|∇w|²> of fields (B, T, N, N), per trajectory and time."""
    n = w.shape[-1]
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)
    wh = torch.fft.fft2(w)
    grad2 = (4 * math.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2) * wh.abs() ** 2).sum((-2, -1)) / n**4
    z = 0.5 * (w**2).mean((-2, -1))
    rate = (w * f).mean((-2, -1)) - visc * grad2
    return z.numpy(), rate.numpy()


def energy_spectrum(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shell-summed kinetic energy spectrum E(k), k = 1..N/2, of vorticity fields (..., N, N) (mean over leading axes)."""
    n = w.shape[-1]
    wh = np.fft.fft2(w) / n**2
    k = np.fft.fftfreq(n, d=1.0 / n)
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    e = np.where(kk > 0, np.abs(wh) ** 2 / np.maximum(4 * math.pi**2 * kk**2, 1e-30), 0.0) / 2
    e = e.reshape(-1, n, n).mean(0)
    sums = np.bincount(np.rint(kk).astype(int).ravel(), weights=e.ravel())
    ks = np.arange(1, n // 2 + 1)
    return ks, sums[ks]


def physics_check(visc: float, res: int, solve_res: int | None = None, scheme: str = "rk3", n: int = 2,
                  t_check: float = 2.0, t_final: float = 4.0, seed: int = 0, tol_rel: float = 0.03,
                  tol_budget: float = 0.02) -> dict[str, Any]:
    """Run the three measurements (module docstring) in float64; returns every number and `passed`."""
    fine = int(solve_res or res)
    check_grid(fine)
    g = torch.Generator().manual_seed(seed)
    w_ref0 = gaussian_random_field(n, 2 * fine, g, dtype=torch.float64)
    w0 = _truncate(w_ref0, fine)
    f = fno_forcing(fine, dtype=torch.float64)
    every = 0.05
    full = solve(w0, visc, t_final, every, forcing_field=f, scheme=scheme)  # (n, T, fine, fine)
    ref = solve(w_ref0, visc, t_check, 1.0, forcing_field=fno_forcing(2 * fine, dtype=torch.float64),
                scheme=scheme, record_stride=2 * fine // res)
    steps = int(round(1.0 / every))
    mine = full[:, steps - 1 :: steps][:, : ref.shape[1], :: fine // res, :: fine // res]
    rel = ((mine - ref).pow(2).sum((0, 2, 3)) / ref.pow(2).sum((0, 2, 3))).sqrt().numpy()
    z, rate = _enstrophy_terms(torch.cat([w0[:, None], full], 1), visc, f)
    change = z[:, -1] - z[:, 0]
    integral = np.trapezoid(rate, dx=every, axis=1)
    budget_err = float(np.max(np.abs(change - integral) / np.maximum(np.abs(change), 1e-12)))
    ks, e = energy_spectrum(full[:, -1].numpy())
    band = (ks >= 3) & (ks <= max(4, fine // 3 - 1))
    slope = float(np.polyfit(np.log(ks[band]), np.log(np.maximum(e[band], 1e-300)), 1)[0])
    checks = {"resolution": bool(np.all(rel <= tol_rel)), "enstrophy_budget": budget_err <= tol_budget,
              "spectrum": slope <= -3.0}
    return {"visc": visc, "res": res, "solve_res": fine, "reference_res": 2 * fine, "scheme": scheme,
            "trajectories": n, "rel_l2_vs_reference": rel.round(5).tolist(), "tol_rel": tol_rel,
            "enstrophy": [float(z[:, 0].mean()), float(z[:, -1].mean())], "enstrophy_budget_rel_error": budget_err,
            "tol_budget": tol_budget, "spectrum_slope": slope, "spectrum_band": [int(ks[band][0]), int(ks[band][-1])],
            "t_check": t_check, "t_final": t_final, "checks": checks, "passed": all(checks.values())}
