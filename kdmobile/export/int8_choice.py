"""Which ONNX int8 format to ship: measured on the export host (`--int8-format auto`), or a preset for another
machine (`--int8-for`). Whether activation-int8 pays depends on the backbone and the CPU (ReLU networks gained
1.25-2.8x from u8s8 on one AVX-512 VNNI host while the hard-swish MobileNetV3 lost), so no rule fits every host:
`auto` builds each candidate, times it against fp32 side by side, and keeps the fastest whose outputs stay close to
fp32's. Export verification then checks the task metric of what was kept, as for every artifact. The same
measurement chooses TFLite's int8 recipe (dynamic-range or static) when calibration data is there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

CANDIDATES = ("w8a32", "u8s8", "s8s8", "dynamic")  # w8a32 first: fp32 speed by construction, the safe fallback
CANDIDATE_MIN_COSINE = 0.99       # a candidate whose mean output cosine vs fp32 falls below this is not considered
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


def one_thread_session(path: Path) -> Any:
    """A one-thread onnxruntime CPU session (the bench's setting: batch 1, one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.mean((a * b).sum(1) / den))


Runner = Callable[[np.ndarray], np.ndarray]  # one model: a batch in, its first output out


def time_side_by_side(runners: dict[str, Runner], x: np.ndarray, rounds: int = ROUNDS,
                      calls: int = CALLS) -> dict[str, float]:
    """p50 ms per model over `rounds` interleaved rounds of `calls` calls on `x` (after a warm-up of each), so a
    slow moment of the machine hits every model alike."""
    from kdmobile.runtime.measure import time_callable

    samples: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(rounds):
        for key, run in runners.items():
            samples[key] += time_callable(lambda f=run: f(x), 5 if r == 0 else 1, calls)
    return {k: float(np.median(v)) for k, v in samples.items()}


def measure_candidates(runners: dict[str, Runner], x: np.ndarray, parity: list[np.ndarray],
                       sizes: dict[str, int], fallback: str, runtime: str) -> tuple[str, dict[str, Any]]:
    """Time every candidate side by side with runners["fp32"] and keep the fastest whose mean output cosine vs
    fp32 on the `parity` inputs is >= CANDIDATE_MIN_COSINE (else `fallback`); returns (candidate, manifest facts)."""
    from kdmobile.runtime.measure import host_info

    ref = np.concatenate([runners["fp32"](p) for p in parity])
    p50 = time_side_by_side(runners, x)
    table = {k: {"p50_ms": p50[k], "speedup_vs_fp32": p50["fp32"] / p50[k],
                 "mean_cosine_vs_fp32": _cosine(np.concatenate([run(p) for p in parity]), ref),
                 "size_bytes": sizes[k]} for k, run in runners.items() if k != "fp32"}
    ok = [k for k in table if table[k]["mean_cosine_vs_fp32"] >= CANDIDATE_MIN_COSINE]
    chosen = min(ok or [fallback], key=lambda k: table[k]["p50_ms"])
    host = host_info()
    slower = " (slower than fp32 here: int8 pays in size only)" if table[chosen]["speedup_vs_fp32"] < 1 else ""
    return chosen, {"requested": "auto", "chosen_by": "measurement on the export host", "cpu": host.get("cpu"),
                    "machine": host.get("machine"), "isa": host.get("isa"), "fp32_p50_ms": p50["fp32"],
                    "candidates": table, "timing": f"{runtime}, 1 thread, {ROUNDS} interleaved rounds x {CALLS}",
                    "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                    "reason": f"fastest candidate with output cosine >= {CANDIDATE_MIN_COSINE} vs fp32: {chosen} "
                              f"({table[chosen]['speedup_vs_fp32']:.2f}x fp32){slower}"}


def choose_by_measurement(fp32: Path, out: Path, calibration: np.ndarray | None, input_name: str, workdir: Path,
                          quantize: Quantize) -> tuple[str, dict[str, Any]]:
    """ONNX: build every candidate format, measure them (measure_candidates, onnxruntime, batch 1) and copy the one
    kept to `out`; returns (format, manifest facts)."""
    static_ok = calibration is not None and len(calibration) > 0
    built: dict[str, dict[str, Any]] = {}
    for fmt in CANDIDATES:
        if fmt in ("u8s8", "s8s8") and not static_ok:
            continue
        (workdir / fmt).mkdir()
        built[fmt] = quantize(fp32, workdir / fmt / "model.onnx", fmt)
    paths = {"fp32": fp32, **{f: workdir / f / "model.onnx" for f in built}}
    sessions = {k: one_thread_session(p) for k, p in paths.items()}
    runners = {k: (lambda x, s=s: s.run(None, {input_name: x})[0]) for k, s in sessions.items()}
    x = np.ascontiguousarray(calibration[:1] if static_ok else _zeros(sessions["fp32"]), dtype=np.float32)
    parity = [np.ascontiguousarray(c[None], dtype=np.float32) for c in calibration[:PARITY_SAMPLES]] \
        if static_ok else [x]
    chosen, facts = measure_candidates(runners, x, parity, {k: p.stat().st_size for k, p in paths.items()}, "w8a32",
                                       "onnxruntime, batch 1")
    shutil.copyfile(paths[chosen], out)
    return chosen, {**facts, **built[chosen]}


def choose_tflite_recipe(float_bytes: bytes, build: Callable[[str], bytes], batches: list[np.ndarray],
                         workdir: Path) -> tuple[str, bytes, dict[str, Any]]:
    """TFLite: build the dynamic-range and static int8 models, measure them against the float model in LiteRT
    (the model's own fixed batch) and keep the fastest close to fp32 (dynamic if neither is); returns
    (recipe kind, model bytes, manifest facts)."""
    from kdmobile.runtime.backends import LiteRTBackend

    models = {"fp32": float_bytes, "dynamic": build("dynamic"), "static": build("static")}
    runners: dict[str, Runner] = {}
    for kind, data in models.items():
        path = workdir / f"{kind}.tflite"
        path.write_bytes(data)
        backend = LiteRTBackend(path, threads=1)
        runners[kind] = lambda x, b=backend: b.run({b.input_names[0]: x})[0]
    chosen, facts = measure_candidates(runners, batches[0], batches[:PARITY_SAMPLES],
                                       {k: len(v) for k, v in models.items()}, "dynamic", "LiteRT (XNNPACK)")
    return chosen, models[chosen], facts


def _zeros(session: Any) -> np.ndarray:
    """A batch-1 zero input of the session's shape (no calibration data: only dynamic and w8a32 are built)."""
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in session.get_inputs()[0].shape]
    return np.zeros(shape, np.float32)
