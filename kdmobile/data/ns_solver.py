"""2-D Navier–Stokes (vorticity form) on the unit torus: the FNO-paper solver, GRF initial fields and forcing.

Scheme (Li et al., "Fourier Neural Operator", `ns_2d.py`): pseudo-spectral in space (rfft2/irfft2),
2/3-rule dealiasing of the nonlinear term u·∇w, Crank–Nicolson for ν Δw, the nonlinear term and
the forcing explicit (forward Euler):

    w_hat <- (-dt F_hat + dt f_hat + (1 - dt ν k²/2) w_hat) / (1 + dt ν k²/2),   F = u·∇w,

with u = (∂ψ/∂y, -∂ψ/∂x) and -Δψ = w. Axis 0 of a field is x, axis 1 is y (FNO's `indexing="ij"`).
Differences from the FNO script, all deliberate: exact Laplacian at k=0 (FNO sets it to 1, which
makes the zero mean mode decay slightly), first derivatives of the Nyquist modes set to zero (the
derivative of a real grid signal there is zero; they lie outside the 2/3 band anyway), the time
step chosen per record interval from a CFL bound (FNO: fixed 1e-4), and one seed per trajectory.

`scheme="rk3"` replaces forward Euler by the third-order SSP Runge-Kutta scheme with an integrating factor for
ν Δw (exact exp(-ν k² dt)): stable for advection up to the CFL bound, so weakly viscous flows (ν = 1e-5) need no
ν/U² step limit. Forward Euler's limit there forced dt near 4e-5 at t = 15 (64², measured: 19 s per unit time for 8
trajectories); RK3 runs at the CFL step with three nonlinear evaluations per step.
Datasets (batching, threads, chunked resumable files) are built on this in `navier_stokes`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from kdmobile.errors import UserError

FNO_ALPHA = 2.5
FNO_TAU = 7.0
DEFAULT_MAX_DT = 1e-3
DEFAULT_CFL = 0.5
RK3_MAX_DT = 1e-2  # RK3's cap: a tenth of a unit time, third-order accurate where the CFL bound allows it
SCHEMES = ("euler", "rk3")

__all__ = [
    "solve",
    "velocity_from_vorticity",
    "gaussian_random_field",
    "fno_forcing",
    "resolve_device",
    "default_max_dt",
    "num_records",
    "torch_threads",
]


@dataclass(frozen=True)
class _Spectral:
    """Precomputed spectral operators for one grid (shape, device, dtype)."""

    shape: tuple[int, int]
    lap: torch.Tensor  # 4π²|k|² (real, exact 0 at k=0), shape (H, W//2+1)
    mult: torch.Tensor  # complex (4, H, W//2+1): w_hat -> u, v, w_x, w_y
    dealias: torch.Tensor  # real 0/1 mask, shape (H, W//2+1)


def _spectral(h: int, w: int, device: torch.device, dtype: torch.dtype) -> _Spectral:
    """Build wavenumbers, Laplacian, derivative multipliers and the 2/3 mask for an h×w unit torus."""
    f64 = torch.float64
    kx = (torch.fft.fftfreq(h, d=1.0 / h, dtype=f64)[:, None]).expand(h, w // 2 + 1)
    ky = (torch.fft.rfftfreq(w, d=1.0 / w, dtype=f64)[None, :]).expand(h, w // 2 + 1)
    lap = 4.0 * math.pi**2 * (kx**2 + ky**2)
    inv_lap = torch.where(lap > 0, 1.0 / torch.where(lap > 0, lap, 1.0), 0.0)
    kx_d, ky_d = kx.clone(), ky.clone()
    if h % 2 == 0:
        kx_d[h // 2, :] = 0.0
    if w % 2 == 0:
        ky_d[:, -1] = 0.0
    dx = 2j * math.pi * kx_d.to(torch.complex128)
    dy = 2j * math.pi * ky_d.to(torch.complex128)
    mult = torch.stack([dy * inv_lap, -dx * inv_lap, dx, dy])
    dealias = ((kx.abs() <= (2.0 / 3.0) * (h // 2)) & (ky.abs() <= (2.0 / 3.0) * (w // 2))).to(f64)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return _Spectral(
        shape=(h, w),
        lap=lap.to(device=device, dtype=dtype),
        mult=mult.to(device=device, dtype=cdtype),
        dealias=dealias.to(device=device, dtype=dtype),
    )


def _check_float(t: torch.Tensor, name: str) -> None:
    """Refuse non-floating tensors (the solver is real-valued float32/float64)."""
    if t.dtype not in (torch.float32, torch.float64):
        raise UserError(f"{name} must be a float32 or float64 tensor, got {t.dtype}")


def velocity_from_vorticity(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Velocity (u, v) = (∂ψ/∂y, -∂ψ/∂x) with -Δψ = w on the unit torus; w is (..., H, W) real."""
    _check_float(w, "vorticity")
    h, wd = w.shape[-2:]
    ops = _spectral(h, wd, w.device, w.dtype)
    w_h = torch.fft.rfft2(w)
    u = torch.fft.irfft2(ops.mult[0] * w_h, s=(h, wd))
    v = torch.fft.irfft2(ops.mult[1] * w_h, s=(h, wd))
    return u, v


def num_records(t_final: float, record_every: float) -> int:
    """Number of snapshots t_final/record_every; must be a positive integer (FNO: one per unit time)."""
    if not (math.isfinite(t_final) and t_final > 0):
        raise UserError(f"t_final must be a positive number, got {t_final}")
    if not (math.isfinite(record_every) and record_every > 0):
        raise UserError(f"the record interval must be a positive number, got {record_every}")
    ratio = t_final / record_every
    n = round(ratio)
    if n < 1 or abs(ratio - n) > 1e-9 * max(1.0, ratio):
        raise UserError(
            f"t_final ({t_final}) must be a whole multiple of the record interval ({record_every})"
        )
    return n


def default_max_dt(res: int, scheme: str = "euler") -> float:
    """Largest time step allowed: 1e-3 up to 256² (the FNO regime), shrinking ∝ 1/res beyond; RK3 1e-2."""
    return (RK3_MAX_DT if scheme == "rk3" else DEFAULT_MAX_DT) * min(1.0, 256.0 / max(res, 1))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it), restoring it afterwards."""
    if n is not None and (not isinstance(n, int) or n < 1):
        raise UserError(f"cpu_threads must be a positive integer, got {n!r}")
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def solve(
    w0: torch.Tensor,
    visc: float,
    t_final: float,
    record_every: float = 1.0,
    dt: float | None = None,
    forcing_field: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
    cfl: float = DEFAULT_CFL,
    max_dt: float | None = None,
    cpu_threads: int | None = None,
    on_record: Callable[[int], None] | None = None,
    info: dict[str, Any] | None = None,
    record_stride: int = 1,
    scheme: str = "euler",
) -> torch.Tensor:
    """Integrate vorticity w0 (H, W) or (B, H, W) to t_final; return snapshots (B, T, H, W) at t=k·record_every.

    `record_stride` k keeps every k-th grid point of each snapshot (B, T, H/k, W/k): a fine solve stored coarse, as
    FNO stored its 256² solves at 64² (pointwise subsampling, which keeps the solution's values at the stored points).

    The initial state is not included (FNO convention). `dt=None` picks, per trajectory and per record
    interval, dt = min(max_dt, cfl·min(dx, dy)/U, ν/U²) with U = max|u| now, rounded down to an integer
    number of steps per interval. The ν/U² term is half the stability limit 2ν/U² of forward-Euler
    advection with Crank–Nicolson diffusion (von Neumann, independent of k); the CFL term alone lets
    fast, weakly viscous flows blow up (scheme="rk3" drops it). A given `dt` is likewise rounded down.
    Per-trajectory steps keep each trajectory independent of the rest of the batch. On CPU, grids up to
    128² run with one torch thread unless `cpu_threads` says otherwise (their FFTs are too small to
    share: measured 2-thread runs were up to 10x slower). `info` (if given) receives dt statistics.
    """
    _check_float(w0, "w0")
    if scheme not in SCHEMES:
        raise UserError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise UserError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        w0 = w0.to(dtype)
    if w0.dim() not in (2, 3):
        raise UserError(f"w0 must be (H, W) or (B, H, W), got shape {tuple(w0.shape)}")
    if not (math.isfinite(visc) and visc >= 0):
        raise UserError(f"viscosity must be a non-negative number, got {visc}")
    if dt is not None and not (math.isfinite(dt) and dt > 0):
        raise UserError(f"dt must be a positive number, got {dt}")
    if not (math.isfinite(cfl) and cfl > 0):
        raise UserError(f"cfl must be a positive number, got {cfl}")
    n_rec = num_records(t_final, record_every)
    squeeze = w0.dim() == 2
    w = w0.unsqueeze(0) if squeeze else w0
    b, h, wd = w.shape
    if h < 4 or wd < 4:
        raise UserError(f"grid too small: {h}x{wd} (need at least 4x4)")
    k = int(record_stride)
    if k < 1 or h % k or wd % k:
        raise UserError(f"record_stride {record_stride} must divide the grid {h}x{wd}")
    rdtype, dev = w.dtype, w.device
    ops = _spectral(h, wd, dev, rdtype)
    if max_dt is None:
        max_dt = default_max_dt(max(h, wd), scheme)
    f_h: torch.Tensor | None = None
    if forcing_field is not None:
        _check_float(forcing_field, "forcing_field")
        if tuple(forcing_field.shape[-2:]) != (h, wd):
            raise UserError(f"forcing shape {tuple(forcing_field.shape)} does not match the grid {h}x{wd}")
        f_h = torch.fft.rfft2(forcing_field.to(device=dev, dtype=rdtype))
    grid = min(1.0 / h, 1.0 / wd)
    out = torch.empty(b, n_rec, h // k, wd // k, dtype=rdtype, device=dev)
    dts: list[torch.Tensor] = []
    total_steps = torch.zeros(b, dtype=torch.long)

    if cpu_threads is None and dev.type == "cpu" and h * wd <= 128 * 128:
        cpu_threads = 1
    with torch.inference_mode(), torch_threads(cpu_threads if dev.type == "cpu" else None):
        w_h = torch.fft.rfft2(w)
        for r in range(n_rec):
            if dt is None:
                fields = torch.fft.irfft2(w_h.unsqueeze(-3) * ops.mult[:2], s=(h, wd))
                umax = torch.sqrt(fields[:, 0] ** 2 + fields[:, 1] ** 2).amax(dim=(-2, -1))
                umax = umax.double().cpu()
                if not bool(torch.isfinite(umax).all()):
                    raise UserError(f"the solution became non-finite before t={r * record_every:g} (blow-up)")
                safe = umax.clamp_min(1e-300)
                dt_i = torch.where(umax > 0, cfl * grid / safe, max_dt)
                if visc > 0 and scheme == "euler":
                    dt_i = torch.minimum(dt_i, torch.where(umax > 0, visc / safe**2, max_dt))
                dt_i = dt_i.clamp(max=max_dt)
            else:
                dt_i = torch.full((b,), float(dt), dtype=torch.float64)
            steps = torch.ceil(record_every / dt_i * (1.0 - 1e-12)).long().clamp_min(1)
            dt_i = record_every / steps.double()
            dts.append(dt_i)
            total_steps += steps
            n_max = int(steps.max())
            uniform = bool((steps == n_max).all())
            steps_dev = steps.to(dev)[:, None, None]
            if scheme == "rk3":
                w_h = _rk3_interval(w_h, dt_i.to(dev), visc, ops, f_h, n_max, None if uniform else steps_dev)
                out[:, r] = torch.fft.irfft2(w_h, s=(h, wd))[..., ::k, ::k]
                _check_record(out[:, r], r, record_every, on_record)
                continue
            # Per-trajectory Crank–Nicolson coefficients, shape (B, H, W//2+1).
            half = (0.5 * dt_i.to(dev)[:, None, None] * visc) * ops.lap.double()
            binv = 1.0 / (1.0 + half)
            a = ((1.0 - half) * binv).to(rdtype)
            c = dt_i.to(dev)[:, None, None] * binv
            d = (c * ops.dealias.double()).to(rdtype)
            g = None if f_h is None else c.to(rdtype) * f_h
            for j in range(n_max):
                fields = torch.fft.irfft2(w_h.unsqueeze(-3) * ops.mult, s=(h, wd))
                nonlin = fields[:, 0] * fields[:, 2] + fields[:, 1] * fields[:, 3]
                new = a * w_h - d * torch.fft.rfft2(nonlin)
                if g is not None:
                    new = new + g
                w_h = new if uniform else torch.where(steps_dev > j, new, w_h)
            out[:, r] = torch.fft.irfft2(w_h, s=(h, wd))[..., ::k, ::k]
            _check_record(out[:, r], r, record_every, on_record)

    if info is not None:
        all_dt = torch.stack(dts) if dts else torch.zeros(1, b, dtype=torch.float64)
        info.update(
            dt_min=float(all_dt.min()),
            dt_max=float(all_dt.max()),
            steps_min=int(total_steps.min()),
            steps_max=int(total_steps.max()),
        )
    return out[0] if squeeze else out


def _check_record(frame: torch.Tensor, r: int, record_every: float, on_record: Callable[[int], None] | None) -> None:
    """Refuse a non-finite snapshot (blow-up), then report record r."""
    if not bool(torch.isfinite(frame).all()):
        raise UserError(f"the solution became non-finite by t={(r + 1) * record_every:g} (blow-up); use a smaller dt")
    if on_record is not None:
        on_record(r)


def _rk3_interval(w_h: torch.Tensor, dt: torch.Tensor, visc: float, ops: _Spectral, f_h: torch.Tensor | None,
                  n_max: int, steps: torch.Tensor | None) -> torch.Tensor:
    """`n_max` steps of integrating-factor SSP-RK3 (Shu-Osher stages at t, t+dt, t+dt/2) on w_hat (B, H, W//2+1);
    trajectory b stops after steps[b] steps when `steps` is given (per-trajectory dt)."""
    h, wd = ops.shape
    nu_dt = (dt[:, None, None] * visc) * ops.lap.double()
    e1, e_half, e_back = (torch.exp(-nu_dt).to(w_h.real.dtype), torch.exp(-0.5 * nu_dt).to(w_h.real.dtype),
                          torch.exp(0.5 * nu_dt).to(w_h.real.dtype))
    step = dt[:, None, None].to(w_h.real.dtype)

    def rhs(x: torch.Tensor) -> torch.Tensor:
        fields = torch.fft.irfft2(x.unsqueeze(-3) * ops.mult, s=(h, wd))
        n_h = -ops.dealias * torch.fft.rfft2(fields[:, 0] * fields[:, 2] + fields[:, 1] * fields[:, 3])
        return n_h if f_h is None else n_h + f_h

    for j in range(n_max):
        u1 = e1 * (w_h + step * rhs(w_h))
        u2 = 0.75 * e_half * w_h + 0.25 * e_back * (u1 + step * rhs(u1))
        new = (1.0 / 3.0) * e1 * w_h + (2.0 / 3.0) * e_half * (u2 + step * rhs(u2))
        w_h = new if steps is None else torch.where(steps > j, new, w_h)
    return w_h


def _grf_sqrt_eig(res: int, alpha: float, tau: float, sigma: float) -> torch.Tensor:
    """FNO GaussianRF square-root eigenvalues res²·√2·σ·(4π²|k|² + τ²)^(-α/2), zero mean mode (float64)."""
    k = torch.fft.fftfreq(res, d=1.0 / res, dtype=torch.float64)
    kx, ky = k[:, None], k[None, :]
    s = (res**2) * math.sqrt(2.0) * sigma * (4.0 * math.pi**2 * (kx**2 + ky**2) + tau**2) ** (-alpha / 2.0)
    s[0, 0] = 0.0
    return s


def gaussian_random_field(
    n: int,
    res: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    *,
    alpha: float = FNO_ALPHA,
    tau: float = FNO_TAU,
    sigma: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """n periodic fields (n, res, res) from the FNO GaussianRF (α=2.5, τ=7, σ=τ^(α-1)), seeded by `generator`.

    As in the FNO script that produced the published data: real and imaginary parts of each Fourier
    coefficient are independent N(0, 1), scaled by the square-root eigenvalues, and the real part of
    the inverse FFT is kept; the pointwise covariance is thus 2σ²(4π²|k|² + τ²)^(-α) per mode.
    Drawn in float64 on the generator's device and then moved, so a seed gives the same field anywhere.
    """
    if n < 0 or res < 2:
        raise UserError(f"need n >= 0 and res >= 2, got n={n}, res={res}")
    if sigma is None:
        sigma = tau ** (0.5 * (2.0 * alpha - 2.0))
    gdev = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(n, res, res, 2, generator=generator, device=gdev, dtype=torch.float64)
    coeff = torch.complex(noise[..., 0], noise[..., 1]) * _grf_sqrt_eig(res, alpha, tau, sigma).to(gdev)
    field = torch.fft.ifft2(coeff).real
    return field.to(device=device if device is not None else gdev, dtype=dtype)


def fno_forcing(
    res: int, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The FNO forcing f(x, y) = 0.1·(sin 2π(x+y) + cos 2π(x+y)) on a res×res grid (x along axis 0)."""
    t = torch.arange(res, dtype=torch.float64) / res
    s = 2.0 * math.pi * (t[:, None] + t[None, :])
    return (0.1 * (torch.sin(s) + torch.cos(s))).to(device=device, dtype=dtype)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`/"auto" -> CUDA when available else CPU; refuse unknown or unavailable devices (KDError)."""
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {device!r} (use cpu, cuda or auto)")
    return dev
