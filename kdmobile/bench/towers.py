"""Teachers timed in the students' runtime: `kdmobile bench RUN` exports each teacher's model (a CLIP image tower,
a forecaster) to ONNX once, caches it in RUN/towers/ (not shipped), checks it against PyTorch on held-out inputs as
export checks a student bundle, and times it in onnxruntime beside the ONNX students, so their speed-up column is a
ratio within one runtime. The PyTorch-eager teacher rows stay, labelled by their backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from kdmobile.bench.settings import Settings
from kdmobile.bench.subjects import Subject, _load_torch, _metric_from_entry, _path_size, _tile
from kdmobile.bench.timing import time_calls
from kdmobile.errors import KDError
from kdmobile.fileio import atomic_path, sha256_file, write_json
from kdmobile.rundir import TOWERS_DIR, RunDir
from kdmobile.tasks import get_task
from kdmobile.untrusted import read_json

BACKEND = "onnxruntime"
PARITY_SAMPLES = 16
MIN_COSINE = 0.999  # an fp32 export of the same weights: anything lower is a broken export, not rounding


def _wrap(module: Any, forward: Callable[[Any], Any]) -> Any:
    """An nn.Module whose forward is `forward` (a teacher's encode_image), for torch.onnx.export."""
    from torch import nn

    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: Any) -> Any:
            return forward(x)

    return Tower().eval()


def run_onnx(backend: Any, x: np.ndarray) -> np.ndarray:
    """The model's output on x: one call, or one per sample when the export fixed the batch at 1 (a traced
    reshape can bake it in)."""
    if backend.input_shapes.get("input", (None,))[0] == 1 and len(x) > 1:
        return np.concatenate([backend.run({"input": x[i:i + 1]})[0] for i in range(len(x))])
    return backend.run({"input": x})[0]


def build_tower(run: RunDir, file: Path, model_kind: str, log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """RUN/towers/NAME.onnx for teacher file `file`, rebuilt when the teacher file or the input shape changed; with
    its parity against PyTorch (min cosine, max |diff| on held-out inputs). KDError when the export is not close."""
    import torch

    from kdmobile.export.conversion import quiet_native_output
    from kdmobile.export.onnx import export_fp32, optimize
    from kdmobile.export.verify import parity
    from kdmobile.runtime.backends import OnnxBackend

    x = get_task(run.task).torch_inputs(run.heldout(), None)[:PARITY_SAMPLES].astype(np.float32)
    path = run.path / TOWERS_DIR / f"{file.stem}.onnx"
    info_path = path.with_suffix(".json")
    digest = sha256_file(file)
    try:
        info = read_json(info_path) if info_path.is_file() and path.is_file() else None
    except (KDError, OSError):
        info = None
    if not (isinstance(info, dict) and info.get("teacher_sha256") == digest
            and info.get("input_shape") == [1, *x.shape[1:]]):
        log(f"bench: exporting teacher {file.stem} to ONNX to time it in onnxruntime (cached in {path.parent})")
        module, forward, _ = _load_torch(file, model_kind, "cpu", run.method)
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = path.with_suffix(".raw.onnx")
        try:
            # the dynamo exporter's progress lines; the TorchScript exporter's IR dump when it falls back to dynamo
            with quiet_native_output():
                exporter = export_fp32(_wrap(module, forward), torch.from_numpy(x[:1]), raw, "input", "output")
            with atomic_path(path) as tmp:
                optimize(raw, tmp)
        finally:
            raw.unlink(missing_ok=True)
        with torch.inference_mode():
            ref = forward(torch.from_numpy(x)).float().numpy()
        out = run_onnx(OnnxBackend(path, threads=1), x)
        par = parity(out, ref)  # export verification's own comparison
        info = {"teacher_sha256": digest, "input_shape": [1, *x.shape[1:]], "exporter": exporter,
                "parity": {"samples": len(x), "min_cosine": par["min_cosine"], "max_abs_diff": par["max_abs_diff"]}}
        write_json(info_path, info)
    if not info["parity"]["min_cosine"] >= MIN_COSINE:
        raise KDError(f"{path.name}: ONNX export of teacher {file.stem} differs from PyTorch (min cosine "
                      f"{info['parity']['min_cosine']:.4f} < {MIN_COSINE})")
    return path, info


class TowerSubject(Subject):
    """A run's teacher exported to ONNX (RUN/towers/), timed in onnxruntime; its metric is the run's record."""

    def __init__(self, run: RunDir, key: str, path: Path, info: dict[str, Any], params: int | None,
                 flops: int | None) -> None:
        p = info["parity"]
        super().__init__(f"{run.name}/{key}", "teacher", run, BACKEND, "cpu", "fp32",
                         f"{path.parent.name}/{path.name} (exported by bench, not shipped; min cosine "
                         f"{p['min_cosine']:.6f} vs PyTorch on {p['samples']} held-out inputs)",
                         _path_size(path), params, flops)
        self.key, self.path = key, path
        self.backend_: Any = None
        self.inputs: np.ndarray | None = None

    def probe_spec(self, settings: Settings) -> dict[str, Any]:
        shape = [max(settings.batches), *self._inputs()[0].shape]
        return {"kind": "onnx", "path": str(self.path), "threads": settings.threads, "shape": shape}

    def _inputs(self) -> np.ndarray:
        return get_task(self.run.task).torch_inputs(self.run.heldout(), None).astype(np.float32)

    def load(self, settings: Settings) -> None:
        from kdmobile.runtime.backends import OnnxBackend

        self.backend_ = OnnxBackend(self.path, threads=settings.threads)
        self.inputs = _tile(self._inputs(), max(settings.batches))
        self.backend_.run({"input": self.inputs[:1]})

    def timed(self, batch: int, settings: Settings) -> tuple[list[float], str, int]:
        x = np.ascontiguousarray(self.inputs[:batch])
        samples, warm = time_calls(lambda: run_onnx(self.backend_, x), settings)
        fixed = self.backend_.input_shapes.get("input", (None,))[0] == 1 and batch > 1
        return samples, "loop" if fixed else "batched", warm

    def metric(self) -> tuple[str | None, float | None, str]:
        name, value = _metric_from_entry(self.run.entry(self.key), self.run.task)
        n = self.run.test_size()
        return name, value, (f"run metrics.json (same split, N={n})" if value is not None
                             else "n/a (not in metrics.json)")

    def close(self) -> None:
        self.backend_ = self.inputs = None


def tower_subjects(run: RunDir, teachers: list[tuple[str, Path, str, int | None, int | None]],
                   notes: list[str]) -> list[Subject]:
    """An onnxruntime row per teacher (key, file, model kind, params, flops) whose export succeeds; a note for each
    one that does not (its PyTorch rows remain)."""
    try:
        import onnx  # noqa: F401  (the exporter's dependency)
        import onnxruntime  # noqa: F401
    except ImportError:
        notes.append(f"{run.name}: teachers not timed in onnxruntime (needs onnx and onnxruntime)")
        return []
    out: list[Subject] = []
    for key, file, kind, params, flops in teachers:
        try:
            path, info = build_tower(run, file, kind)
        except (KDError, RuntimeError, OSError) as e:
            notes.append(f"{run.name}/{key}: not timed in onnxruntime ({' '.join(str(e).split())[:200]})")
            continue
        out.append(TowerSubject(run, key, path, info, params, flops))
    return out
