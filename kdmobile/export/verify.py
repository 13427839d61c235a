"""Verify exported bundles with the phone-side runtime code: tensor parity vs the fp32 PyTorch student and the task
metric on the run's held-out split, with thresholds that flag a degraded artifact (Optimum-style validation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from kdmobile.bundle import Bundle
from kdmobile.evaluation import backend_infer
from kdmobile.export.options import Thresholds
from kdmobile.table import format_table
from kdmobile.targets import TARGETS, resolve

BROKEN_COSINE = 0.9         # below this the artifact is broken, not merely quantized: always flagged
PREPROCESS_TOL = 1e-3    # max |runtime preprocessing - training preprocessing| before flagging
VERIFY_SAMPLES = 1000  # held-out samples used for parity and metrics (the PyTorch reference uses the same ones)
TABLE_HEADERS = ["target", "precision", "size KB", "max|Δ|", "cosine", "metric", "Δ vs fp32", "status"]


@dataclass
class Reference:
    """Held-out inputs and what the fp32 PyTorch student gives on them (computed once per export)."""

    task: str                      # the data task (kdmobile.tasks): classes | captions | forecast
    inputs: np.ndarray             # what the runtime predictor takes: uint8 (N,S,S,3) images or raw-unit frames
    model_inputs: np.ndarray       # the normalised tensor the student saw
    outputs: np.ndarray            # the student's outputs (embeddings or normalised forecasts)
    metric: dict[str, float] = field(default_factory=dict)
    headline: str | None = None    # the metric that gates: "top1", "R@1" or "mse"; None = parity only
    note: str | None = None        # why there is no metric ("new classes")
    labels: np.ndarray | None = None
    text_vectors: np.ndarray | None = None
    caption_owner: np.ndarray | None = None
    targets: np.ndarray | None = None   # normalised forecast targets
    mean: float = 0.0
    std: float = 1.0


def student_infer(model: Any) -> Any:
    """The PyTorch model as an evaluator model (kdmobile.evaluation), through the runtime's TorchBackend."""
    from kdmobile.runtime.backends import TorchBackend

    return backend_infer(TorchBackend(model))


def verification_index(n: int) -> np.ndarray:
    """Which of n held-out samples verification uses: all up to VERIFY_SAMPLES, else that many evenly spaced (a split
    stored class by class would otherwise be verified on its first classes only)."""
    return np.unique(np.linspace(0, n - 1, min(n, VERIFY_SAMPLES)).round().astype(np.int64))


def parity(y: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max absolute difference and mean per-sample cosine similarity between two output batches."""
    a = y.reshape(len(y), -1).astype(np.float64)
    b = ref.reshape(len(ref), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"max_abs_diff": float(np.max(np.abs(a - b))), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min())}


def _run_bundle(bundle: Bundle, ref: Reference) -> tuple[np.ndarray, dict[str, float], float | None]:
    """Outputs, metric and preprocessing difference from the runtime predictor (the phone-side code), as ref's task
    scores them."""
    from kdmobile.tasks import get_task

    return get_task(ref.task).run_bundle(bundle, ref)


def _judge(ref: Reference, metric: dict[str, float], th: Thresholds) -> tuple[float | None, list[str]]:
    """Delta of the headline metric vs the PyTorch student, and the reasons to flag it (if any)."""
    if ref.headline is None or ref.headline not in metric:
        return None, []
    value, base = metric[ref.headline], ref.metric[ref.headline]
    delta = value - base
    if ref.headline == "mse":
        rel = delta / max(base, 1e-12)
        return delta, [f"mse +{rel * 100:.1f}% > {th.mse * 100:g}%"] if rel > th.mse else []
    return delta, [f"{ref.headline} {delta:+.2f} pts (limit -{th.top1:g})"] if -delta > th.top1 else []


def _not_run_here(bundle: Bundle) -> dict[str, Any]:
    """What verification can say of a bundle this machine cannot run: the target's offline check (CoreML's spec),
    else only the checksums."""
    target = TARGETS[bundle.target]
    where = target.where_it_runs()
    base = {"parity": None, "metric": {"name": None, "note": f"n/a ({target.backend} runs on {where} only)"}}
    if target.offline_check is not None:
        return {**base, **resolve(target.offline_check)(bundle),
                "note": f"{target.backend} runs on {where} only: the model file was checked without running it"}
    return {**base, "flagged": False, "status": f"not run here ({target.backend} runs on {where} only)",
            "note": f"{target.backend} runs on {where} only: checksums checked, the model was not run"}


def verify_bundle(bundle: Bundle, ref: Reference, th: Thresholds) -> dict[str, Any]:
    """Parity and metric of one bundle against the reference; the dict goes to manifest["verification"]."""
    base = {"reference": "fp32 PyTorch student", "samples": int(len(ref.inputs)),
            "thresholds": {"top1_points": th.top1, "mse_relative": th.mse}}
    if not TARGETS[bundle.target].runs_here():  # e.g. CoreML off macOS: check what can be checked here
        return {**base, **_not_run_here(bundle)}
    y, metric, pre_diff = _run_bundle(bundle, ref)
    flags: list[str] = []
    if not np.all(np.isfinite(y)):
        flags.append("non-finite outputs")
    par = parity(y, ref.outputs)
    if par["mean_cosine"] < BROKEN_COSINE:
        flags.append(f"cosine {par['mean_cosine']:.3f} < {BROKEN_COSINE}")
    if pre_diff is not None and pre_diff > PREPROCESS_TOL:
        flags.append(f"runtime preprocessing differs from training by {pre_diff:.2g}")
    delta, metric_flags = _judge(ref, metric, th)
    flags += metric_flags
    result: dict[str, Any] = {**base, "parity": par, "preprocess_max_abs_diff": pre_diff}
    if ref.headline is None:
        result["metric"] = {"name": None, "note": f"n/a ({ref.note})"}
    else:
        result["metric"] = {"name": ref.headline, "value": metric[ref.headline],
                            "reference": ref.metric[ref.headline], "delta": delta, "all": metric,
                            "reference_all": ref.metric}
    result["flagged"] = bool(flags)
    result["status"] = "FLAGGED: " + "; ".join(flags) if flags else (
        "ok" if ref.headline is not None else f"ok (parity only: {ref.note})")
    return result


def verify_random(bundle: Bundle, why: str) -> dict[str, Any]:
    """Without held-out data: checksums (already checked by load_bundle) and a run on random inputs."""
    from kdmobile.runtime.predictors import open_predictor

    base = {"reference": None, "parity": None, "metric": {"name": None, "note": f"n/a ({why})"}}
    if not TARGETS[bundle.target].runs_here():
        return {**base, **_not_run_here(bundle), "metric": base["metric"], "note": f"checksums ok; {why}"}
    pred = open_predictor(bundle)
    x = pred.random_inputs(4)
    y = pred.outputs(x)
    flags = pred.output_problems(y, len(x))
    if not np.all(np.isfinite(y)):
        flags.append("non-finite outputs")
    status = "FLAGGED: " + "; ".join(flags) if flags else f"ran on random inputs only ({why})"
    return {**base, "samples": int(len(x)), "flagged": bool(flags), "status": status,
            "note": f"checksums ok; {why}: no parity or metric, ran {len(x)} random inputs"}


def _fmt_metric(v: dict[str, Any] | None) -> str:
    if not v:
        return "-"
    if v.get("name") is None:
        return str(v.get("note", "n/a"))
    value = v["value"]
    return f"{v['name']} {value:.4g}" if v["name"] == "mse" else f"{v['name']} {value:.2f}"


def _fmt_delta(v: dict[str, Any] | None) -> str:
    if not v or v.get("delta") is None:
        return "-"
    if v["name"] == "mse":
        return f"{v['delta'] / max(v['reference'], 1e-12) * 100:+.1f}%"
    return f"{v['delta']:+.2f}"


def table_row(target: str, precision: str, size_bytes: int | None, result: dict[str, Any]) -> list[Any]:
    """One row of the verification table from a manifest["verification"] dict."""
    par = result.get("parity") or {}
    return [target, precision, None if size_bytes is None else round(size_bytes / 1024, 1),
            None if not par else f"{par['max_abs_diff']:.2e}", None if not par else f"{par['mean_cosine']:.6f}",
            _fmt_metric(result.get("metric")), _fmt_delta(result.get("metric")), result.get("status", "-")]


def reference_row(ref: Reference, size_bytes: int | None) -> list[Any]:
    """The PyTorch fp32 student's row (what every artifact is compared with)."""
    m = {"name": ref.headline, "value": ref.metric.get(ref.headline)} if ref.headline else {"name": None,
                                                                                           "note": f"n/a ({ref.note})"}
    return ["pytorch", "fp32", None if size_bytes is None else round(size_bytes / 1024, 1), "0", "1", _fmt_metric(m),
            "-", "reference"]


def format_results(rows: Sequence[Sequence[Any]]) -> str:
    """The verification table."""
    return format_table(TABLE_HEADERS, rows)
