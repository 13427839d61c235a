"""One evaluator per task over any backend: training, export verification and bench all score a model here.

A model is anything that maps a batch of model inputs to outputs (`Infer`): a PyTorch module wrapped by
`kdmobile.runtime.backends.TorchBackend`, an onnxruntime / LiteRT / CoreML backend, or a runtime predictor. The
evaluator batches the inputs, runs the model and computes the task's metrics with `kdmobile.metrics` (NumPy), so a
metric has one definition and one headline whichever runtime produced the numbers. No torch import here.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kdmobile.metrics import forecast_errors, retrieval_recall, topk_accuracy

Infer = Callable[[np.ndarray], np.ndarray]
LOWER_IS_BETTER = {"mse"}


def infer_batched(infer: Infer, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Run `infer` over x in batches; float32 outputs concatenated."""
    outs = [np.asarray(infer(np.ascontiguousarray(x[i:i + batch])), dtype=np.float32) for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def backend_infer(backend: Any, input_name: str | None = None) -> Infer:
    """An `Infer` over a runtime backend (anything with `run({name: x}) -> [outputs]`), first output."""
    name = input_name or backend.input_names[0]
    return lambda x: backend.run({name: x})[0]


def score_classes(embeddings: np.ndarray, class_vectors: np.ndarray, labels: np.ndarray,
                  logit_scale: float = 1.0) -> dict[str, float]:
    """Top-1/top-5 (percent) of image embeddings against class vectors (scaled cosine logits)."""
    return topk_accuracy(logit_scale * embeddings @ class_vectors.T, np.asarray(labels))


def score_captions(embeddings: np.ndarray, text_vectors: np.ndarray, owner: np.ndarray) -> dict[str, float]:
    """Recall@1/5/10 both directions (percent) and the headline R@1, the mean of the two directions."""
    rec = retrieval_recall(embeddings, text_vectors, np.asarray(owner))
    rec["R@1"] = 0.5 * (rec["i2t_R@1"] + rec["t2i_R@1"])
    return rec


def score_forecast(pred_norm: np.ndarray, y_norm: np.ndarray, mean: float, std: float) -> dict[str, float]:
    """MSE in normalised units (the headline: what training minimises) plus physical-unit MSE, MAE, relative L2."""
    phys = forecast_errors(pred_norm * std + mean, y_norm * std + mean)
    return {"mse": float(np.mean((pred_norm - y_norm) ** 2)), "mse_phys": phys["mse"], "mae_phys": phys["mae"],
            "rel_l2": phys["rel_l2"]}


def evaluate_retrieval(infer: Infer, model_inputs: np.ndarray, gallery: np.ndarray, *,
                       labels: np.ndarray | None = None, owner: np.ndarray | None = None,
                       logit_scale: float = 1.0) -> tuple[np.ndarray, dict[str, float]]:
    """(embeddings, metrics) of an image encoder: classes when `labels` are given, captions when `owner` is."""
    emb = infer_batched(infer, model_inputs)
    if owner is not None:
        return emb, score_captions(emb, gallery, owner)
    if labels is not None:
        return emb, score_classes(emb, gallery, labels, logit_scale)
    return emb, {}


def evaluate_forecast(infer: Infer, x_norm: np.ndarray, y_norm: np.ndarray, mean: float,
                      std: float) -> tuple[np.ndarray, dict[str, float]]:
    """(normalised forecasts, metrics) of a forecaster on normalised windows."""
    pred = infer_batched(infer, x_norm)
    return pred, score_forecast(pred, y_norm, mean, std)
