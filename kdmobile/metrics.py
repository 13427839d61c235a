"""Task metrics in NumPy, so training, export verification and the torch-free runtime score models alike."""

from __future__ import annotations

import numpy as np

from kdmobile.errors import UserError


def are_indices(a: np.ndarray, n: int) -> bool:
    """Whether `a` holds integers in [0, n) (labels of n classes, owners among n images)."""
    return a.dtype.kind in "iu" and (a.size == 0 or (int(a.min()) >= 0 and int(a.max()) < n))


def _in_range(index: np.ndarray, n: int, what: str) -> np.ndarray:
    """Integer indices in [0, n), or a one-line error: an out-of-range label would silently score as a miss."""
    index = np.asarray(index)
    if not are_indices(index, n):
        raise UserError(f"{what} outside 0..{n - 1} (the held-out data does not belong to these {n} entries)")
    return index


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (percent) of (N,K) scores against integer labels; k is capped at K."""
    labels = _in_range(labels, scores.shape[1], "class labels")
    order = np.argsort(-scores, axis=1)
    out = {}
    for k in ks:
        hit = (order[:, : min(k, scores.shape[1])] == labels[:, None]).any(axis=1)
        out[f"top{k}"] = float(hit.mean() * 100.0)
    return out


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_owner: np.ndarray,
                     ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (percent) image->text and text->image; `text_owner[j]` is the image index caption j describes."""
    text_owner = _in_range(text_owner, len(image_emb), "caption owners")
    sims = image_emb @ text_emb.T
    out = {}
    i2t = np.argsort(-sims, axis=1)
    t2i = np.argsort(-sims.T, axis=1)
    for k in ks:
        owners = text_owner[i2t[:, :k]]
        out[f"i2t_R@{k}"] = float((owners == np.arange(len(image_emb))[:, None]).any(axis=1).mean() * 100.0)
        out[f"t2i_R@{k}"] = float((t2i[:, :k] == text_owner[:, None]).any(axis=1).mean() * 100.0)
    return out


def forecast_errors(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE, MAE and relative L2 of forecasts (N,T,H,W) in physical units.

    rel_l2 is FNO's metric: per sample, ||pred - true||_2 / ||true||_2 over its whole forecast (all steps and
    pixels), then the mean over samples."""
    diff = pred - target
    rel = np.linalg.norm(diff.reshape(len(diff), -1), axis=1) / np.maximum(
        np.linalg.norm(target.reshape(len(target), -1), axis=1), 1e-12)
    return {"mse": float(np.mean(diff**2)), "mae": float(np.mean(np.abs(diff))), "rel_l2": float(rel.mean())}


def ssim(pred: np.ndarray, target: np.ndarray, window: int = 7) -> float:
    """Mean structural similarity over frames (..., H, W), uniform window, data range of the target."""
    from scipy.ndimage import uniform_filter

    p = pred.reshape(-1, *pred.shape[-2:]).astype(np.float64)
    t = target.reshape(-1, *target.shape[-2:]).astype(np.float64)
    rng = float(t.max() - t.min()) or 1.0
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    size = (1, window, window)
    mp, mt = uniform_filter(p, size, mode="wrap"), uniform_filter(t, size, mode="wrap")
    vp = uniform_filter(p * p, size, mode="wrap") - mp**2
    vt = uniform_filter(t * t, size, mode="wrap") - mt**2
    cov = uniform_filter(p * t, size, mode="wrap") - mp * mt
    s = ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp**2 + mt**2 + c1) * (vp + vt + c2))
    return float(s.mean())


def per_step_mse(pred: np.ndarray, target: np.ndarray) -> list[float]:
    """MSE at each forecast step (axis 1) of (N,T,H,W) arrays: how error grows with the horizon."""
    return [float(v) for v in ((pred - target) ** 2).mean(axis=(0, 2, 3))]


def per_step_rel_l2(pred: np.ndarray, target: np.ndarray) -> list[float]:
    """Relative L2 ||pred - true|| / ||true|| of each forecast step (axis 1) per sample, averaged over samples."""
    diff = (pred - target).astype(np.float64)
    num = np.sqrt((diff**2).sum(axis=(2, 3)))
    den = np.maximum(np.sqrt((target.astype(np.float64) ** 2).sum(axis=(2, 3))), 1e-12)
    return [float(v) for v in (num / den).mean(axis=0)]
