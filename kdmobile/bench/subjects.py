"""What the bench measures: a bundle through the torch-free runtime, or a PyTorch teacher/student, as one interface.

Each subject loads its model, times one call per batch through `timing.time_calls`, measures its memory (a fresh
process, or CUDA's allocator) and its task metric; torch is imported only inside the PyTorch subject's methods.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from kdmobile.bench.memory import probe_memory
from kdmobile.bench.settings import Settings
from kdmobile.bench.timing import time_calls
from kdmobile.bundle import Bundle
from kdmobile.console import quiet_open_clip_random_init
from kdmobile.contracts.student import StudentCard, student_card
from kdmobile.targets import TARGETS
from kdmobile.tasks import get_task

if TYPE_CHECKING:
    from kdmobile.rundir import RunDir

MB = 1024.0 * 1024.0
_NOT_QUANTIZED = frozenset({"none", "fp32", "float32", "fp16", "float16"})


def _params_flops(entry: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """Per-input parameters (image tower where recorded) and FLOPs of a metrics.json model entry."""
    if not entry:
        return None, None
    return entry.get("image_params", entry.get("params")), entry.get("flops")


def _metric_from_entry(entry: dict[str, Any] | None, task: str) -> tuple[str | None, float | None]:
    """The headline metric of a metrics.json entry: top1, R@1 (mean of both directions) or mse."""
    return get_task(task).headline(entry) if entry else (None, None)


def _path_size(p: Path) -> int | None:
    """Bytes of a file, or of every file under a directory (an .mlpackage)."""
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def _tile(x: np.ndarray, batch: int) -> np.ndarray:
    """`batch` samples cycled from x (held-out inputs, not random ones)."""
    return np.ascontiguousarray(x[np.arange(batch) % len(x)])


@dataclass
class Subject(abc.ABC):
    """One model to measure and the row fields that describe it."""

    model: str
    role: str
    run: RunDir | None
    backend: str
    device: str
    precision: str
    source: str
    size_bytes: int | None
    params: int | None
    flops: int | None
    quantization: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "role": self.role, "run": self.run.name if self.run else None,
                "source": self.source, "backend": self.backend, "device": self.device, "precision": self.precision,
                "quantization": self.quantization, "size_bytes": self.size_bytes, "params": self.params,
                "flops": self.flops}

    # Each kind of measured model (bundle, PyTorch teacher, PyTorch student) implements these.
    @abc.abstractmethod
    def probe_spec(self, settings: Settings) -> dict[str, Any]:
        """What a fresh process needs to load and run this model once (for the memory probe)."""

    @abc.abstractmethod
    def load(self, settings: Settings) -> None:
        """Load the model in this process and run it once at the largest batch."""

    @abc.abstractmethod
    def timed(self, batch: int, settings: Settings) -> tuple[list[float], str, int]:
        """(per-call ms samples, batch mode, warm-up runs done) at this batch."""

    @abc.abstractmethod
    def metric(self) -> tuple[str | None, float | None, str]:
        """(metric name, value, where it comes from)."""

    def memory(self, settings: Settings) -> dict[str, float | None]:
        """Peak resident growth (MB) while loading and running once at the largest batch, in a fresh process
        (so one model's number does not depend on what this process loaded before it)."""
        grown = probe_memory(self.probe_spec(settings))
        return {"peak_rss_mb": None if grown is None else grown / MB, "peak_gpu_mb": None}

    def close(self) -> None:
        """Drop the loaded model."""


class BundleSubject(Subject):
    """A bundle run by the runtime backend of its target; metric from the runtime predictors on held-out data."""

    def __init__(self, bundle: Bundle, run: RunDir | None) -> None:
        source = bundle.manifest.get("source") or {}
        model = source.get("model") if isinstance(source.get("model"), str) else "student"
        params, flops = _params_flops(run.entry(model) if run else None)
        quant = (bundle.manifest.get("quantization") or {}).get("format")
        quant = None if str(quant).lower() in _NOT_QUANTIZED else str(quant)
        source_run = source.get("run_name")
        role = "student" if model == "student" else "teacher"  # a forecast teacher exported with --model
        super().__init__(bundle.name, role, run, TARGETS[bundle.target].backend, "cpu",
                         bundle.precision, str(bundle.path), _path_size(bundle.model_path), params, flops,
                         quant)
        self.bundle = bundle
        self.run_name = run.name if run else source_run
        self.predictor: Any = None
        self.inputs: np.ndarray | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "run": self.run_name}

    def _raw_inputs(self) -> Any:
        """Held-out inputs in the predictor's raw units (uint8 images / physical frames), or random ones."""
        if self.run is not None and self.run.has_heldout() and get_task(self.run.task).head == self.bundle.head:
            found = get_task(self.run.task).bench_inputs(self.bundle, self.run.heldout())
            if found is not None:
                return found
        return self.predictor.random_inputs(8)

    def load(self, settings: Settings) -> None:
        from kdmobile.runtime.predictors import open_predictor

        self.predictor = open_predictor(self.bundle, threads=settings.threads)
        self.inputs = self.predictor.model_inputs(self._raw_inputs()[:max(settings.batches)])
        self._call(max(settings.batches))()

    def probe_spec(self, settings: Settings) -> dict[str, Any]:
        from kdmobile.signing import trust_pems

        return {"kind": "bundle", "path": str(self.bundle.path), "threads": settings.threads,
                "batch": max(settings.batches), "trust": trust_pems(self.bundle.trust)}

    def _call(self, batch: int) -> Callable[[], Any]:
        """One timed call: the model on `batch` preprocessed inputs (a loop of batch-1 calls if the batch is fixed)."""
        backend, name = self.predictor.backend, self.predictor.input_name
        x = _tile(self.inputs, batch)
        if self.predictor.batched or batch == 1:
            return lambda: backend.run({name: x})
        parts = [x[i:i + 1] for i in range(batch)]
        return lambda: [backend.run({name: p}) for p in parts]

    def timed(self, batch: int, settings: Settings) -> tuple[list[float], str, int]:
        samples, warm = time_calls(self._call(batch), settings)
        return samples, "batched" if self.predictor.batched or batch == 1 else "loop", warm

    def metric(self) -> tuple[str | None, float | None, str]:
        if self.run is None or not self.run.has_heldout():
            return self._verification_metric("run directory not found")
        return get_task(self.run.task).score_bundle(self.bundle, self.predictor, self.run.heldout())

    def _verification_metric(self, why: str) -> tuple[str | None, float | None, str]:
        """Without the run: the metric measured at export, recorded in the manifest."""
        v = (self.bundle.manifest.get("verification") or {}).get("metric") or {}
        name = v.get("name")
        if name is None or "value" not in v:
            return None, None, f"n/a ({why})"
        if name == "mse":  # the manifest's headline MSE is in normalised units; report physical units
            value = (v.get("all") or {}).get("mse_phys")
            return ("mse", value, f"export verification ({why})") if value is not None else (None, None, "n/a")
        return name, v["value"], f"export verification ({why})"

    def close(self) -> None:
        self.predictor = None
        self.inputs = None


class TorchSubject(Subject):
    """A PyTorch model (a teacher, or a student without bundles) on CPU or CUDA."""

    def __init__(self, model: str, role: str, run: RunDir, file: Path, device: str, kind: str,
                 params: int | None, flops: int | None) -> None:
        super().__init__(model, role, run, "torch eager", device, "fp32", str(file), _path_size(file), params, flops)
        self.file, self.model_kind = file, kind   # how to load it: clip-teacher | forecaster | student
        self.module: Any = None
        self.forward: Callable[[Any], Any] | None = None
        self.inputs: Any = None
        self._threads: int | None = None
        self.card: StudentCard | None = None  # a student's card once loaded (its input normalisation)

    def probe_spec(self, settings: Settings) -> dict[str, Any]:
        shape = [max(settings.batches), *self._model_inputs().shape[1:]]
        return {"kind": "torch", "file": self.file.as_posix(), "model_kind": self.model_kind, "threads": settings.threads,
                "shape": shape, "method": self.run.method}

    def _model_inputs(self) -> np.ndarray:
        """Held-out model inputs: normalised images (N,3,S,S) or normalised frame windows (N,T,H,W)."""
        return get_task(self.run.task).torch_inputs(self.run.heldout(), self.card)

    def load(self, settings: Settings) -> None:
        import torch

        if self.device == "cpu":
            self._threads = torch.get_num_threads()
            torch.set_num_threads(settings.threads)
        self.module, self.forward, self.card = _load_torch(self.file, self.model_kind, self.device, self.run.method)
        self.inputs = torch.from_numpy(_tile(self._model_inputs(), max(settings.batches))).to(self.device)
        self._call(max(settings.batches))()
        self._sync()

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def memory(self, settings: Settings) -> dict[str, float | None]:
        if self.device != "cuda":
            return super().memory(settings)
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.load(settings)
        grown = (torch.cuda.max_memory_allocated() - base) / MB
        self.close()
        return {"peak_rss_mb": None, "peak_gpu_mb": grown}

    def _call(self, batch: int) -> Callable[[], Any]:
        import torch

        x, fwd = self.inputs[:batch], self.forward

        def call() -> Any:
            with torch.inference_mode():
                return fwd(x)

        return call

    def timed(self, batch: int, settings: Settings) -> tuple[list[float], str, int]:
        samples, warm = time_calls(self._call(batch), settings, cuda=self.device == "cuda")
        return samples, "batched", warm

    def metric(self) -> tuple[str | None, float | None, str]:
        task = self.run.task
        if self.role in ("teacher", "baseline"):  # measured in training, on the same split
            key = self.model.split("/", 1)[1]
            name, value = _metric_from_entry(self.run.entry(key), task)
            n = self.run.test_size()
            src = f"run metrics.json (same split, N={n})" if value is not None else "n/a (not in metrics.json)"
            return name, value, src
        # the un-exported student, measured here in PyTorch on the held-out split
        return get_task(task).score_torch(self.module, self.run, self.card, self.device)

    def close(self) -> None:
        self.module = self.forward = self.inputs = None
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def _load_torch(file: str | Path, kind: str, device: str,
                method: str) -> tuple[Any, Callable[[Any], Any], StudentCard | None]:
    """(module, forward, student card) of a teacher or student file on `device`; the forward runs per input; a
    teacher has no card (CLIP models are fed CLIP's normalisation)."""
    if kind == "clip-teacher":
        from kdmobile.models.clip_teacher import load_teacher

        with quiet_open_clip_random_init():  # open_clip warns that it built the model without pretrained weights
            teacher = load_teacher(file).to(device)
        return teacher, teacher.encode_image, None
    from kdmobile.models.registry import load_model

    model, extra = load_model(file)
    model = model.to(device).eval()
    return model, model, student_card(extra, method, str(file))


