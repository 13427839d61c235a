"""Which ONNX int8 format to ship: measured on the export host (`--int8-format auto`), or a preset for another
machine (`--int8-for`). Whether activation-int8 pays depends on the backbone and the CPU (ReLU networks gained
1.25-2.8x from u8s8 on one AVX-512 VNNI host while the hard-swish MobileNetV3 lost), so no rule fits every host:
`auto` builds each candidate, times it against fp32 side by side, and keeps the fastest whose outputs stay close to
fp32's. Export verification then checks the task metric of what was kept, as for every artifact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

CANDIDATES = ("w8a32", "u8s8", "s8s8", "dynamic")  # w8a32 first: fp32 speed by construction, the safe fallback
MIN_COSINE = 0.99       # a candidate whose mean output cosine vs fp32 falls below this is not considered
ROUNDS, CALLS = 7, 15   # interleaved rounds x timed calls per model and round (a slow moment hits every model)
PARITY_SAMPLES = 32
# Presets for exporting on one machine for another (no measurement possible there). Rules of thumb from the
# measurements in DESIGN.md and benchmarks/results/int8_onnx_speed.md; measure on the target when you can.
PRESETS: dict[str, tuple[str, str]] = {
    "x86-avx2": ("w8a32", "x86 without VNNI: activation-int8 ran 0.1-0.7x fp32 (s8s8) and 0.3-2.1x (u8s8); "
                          "weight-only int8 keeps fp32 speed"),
    "x86-vnni": ("u8s8", "x86 with VNNI: u8s8 QDQ gained 1.25-2.8x on ReLU backbones at 224 px (hard-swish + SE "
                         "MobileNetV3 lost: 0.77x; measure with auto on such a host)"),
    "arm64": ("s8s8", "ARM64 with dot-product: onnxruntime runs s8s8 QDQ with SDOT (documentation; not measured "
                      "here)"),
    "arm64-nodot": ("u8s8", "ARM64 without dot-product: u8s8 QDQ"),
}

Quantize = Callable[[Path, Path, str], dict[str, Any]]  # (fp32 file, destination, format) -> quantization details


def _session(path: Path) -> Any:
    """A one-thread onnxruntime CPU session (the bench's setting: batch 1, one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.mean((a * b).sum(1) / den))


def _time_side_by_side(sessions: dict[str, Any], name: str, x: np.ndarray) -> dict[str, float]:
    """p50 ms per model over ROUNDS interleaved rounds of CALLS batch-1 calls (after a warm-up of each)."""
    from kdmobile.runtime.measure import time_callable

    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(ROUNDS):
        for key, sess in sessions.items():
            samples[key] += time_callable(lambda s=sess: s.run(None, {name: x}), 5 if r == 0 else 1, CALLS)
    return {k: float(np.median(v)) for k, v in samples.items()}


def choose_by_measurement(fp32: Path, out: Path, calibration: np.ndarray | None, input_name: str, workdir: Path,
                          quantize: Quantize) -> tuple[str, dict[str, Any]]:
    """Build every candidate, time it side by side with fp32 on this host, keep the fastest whose mean output cosine
    vs fp32 (on calibration inputs) is >= MIN_COSINE, copy it to `out`; returns (format, manifest facts)."""
    from kdmobile.runtime.measure import host_info

    static_ok = calibration is not None and len(calibration) > 0
    built: dict[str, dict[str, Any]] = {}
    for fmt in CANDIDATES:
        if fmt in ("u8s8", "s8s8") and not static_ok:
            continue
        (workdir / fmt).mkdir()
        built[fmt] = quantize(fp32, workdir / fmt / "model.onnx", fmt)
    sessions = {"fp32": _session(fp32), **{f: _session(workdir / f / "model.onnx") for f in built}}
    x = np.ascontiguousarray(calibration[:1] if static_ok else _zeros(sessions["fp32"]), dtype=np.float32)
    parity_in = np.ascontiguousarray(calibration[:PARITY_SAMPLES] if static_ok else x, dtype=np.float32)
    ref = np.concatenate([sessions["fp32"].run(None, {input_name: parity_in[i:i + 1]})[0]
                          for i in range(len(parity_in))])
    p50 = _time_side_by_side(sessions, input_name, x)
    table: dict[str, dict[str, Any]] = {}
    for fmt, details in built.items():
        out_f = np.concatenate([sessions[fmt].run(None, {input_name: parity_in[i:i + 1]})[0]
                                for i in range(len(parity_in))])
        table[fmt] = {"p50_ms": p50[fmt], "speedup_vs_fp32": p50["fp32"] / p50[fmt],
                      "mean_cosine_vs_fp32": _cosine(out_f, ref),
                      "size_bytes": (workdir / fmt / "model.onnx").stat().st_size}
    ok = [f for f in table if table[f]["mean_cosine_vs_fp32"] >= MIN_COSINE]
    chosen = min(ok or ["w8a32"], key=lambda f: table[f]["p50_ms"])
    shutil.copyfile(workdir / chosen / "model.onnx", out)
    host = host_info()
    facts = {"requested": "auto", "chosen_by": "measurement on the export host", "cpu": host.get("cpu"),
             "machine": host.get("machine"), "isa": host.get("isa"), "fp32_p50_ms": p50["fp32"],
             "candidates": table, "timing": f"onnxruntime, 1 thread, batch 1, {ROUNDS} interleaved rounds x {CALLS}",
             "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
             "reason": f"fastest candidate with output cosine >= {MIN_COSINE} vs fp32: {chosen} "
                       f"({table[chosen]['speedup_vs_fp32']:.2f}x fp32)"}
    return chosen, {**facts, **built[chosen]}


def _zeros(session: Any) -> np.ndarray:
    """A batch-1 zero input of the session's shape (no calibration data: only dynamic and w8a32 are built)."""
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in session.get_inputs()[0].shape]
    return np.zeros(shape, np.float32)
