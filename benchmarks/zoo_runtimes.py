"""The student zoo's Pareto models in the phone runtimes: TFLite (LiteRT, XNNPACK) fp32, dynamic-range int8 and static
int8, and ExecuTorch (XNNPACK) fp32 and int8, built by kdmobile's own converters at 224 px from the trained run and
timed interleaved in one process beside the ONNX bundles (1 thread, batch 1). Used by benchmarks/student_zoo.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

# (runtime, precision label) -> how kdmobile builds it; the file name is "<runtime>-<label>"
BUILDS = {("tflite", "fp32"): ("fp32", None), ("tflite", "int8-dynamic"): ("int8", "dynamic"),
          ("tflite", "int8-static"): ("int8", "static"), ("executorch", "fp32"): ("fp32", None),
          ("executorch", "int8"): ("int8", None)}
SUFFIX = {"tflite": ".tflite", "executorch": ".pte"}


def build_files(model: Any, size: int, calib: np.ndarray, out_dir: Path,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert `model` (fused, eval) for every BUILDS entry; returns {"runtime|label": file facts or error}."""
    import torch

    from kdmobile.errors import KDError
    from kdmobile.export.executorch import convert_executorch
    from kdmobile.export.tflite import convert_tflite

    example = torch.zeros(1, 3, size, size)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, bytes] = {}
    files: dict[str, Any] = {}
    for (runtime, label), (precision, recipe) in BUILDS.items():
        path = out_dir / f"{runtime}-{label}{SUFFIX[runtime]}"
        log(f"  {runtime} {label}")
        try:
            if runtime == "tflite":
                info = convert_tflite(model, example, path, precision, calib if precision == "int8" else None,
                                      recipe or "auto", cache=cache)
            else:
                info = convert_executorch(model, example, path, precision, calib if precision == "int8" else None)
            files[f"{runtime}|{label}"] = {"file": str(path), "bytes": path.stat().st_size,
                                           "recipe": info.get("recipe"), "portable_ops": info.get("portable_ops")}
        except KDError as e:  # a converter that cannot build it is a row that says so
            files[f"{runtime}|{label}"] = {"error": str(e)}
    return files


def runner(runtime: str, path: str) -> Callable[[np.ndarray], np.ndarray]:
    """One-thread batch-1 callable of a built file."""
    from kdmobile.runtime.backends import ExecuTorchBackend, LiteRTBackend

    backend = (LiteRTBackend if runtime == "tflite" else ExecuTorchBackend)(path, threads=1)
    name = backend.input_names[0]
    return lambda x: backend.run({name: x})[0]


def time_runtimes(built: dict[str, dict[str, Any]], onnx: dict[str, Path], reference: Path, size: int,
                  rounds: int, calls: int) -> dict[str, Any]:
    """p50 ms of every built file ("backbone|runtime|label"), the backbones' ONNX files ("backbone|onnx|fp32|int8")
    and the ONNX ViT-B/32 reference, interleaved in one process."""
    from kdmobile.export.int8_choice import one_thread_session, time_side_by_side

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    s = one_thread_session(reference)
    runners["ViT-B-32|onnx|fp32"] = lambda x, s=s: s.run(None, {s.get_inputs()[0].name: x})[0]
    for key, path in onnx.items():
        s = one_thread_session(path)
        runners[key] = lambda x, s=s: s.run(None, {s.get_inputs()[0].name: x})[0]
    from kdmobile.errors import KDError

    unloadable: dict[str, str] = {}
    for backbone, files in built.items():
        for key, f in files.items():
            if "file" in f:
                try:
                    runners[f"{backbone}|{key}"] = runner(key.split("|")[0], f["file"])
                except KDError as e:  # built but the runtime refuses it: a row that says so
                    unloadable[f"{backbone}|{key}"] = str(e)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    load = os.getloadavg()[0]
    print(f"timing {len(runners)} runtime files interleaved ({rounds} x {calls}; load {load:.2f})", flush=True)
    p50 = time_side_by_side(runners, x, rounds=rounds, calls=calls)
    return {"p50_ms": p50, "unloadable": unloadable, "load_average": [load, os.getloadavg()[0]],
            "timing": f"1 thread, batch 1, {rounds} interleaved rounds x {calls} calls, p50"}


def rows(timing: dict[str, Any], built: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per backbone, runtime and precision: p50, vs the runtime's own fp32, vs ViT-B/32 (ONNX)."""
    p50, out = timing["p50_ms"], []
    ref = p50["ViT-B-32|onnx|fp32"]
    for key, ms in p50.items():
        backbone, runtime, label = key.split("|")
        if backbone == "ViT-B-32":
            continue
        own = p50.get(f"{backbone}|{runtime}|fp32")
        err = (built.get(backbone) or {}).get(f"{runtime}|{label}", {})
        out.append({"backbone": backbone, "runtime": runtime, "precision": label, "p50_ms": ms,
                    "vs_own_fp32": own / ms if own else None, "vs_vit_b32_onnx": ref / ms,
                    "bytes": err.get("bytes"), "portable_ops": err.get("portable_ops")})
    for backbone, files in built.items():
        for key, f in files.items():
            why = f.get("error") or timing.get("unloadable", {}).get(f"{backbone}|{key}")
            if why:
                runtime, label = key.split("|")
                out.append({"backbone": backbone, "runtime": runtime, "precision": label, "p50_ms": None,
                            "error": why})
    return out
