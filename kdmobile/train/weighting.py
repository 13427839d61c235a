"""Multi-teacher loss weighting, including AE-KD adaptive weighting in gradient space.

Why adaptive weighting: with several teachers, each per-teacher distillation loss L_m pulls
the student's output z along its own gradient g_m = dL_m/dz.  Teachers that disagree have
gradients pointing in conflicting directions, and a fixed average can follow one teacher at
the expense of another (or cancel to a direction that serves none of them).  AE-KD
("Agree to Disagree", Du et al., NeurIPS 2020) instead picks convex weights alpha that
minimise the norm of the combined gradient ||sum_m alpha_m g_m||^2 over the simplex.  The
min-norm point of the convex hull of the gradients is (when non-zero) a direction along which
every teacher's loss descends (its inner product with each active g_m is positive), so the
teachers are reconciled in the direction all of them agree on; when it is zero the student
sits at a Pareto-stationary point between teachers.

AE-KD's min-norm point favours the teacher with the *smaller* gradient, which is often the flatter, weaker one
(measured here: on CIFAR-10 it handed most weight to a teacher below the student's own accuracy). Two
reliability-aware modes therefore sit beside it:
- `confidence` (CA-MKD, Zhang et al., ICASSP 2022): per-sample weights w_ik = (1 - softmax_k(CE_ik)) / (K - 1)
  from each teacher's cross-entropy against the label, so a teacher that is wrong on a sample stops teaching it;
- `reliable`: the min-norm direction over *unit-normalised* per-teacher gradients (so flatness earns no weight),
  multiplied by each teacher's batch-mean confidence weight and renormalised.

The one-class-SVM dual in AE-KD adds a tolerance C in [1/M, 1] that caps every weight at
u = 1/(C*M) (clipped into [1/M, 1]): C = 1 forces equal weights, C = 1/M removes the cap, and
AE-KD's default is C = 0.6.  The cap stops a single teacher with a tiny gradient from taking
all the weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from kdmobile.errors import UserError

__all__ = [
    "MODES",
    "TeacherWeighting",
    "adaptive_combine",
    "min_norm_weights",
    "min_norm_weights_2",
    "parse_weighting",
    "project_capped_simplex",
    "tolerance_upper",
]

MODES: tuple[str, ...] = ("adaptive", "confidence", "reliable", "equal", "none", "single:NAME")
_PLAIN = ("adaptive", "confidence", "reliable", "equal", "none")
_NEEDS_ERRORS = ("confidence", "reliable")
DEFAULT_TOLERANCE: float = 0.6


def tolerance_upper(tolerance: float, m: int) -> float:
    """Return the AE-KD weight cap u = 1/(C*M), clipped into [1/M, 1]."""
    if m < 1:
        raise ValueError(f"need at least one teacher, got m={m}")
    if not (tolerance > 0.0):
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    return float(min(1.0, max(1.0 / m, 1.0 / (tolerance * m))))


def _project_np(v: np.ndarray, u: float) -> np.ndarray:
    """Project a float64 vector onto {sum(a) = 1, 0 <= a <= u} (u already in [1/M, 1])."""
    m = v.size
    if u * m <= 1.0 + 1e-12:  # the set is the single uniform point
        return np.full(m, 1.0 / m)
    # s(tau) = sum(clip(v - tau, 0, u)) is non-increasing: s(min(v) - u) = M*u >= 1, s(max(v)) = 0.
    lo = float(v.min()) - u
    hi = float(v.max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(np.clip(v - mid, 0.0, u).sum()) > 1.0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, abs(lo), abs(hi)):
            break
    tau = 0.5 * (lo + hi)
    # Exact refinement: with the active set fixed, the shift solves a linear equation.
    shifted = v - tau
    free = (shifted > 0.0) & (shifted < u)
    if free.any():
        at_upper = int((shifted >= u).sum())
        tau_exact = (float(v[free].sum()) + at_upper * u - 1.0) / int(free.sum())
        cand = np.clip(v - tau_exact, 0.0, u)
        if abs(float(cand.sum()) - 1.0) <= 1e-12:
            return cand
    return np.clip(shifted, 0.0, u)


def project_capped_simplex(v: torch.Tensor, upper: float) -> torch.Tensor:
    """Euclidean projection of a 1-D vector onto {sum(a) = 1, 0 <= a <= upper} (bisection on the shift), float64."""
    arr = v.detach().to("cpu", torch.float64).reshape(-1).numpy()
    u = float(min(1.0, max(upper, 1.0 / arr.size)))
    return torch.from_numpy(_project_np(arr, u))


def min_norm_weights_2(grads: torch.Tensor, upper: float = 1.0) -> torch.Tensor:
    """Closed-form min-norm weights for two gradients: a1 = clip(((g2-g1).g2)/||g1-g2||^2, 1-u, u)."""
    if grads.dim() != 2 or grads.shape[0] != 2:
        raise ValueError(f"expected grads of shape (2, D), got {tuple(grads.shape)}")
    g = grads.to(torch.float64)
    u = float(min(1.0, max(upper, 0.5)))
    diff = g[0] - g[1]
    denom = float(diff @ diff)
    if denom <= 0.0:
        return torch.full((2,), 0.5, dtype=torch.float32)
    a1 = float(((g[1] - g[0]) @ g[1]) / denom)
    a1 = min(u, max(1.0 - u, a1))
    return torch.tensor([a1, 1.0 - a1], dtype=torch.float32)


def min_norm_weights(grads: torch.Tensor, upper: float = 1.0, iters: int = 200) -> torch.Tensor:
    """Minimise ||sum_m a_m g_m||^2 over {sum a = 1, 0 <= a <= upper}; grads is (M, D), returns (M,) float32 on CPU."""
    if grads.dim() != 2 or grads.shape[0] < 1:
        raise ValueError(f"expected grads of shape (M, D) with M >= 1, got {tuple(grads.shape)}")
    m = int(grads.shape[0])
    uniform = torch.full((m,), 1.0 / m, dtype=torch.float32)
    u = float(min(1.0, max(upper, 1.0 / m)))
    g64 = grads.detach().to(device="cpu", dtype=torch.float64)
    gram = (g64 @ g64.T).numpy()
    if m == 1 or u * m <= 1.0 + 1e-12 or not np.isfinite(gram).all():
        return uniform
    # Objective f(a) = 1/2 a^T G a.  Iterates stay on the affine hull {sum a = 1}, so the
    # Lipschitz constant that matters is that of G restricted to the tangent space
    # (P G P with P = I - 11^T/M); it is <= lambda_max(G), so the step 1/L is at least as
    # large as 1/lambda_max(G) and still guarantees monotone descent.  For M = 2 this step
    # is exact (one-dimensional quadratic), matching the closed form.
    proj = np.eye(m) - 1.0 / m
    lam = float(np.linalg.eigvalsh(proj @ gram @ proj).max())
    scale = float(gram.diagonal().max())
    if lam <= 1e-14 * max(scale, 1e-300):
        # All gradients identical (or all zero): every feasible point has the same cost.
        return uniform
    step = 1.0 / lam
    alpha = np.full(m, 1.0 / m)
    for _ in range(max(1, iters)):
        grad = gram @ alpha
        if float(grad.max() - grad.min()) <= 1e-13 * max(scale, 1e-300):
            break  # the gradient is parallel to 1: stationary on the affine hull
        nxt = _project_np(alpha - step * grad, u)
        done = float(np.abs(nxt - alpha).max()) <= 1e-13
        alpha = nxt
        if done:
            break
    return torch.from_numpy(alpha).to(torch.float32)


def _as_list(wrt: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Return wrt as a non-empty list of tensors."""
    items = [wrt] if isinstance(wrt, torch.Tensor) else list(wrt)
    if not items:
        raise ValueError("wrt must be a tensor or a non-empty list of tensors")
    return items


def _flat_grad(loss: torch.Tensor, wrt: list[torch.Tensor]) -> torch.Tensor:
    """Return dloss/dwrt flattened and concatenated (zeros where loss does not depend on wrt)."""
    if not loss.requires_grad:
        return torch.zeros(sum(t.numel() for t in wrt), dtype=torch.float64)
    grads = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
    parts = [
        (torch.zeros(t.numel(), dtype=torch.float64) if g is None else g.detach().reshape(-1).to("cpu", torch.float64))
        for g, t in zip(grads, wrt)
    ]
    return torch.cat(parts)


def adaptive_combine(
    losses: Sequence[torch.Tensor],
    wrt: torch.Tensor | Sequence[torch.Tensor],
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AE-KD combination: returns (sum_m a_m L_m, a) with a detached float32 on CPU."""
    if not losses:
        raise ValueError("adaptive_combine needs at least one loss")
    targets = _as_list(wrt)
    if not any(t.requires_grad for t in targets):
        raise ValueError("adaptive weighting needs wrt tensors that require grad")
    m = len(losses)
    if m == 1:
        return losses[0], torch.ones(1, dtype=torch.float32)
    grads = torch.stack([_flat_grad(loss, targets) for loss in losses])
    alpha = min_norm_weights(grads, upper=tolerance_upper(tolerance, m))
    total = sum(float(a) * loss for a, loss in zip(alpha.tolist(), losses))
    return total, alpha  # type: ignore[return-value]


def confidence_weights(teacher_errors: torch.Tensor) -> torch.Tensor:
    """CA-MKD per-sample teacher weights from (K, B) per-sample teacher losses vs the truth: (1 - softmax_k) / (K-1),
    so each column sums to 1 and the teacher with the lower loss on a sample gets more of its weight."""
    if teacher_errors.dim() != 2 or teacher_errors.shape[0] < 1:
        raise ValueError(f"expected teacher errors of shape (K, B), got {tuple(teacher_errors.shape)}")
    k = int(teacher_errors.shape[0])
    if k == 1:
        return torch.ones_like(teacher_errors, dtype=torch.float32)
    return ((1.0 - torch.softmax(teacher_errors.detach().float(), dim=0)) / (k - 1)).float()


def reliable_weights(grads: torch.Tensor, reliability: torch.Tensor, upper: float = 1.0) -> torch.Tensor:
    """Min-norm weights over unit-normalised gradients (M, D), times per-teacher reliability (M,), renormalised."""
    norms = grads.to(torch.float64).norm(dim=1, keepdim=True).clamp_min(1e-30)
    alpha = min_norm_weights(grads.to(torch.float64) / norms, upper=upper).to(torch.float64)
    w = alpha * reliability.detach().to(torch.float64).clamp_min(0.0)
    total = float(w.sum())
    return (w / total if total > 0 else alpha).to(torch.float32)


def _mean(loss: torch.Tensor) -> torch.Tensor:
    """A per-teacher loss as a scalar (per-sample losses are averaged)."""
    return loss.mean() if loss.dim() > 0 else loss


def parse_weighting(text: str, teacher_names: Sequence[str]) -> str:
    """Validate a weighting flag against the teacher names; returns the normalised mode string."""
    names = list(teacher_names)
    if len(set(names)) != len(names):
        raise UserError(f"duplicate teacher names: {', '.join(names)}")
    raw = str(text).strip()
    kind, sep, arg = raw.partition(":")
    kind = kind.strip().lower()
    choices = ", ".join([*_PLAIN, *(f"single:{n}" for n in names)])
    if kind in _PLAIN and not sep:
        if kind != "none" and not names:
            raise UserError(f"teacher weighting {kind!r} needs at least one teacher")
        return kind
    if kind == "single" and sep:
        name = arg.strip()
        if name not in names:
            raise UserError(f"unknown teacher {name!r} in weighting {raw!r}; valid: {choices}")
        return f"single:{name}"
    raise UserError(f"unknown teacher weighting {raw!r}; valid: {choices}")


class TeacherWeighting:
    """Combine per-teacher losses by mode: adaptive (AE-KD), confidence (CA-MKD), reliable, equal, none (no KD)
    or single:NAME. Losses may be scalars or per-sample (B,); `teacher_errors` (per-sample teacher losses against
    the ground truth) are needed by the reliability-aware modes."""

    def __init__(self, mode: str, teacher_names: Sequence[str], tolerance: float = DEFAULT_TOLERANCE) -> None:
        """Validate the mode against the teacher names and the tolerance C (0 < C <= 1)."""
        self.teacher_names: list[str] = list(teacher_names)
        self.mode: str = parse_weighting(mode, self.teacher_names)
        if not (0.0 < float(tolerance) <= 1.0):
            raise UserError(f"teacher weighting tolerance must be in (0, 1], got {tolerance}")
        self.tolerance: float = float(tolerance)
        self.single: str | None = self.mode.split(":", 1)[1] if self.mode.startswith("single:") else None

    @property
    def upper(self) -> float:
        """The per-teacher weight cap u used in adaptive mode."""
        return tolerance_upper(self.tolerance, max(1, len(self.teacher_names)))

    def _require(self, losses: Mapping[str, torch.Tensor], names: Sequence[str]) -> None:
        """Raise ValueError when a needed teacher loss is missing."""
        missing = [n for n in names if n not in losses]
        if missing:
            raise ValueError(f"missing losses for teachers: {', '.join(missing)}")

    @property
    def needs_errors(self) -> bool:
        """Whether `combine` needs the teachers' per-sample errors against the ground truth."""
        return self.mode in _NEEDS_ERRORS

    def combine(
        self, losses: Mapping[str, torch.Tensor], wrt: torch.Tensor | Sequence[torch.Tensor],
        teacher_errors: Mapping[str, torch.Tensor] | None = None, active: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return (weighted loss, weights by teacher name); wrt is the student tensor(s) the gradients are taken at.
        `active` restricts the combination to some teachers (the others get weight 0, e.g. a teacher that failed
        the health check)."""
        names = [n for n in self.teacher_names if active is None or n in active]
        zero = {n: 0.0 for n in self.teacher_names}
        if self.mode == "none" or not names:
            first = _as_list(wrt)[0]
            return first.sum() * 0.0, zero
        if self.single is not None:
            self._require(losses, [self.single])
            return _mean(losses[self.single]), {**zero, self.single: 1.0}
        self._require(losses, names)
        ordered = [losses[n] for n in names]
        if self.mode == "equal":
            w = 1.0 / len(names)
            return sum(w * _mean(loss) for loss in ordered), {**zero, **{n: w for n in names}}  # type: ignore
        if self.mode == "adaptive":
            total, alpha = adaptive_combine([_mean(x) for x in ordered], wrt, self.tolerance)
            return total, {**zero, **{n: float(a) for n, a in zip(names, alpha.tolist())}}
        if teacher_errors is None:
            raise ValueError(f"teacher weighting {self.mode!r} needs the teachers' per-sample errors")
        self._require(teacher_errors, names)
        conf = confidence_weights(torch.stack([teacher_errors[n].reshape(-1) for n in names]))  # (K, B)
        if self.mode == "confidence":
            per_sample = [x if x.dim() > 0 else x.expand(conf.shape[1]) for x in ordered]
            total = sum((c.to(x.device) * x).mean() for c, x in zip(conf, per_sample))
            return total, {**zero, **{n: float(c.mean()) for n, c in zip(names, conf)}}  # type: ignore
        means = [_mean(x) for x in ordered]
        targets = _as_list(wrt)
        grads = torch.stack([_flat_grad(loss, targets) for loss in means])
        w = reliable_weights(grads, conf.mean(dim=1), upper=tolerance_upper(self.tolerance, len(names)))
        total = sum(float(a) * loss for a, loss in zip(w.tolist(), means))
        return total, {**zero, **{n: float(a) for n, a in zip(names, w.tolist())}}  # type: ignore
