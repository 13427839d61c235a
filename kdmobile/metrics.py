"""Task metrics in NumPy, so training, export verification and the torch-free runtime score models alike."""

from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (percent) of (N,K) scores against integer labels; k is capped at K."""
    order = np.argsort(-scores, axis=1)
    out = {}
    for k in ks:
        hit = (order[:, : min(k, scores.shape[1])] == labels[:, None]).any(axis=1)
        out[f"top{k}"] = float(hit.mean() * 100.0)
    return out


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_owner: np.ndarray,
                     ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (percent) image->text and text->image; `text_owner[j]` is the image index caption j describes."""
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
    """MSE, MAE and relative L2 of forecasts (N,T,H,W) in physical units."""
    diff = pred - target
    rel = np.linalg.norm(diff.reshape(len(diff), -1), axis=1) / np.maximum(
        np.linalg.norm(target.reshape(len(target), -1), axis=1), 1e-12)
    return {"mse": float(np.mean(diff**2)), "mae": float(np.mean(np.abs(diff))), "rel_l2": float(rel.mean())}
