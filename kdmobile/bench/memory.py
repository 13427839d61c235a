"""Peak-memory probe in a fresh process, so one model's number does not depend on what the bench loaded before it.

`python -m kdmobile.bench.memory --memory-probe JSON` loads one bundle or checkpoint, runs it once and prints
{"peak_rss_bytes": N}; `probe_memory` starts it and reads that line.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any, Sequence

import numpy as np

from kdmobile.bundle import load_bundle
from kdmobile.runtime.measure import measure_peak_rss
from kdmobile.targets import TARGETS



def probe_memory(spec: dict[str, Any], timeout_s: float = 600.0) -> int | None:
    """Run `python -m kdmobile.bench.memory --memory-probe SPEC` and return its peak RSS growth in bytes (None and a
    warning on stderr if the probe fails)."""
    import subprocess

    cmd = [sys.executable, "-m", "kdmobile.bench.memory", "--memory-probe", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            return int(json.loads(lines[-1])["peak_rss_bytes"])
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        why = f"{type(e).__name__}: {e}"
    print(f"kdmobile: warning: memory probe failed for {spec.get('path') or spec.get('file')}: {why}",
          file=sys.stderr)
    return None


def _probe_bundle(spec: dict[str, Any]) -> int:
    """In the probe process: peak RSS growth while opening a bundle and running it once on zeros."""
    from kdmobile.runtime.predictors import open_predictor  # (and the backends module) before the baseline

    from kdmobile.signing import trust_of_pems

    bundle = load_bundle(spec["path"], trust_of_pems(spec.get("trust") or []))  # the keys bench was given
    target = TARGETS.get(bundle.target)  # its runtime is imported before the baseline: not the model's memory
    for module in target.preload if target else ():
        try:
            importlib.import_module(module)
            break
        except ImportError:
            continue
    batch = int(spec["batch"])

    def run() -> Any:
        pred = open_predictor(bundle, threads=int(spec["threads"]))
        x = np.zeros([batch, *bundle.input["shape"][1:]], dtype=np.float32)
        if pred.batched or batch == 1:
            return pred, pred.backend.run({pred.input_name: x})
        return pred, [pred.backend.run({pred.input_name: x[i:i + 1]}) for i in range(batch)]

    return measure_peak_rss(run)


def _probe_onnx(spec: dict[str, Any]) -> int:
    """In the probe process: peak RSS growth while opening an ONNX model (a teacher bench exported) and running it
    once on zeros, onnxruntime imported before the baseline as for bundles."""
    import onnxruntime  # noqa: F401

    from kdmobile.bench.towers import run_onnx
    from kdmobile.runtime.backends import OnnxBackend

    def run() -> Any:
        backend = OnnxBackend(spec["path"], threads=int(spec["threads"]))
        return backend, run_onnx(backend, np.zeros(spec["shape"], dtype=np.float32))

    return measure_peak_rss(run)


def _probe_torch(spec: dict[str, Any]) -> int:
    """In the probe process: peak RSS growth while loading a checkpoint and running it once on zeros (CPU)."""
    import torch

    from kdmobile.bench.subjects import _load_torch
    from kdmobile.models import forecasters, registry, student  # noqa: F401  (imported before the baseline)
    if spec["model_kind"] == "clip-teacher":
        import open_clip  # noqa: F401

        from kdmobile.models import clip_teacher  # noqa: F401
    torch.set_num_threads(int(spec["threads"]))

    def run() -> Any:
        module, forward, _ = _load_torch(spec["file"], spec["model_kind"], "cpu", spec["method"])
        with torch.inference_mode():
            return module, forward(torch.zeros(spec["shape"]))

    return measure_peak_rss(run)


def _probe_main(argv: Sequence[str]) -> int:
    """Entry point of the memory probe: prints {"peak_rss_bytes": N} as the last line."""
    if len(argv) != 2 or argv[0] != "--memory-probe":
        print("usage: python -m kdmobile.bench.memory --memory-probe JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    probes = {"bundle": _probe_bundle, "onnx": _probe_onnx, "torch": _probe_torch}
    grown = probes[spec["kind"]](spec)
    print(json.dumps({"peak_rss_bytes": int(grown)}))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
