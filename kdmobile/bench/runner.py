"""Measure bundles, un-exported students and teachers: latency, peak memory, size, parameters, FLOPs, task metric.

Bundles run through the torch-free runtime (the code a phone-side user runs). Teachers, and a student that has no
bundle yet ("torch eager"), run in PyTorch, imported lazily so benchmarking bundles needs no torch.
"""

from __future__ import annotations

import abc
import importlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kdmobile.bundle import MODEL_SUFFIX, PRECISIONS, TARGETS, Bundle, load_bundle
from kdmobile.errors import KDError
from kdmobile.metrics import forecast_errors, retrieval_recall, topk_accuracy
from kdmobile.runtime.measure import host_info, measure_peak_rss, time_callable
from kdmobile.rundir import NOKD_FILE, STUDENT_FILE, WEIGHTS_SUFFIX, read_method, recorded_bundles, require_complete
from kdmobile.untrusted import MAX_LABELS_BYTES, load_npz, read_json

DEFAULT_BUNDLES = "bundles"  # where `kdmobile export` writes bundles unless --out says otherwise

MIN_RUNS = 10  # timed runs kept even when a call is slower than the --max-time budget allows
BACKEND_NAMES = {"onnx": "onnxruntime", "tflite": "litert", "coreml": "coreml"}
_PRELOAD = {"onnx": ("onnxruntime",), "tflite": ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
            "coreml": ("coremltools",)}
MB = 1024.0 * 1024.0
_NOT_QUANTIZED = frozenset({"none", "fp32", "float32", "fp16", "float16"})


# ------------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """How to measure: timed runs, warm-up, batch sizes, threads, torch devices and the per-measurement budget."""

    runs: int = 200
    warmup: int = 20
    batches: list[int] = field(default_factory=lambda: [1])
    threads: int = 1
    device: str = "auto"            # torch subjects: auto (CPU, plus CUDA when available), cpu, cuda
    teachers: bool = True
    max_time_s: float = 60.0
    progress: bool = True

    def check(self) -> None:
        """One-line errors for values that make no sense."""
        if self.runs < 1:
            raise KDError(f"--runs must be >= 1, got {self.runs}")
        if self.warmup < 0:
            raise KDError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.batches or min(self.batches) < 1:
            raise KDError(f"--batch sizes must be >= 1, got {self.batches}")
        if self.threads < 1:
            raise KDError(f"--threads must be >= 1, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise KDError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if not self.max_time_s > 0:
            raise KDError(f"--max-time must be > 0 seconds, got {self.max_time_s}")

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "warmup": self.warmup, "batches": list(self.batches), "threads": self.threads,
                "device": self.device, "teachers": self.teachers, "max_time_s": self.max_time_s}


# ------------------------------------------------------------------------------------------------ run directory
@dataclass
class RunInfo:
    """What the bench reads from a run directory: method, metrics.json and (lazily) heldout.npz."""

    path: Path
    method: str
    metrics: dict[str, Any] | None
    _heldout: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """classes | captions | forecast."""
        if self.method == "sdkd":
            return "forecast"
        task = (self.metrics or {}).get("task")
        if task in ("classes", "captions"):
            return task
        return "captions" if "caption_owner_test" in self.heldout() else "classes"

    def heldout(self) -> dict[str, np.ndarray]:
        """The held-out arrays (loaded once); one-line error when missing or unreadable."""
        if self._heldout is None:
            self._heldout = load_npz(self.path / "heldout.npz")
        return self._heldout

    def entry(self, *keys: str) -> dict[str, Any] | None:
        """The first of models.KEY in metrics.json that exists."""
        models = (self.metrics or {}).get("models", {})
        return next((models[k] for k in keys if k in models), None)

    def test_size(self) -> int | None:
        """Test-split size recorded in metrics.json."""
        m = self.metrics or {}
        sizes = m.get("split_sizes") or m.get("split_windows") or {}
        return sizes.get("test")


def open_run(path: str | Path) -> RunInfo:
    """A run directory, with one-line errors for a path that is not one."""
    p = Path(path).expanduser().resolve()
    method = read_method(p)
    if method not in ("ammkd", "sdkd"):
        raise KDError(f"{p}: method {method!r} cannot be benchmarked (expected ammkd or sdkd)")
    require_complete(p, "bench")
    metrics = None
    if (p / "metrics.json").is_file():
        metrics = read_json(p / "metrics.json", max_bytes=MAX_LABELS_BYTES)
        if not isinstance(metrics, dict):
            raise KDError(f"{p / 'metrics.json'}: should hold a JSON object")
    return RunInfo(p, method, metrics)


def _params_flops(entry: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """Per-input parameters (image tower where recorded) and FLOPs of a metrics.json model entry."""
    if not entry:
        return None, None
    return entry.get("image_params", entry.get("params")), entry.get("flops")


def _metric_from_entry(entry: dict[str, Any] | None, kind: str) -> tuple[str | None, float | None]:
    """The headline metric of a metrics.json entry: top1, R@1 (mean of both directions) or mse."""
    if not entry:
        return None, None
    if kind == "classes":
        return "top1", entry.get("top1")
    if kind == "captions":
        if "i2t_R@1" in entry and "t2i_R@1" in entry:
            return "R@1", 0.5 * (entry["i2t_R@1"] + entry["t2i_R@1"])
        return "R@1", None
    return "mse", entry.get("mse")


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


def _plan(est_ms: float, warmup: int, runs: int, max_time_s: float) -> tuple[int, int]:
    """(warm-up, runs) that fit the time budget, keeping at least MIN_RUNS (or --runs if smaller)."""
    budget = max_time_s * 1000.0
    if est_ms * (warmup + runs) <= budget:
        return warmup, runs
    return min(warmup, 2), min(runs, max(MIN_RUNS, int(budget / max(est_ms, 1e-9))))


def _probe_ms(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> float:
    """Wall time of one call (it also serves as the first warm-up run)."""
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) * 1000.0


# ------------------------------------------------------------------------------------------------- subjects
@dataclass
class Subject(abc.ABC):
    """One model to measure and the row fields that describe it."""

    model: str
    role: str
    run: RunInfo | None
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

    def __init__(self, bundle: Bundle, run: RunInfo | None) -> None:
        params, flops = _params_flops(run.entry("student") if run else None)
        quant = (bundle.manifest.get("quantization") or {}).get("format")
        quant = None if str(quant).lower() in _NOT_QUANTIZED else str(quant)
        source_run = (bundle.manifest.get("source") or {}).get("run_name")
        super().__init__(bundle.name, "student", run, BACKEND_NAMES.get(bundle.target, bundle.target), "cpu",
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
        if self.run is not None and (self.run.path / "heldout.npz").is_file():
            h = self.run.heldout()
            if self.bundle.task == "retrieval" and "images_test" in h:
                return h["images_test"]
            if self.bundle.task == "forecast" and "x_test" in h:
                fc = self.bundle.manifest["forecast"]
                return h["x_test"].astype(np.float32) * fc["std"] + fc["mean"]
        rng = np.random.default_rng(0)
        shape = list(self.bundle.input["shape"])
        if self.bundle.task == "retrieval":
            return rng.integers(0, 256, size=(8, shape[2], shape[3], 3), dtype=np.uint8)
        fc = self.bundle.manifest["forecast"]
        return (rng.standard_normal((8, *shape[1:])) * fc["std"] + fc["mean"]).astype(np.float32)

    def load(self, settings: Settings) -> None:
        from kdmobile.runtime.backends import open_backend
        from kdmobile.runtime.predictors import ForecastPredictor, RetrievalPredictor

        cls = RetrievalPredictor if self.bundle.task == "retrieval" else ForecastPredictor
        self.predictor = cls(self.bundle, backend=open_backend(self.bundle, threads=settings.threads))
        raw = self._raw_inputs()
        if self.bundle.task == "retrieval":
            self.inputs = self.predictor.preprocess(list(raw[:max(settings.batches)]))
        else:
            p = self.predictor
            self.inputs = ((raw[:max(settings.batches)] - p.mean) / p.std).astype(np.float32)
        self._call(max(settings.batches))()

    def probe_spec(self, settings: Settings) -> dict[str, Any]:
        return {"kind": "bundle", "path": str(self.bundle.path), "threads": settings.threads,
                "batch": max(settings.batches)}

    def _call(self, batch: int) -> Callable[[], Any]:
        """One timed call: the model on `batch` preprocessed inputs (a loop of batch-1 calls if the batch is fixed)."""
        backend, name = self.predictor.backend, self.predictor.input_name
        x = _tile(self.inputs, batch)
        if self.predictor.batched or batch == 1:
            return lambda: backend.run({name: x})
        parts = [x[i:i + 1] for i in range(batch)]
        return lambda: [backend.run({name: p}) for p in parts]

    def timed(self, batch: int, settings: Settings) -> tuple[list[float], str, int]:
        fn = self._call(batch)
        warmup, runs = _plan(_probe_ms(fn), settings.warmup, settings.runs, settings.max_time_s)
        mode = "batched" if self.predictor.batched or batch == 1 else "loop"
        return time_callable(fn, warmup, runs), mode, warmup + 1

    def metric(self) -> tuple[str | None, float | None, str]:
        if self.run is None or not (self.run.path / "heldout.npz").is_file():
            return self._verification_metric("run directory not found")
        h, kind, p = self.run.heldout(), self.run.kind, self.predictor
        if kind == "forecast":
            fc = self.bundle.manifest["forecast"]
            x = h["x_test"].astype(np.float32) * fc["std"] + fc["mean"]
            y = h["y_test"].astype(np.float32) * fc["std"] + fc["mean"]
            return "mse", forecast_errors(p.predict(x), y)["mse"], f"measured on held-out (N={len(x)})"
        r = self.bundle.manifest.get("retrieval", {})
        if r.get("class_source", "run") not in ("run", "held-out captions"):
            return "top1", None, f"n/a (bundle holds new classes: {r.get('class_source')})"
        images = list(h["images_test"])
        if kind == "captions":
            owner = h["caption_owner_test"]
            text = self.bundle.class_vectors
            if len(text) != len(owner):
                return "R@1", None, "n/a (bundle captions differ from the run's held-out captions)"
            rec = retrieval_recall(p.embed(images), text, owner)
            return "R@1", 0.5 * (rec["i2t_R@1"] + rec["t2i_R@1"]), f"measured on held-out (N={len(images)})"
        top1 = topk_accuracy(p.scores(images), h["labels_test"], ks=(1,))["top1"]
        return "top1", top1, f"measured on held-out (N={len(images)})"

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

    def __init__(self, model: str, role: str, run: RunInfo, file: Path, device: str, kind: str,
                 params: int | None, flops: int | None) -> None:
        super().__init__(model, role, run, "torch eager", device, "fp32", str(file), _path_size(file), params, flops)
        self.file, self.kind = file, kind   # kind: clip-teacher | forecaster | ammkd-student
        self.module: Any = None
        self.forward: Callable[[Any], Any] | None = None
        self.inputs: Any = None
        self._threads: int | None = None

    def probe_spec(self, settings: Settings) -> dict[str, Any]:
        shape = [max(settings.batches), *self._model_inputs().shape[1:]]
        return {"kind": "torch", "file": self.file.as_posix(), "model_kind": self.kind, "threads": settings.threads,
                "shape": shape}

    def _model_inputs(self) -> np.ndarray:
        """Held-out model inputs: CLIP-normalised images (N,3,S,S) or normalised frame windows (N,T,H,W)."""
        h = self.run.heldout()
        if "x_test" in h:
            return h["x_test"].astype(np.float32)
        from kdmobile.data.transforms import CLIP_MEAN, CLIP_STD, normalise

        return normalise(h["images_test"][:256], CLIP_MEAN, CLIP_STD)

    def load(self, settings: Settings) -> None:
        import torch

        if self.device == "cpu":
            self._threads = torch.get_num_threads()
            torch.set_num_threads(settings.threads)
        self.module, self.forward = _load_torch(self.file, self.kind, self.device)
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
        fn = self._call(batch)
        warmup, runs = _plan(_probe_ms(fn, self._sync), settings.warmup, settings.runs, settings.max_time_s)
        if self.device != "cuda":
            return time_callable(fn, warmup, runs), "batched", warmup + 1
        return _time_cuda(fn, warmup, runs), "batched", warmup + 1

    def metric(self) -> tuple[str | None, float | None, str]:
        kind = self.run.kind
        if self.role in ("teacher", "baseline"):  # measured in training, on the same split
            key = self.model.split("/", 1)[1]
            name, value = _metric_from_entry(self.run.entry(key), kind)
            n = self.run.test_size()
            src = f"run metrics.json (same split, N={n})" if value is not None else "n/a (not in metrics.json)"
            return name, value, src
        return self._student_metric(kind)

    def _student_metric(self, kind: str) -> tuple[str | None, float | None, str]:
        """The un-exported student's metric, measured here in PyTorch on the held-out split."""
        import torch

        h, model = self.run.heldout(), self.module
        if kind == "forecast":
            norm = json.loads((self.run.path / "normalisation.json").read_text()) \
                if (self.run.path / "normalisation.json").is_file() else {"mean": 0.0, "std": 1.0}
            with torch.inference_mode():
                pred = model(torch.from_numpy(h["x_test"].astype(np.float32)).to(self.device)).float().cpu().numpy()
            y = h["y_test"].astype(np.float32)
            mse = forecast_errors(pred * norm["std"] + norm["mean"], y * norm["std"] + norm["mean"])["mse"]
            return "mse", mse, f"measured on held-out (N={len(y)})"
        from kdmobile.data.transforms import CLIP_MEAN, CLIP_STD, normalise

        with torch.inference_mode():
            x = torch.from_numpy(normalise(h["images_test"], CLIP_MEAN, CLIP_STD)).to(self.device)
            emb = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)]).float().cpu().numpy()
            if kind == "captions":
                names = [k[len("textvec_test_"):] for k in h if k.startswith("textvec_test_")]
                text = model.fuse_text([torch.from_numpy(h[f"textvec_test_{n}"]).to(self.device) for n in names])
                rec = retrieval_recall(emb, text.float().cpu().numpy(), h["caption_owner_test"])
                return "R@1", 0.5 * (rec["i2t_R@1"] + rec["t2i_R@1"]), f"measured on held-out (N={len(emb)})"
            cv_file = self.run.path / "student_class_vectors.npy"
            if not cv_file.is_file():
                return "top1", None, "n/a (student_class_vectors.npy missing)"
            scores = float(model.scale().detach().cpu()) * emb @ np.load(cv_file).T
        return "top1", topk_accuracy(scores, h["labels_test"], ks=(1,))["top1"], \
            f"measured on held-out (N={len(emb)})"

    def close(self) -> None:
        self.module = self.forward = self.inputs = None
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def _load_torch(file: str | Path, kind: str, device: str) -> tuple[Any, Callable[[Any], Any]]:
    """(module, forward) of a teacher or student checkpoint on `device`; the forward is what runs per input."""
    if kind == "clip-teacher":
        from kdmobile.models.clip_teacher import load_teacher

        logging.disable(logging.WARNING)  # open_clip warns that it built the model without pretrained weights
        try:
            teacher = load_teacher(file).to(device)
        finally:
            logging.disable(logging.NOTSET)
        return teacher, teacher.encode_image
    from kdmobile.models.registry import load_model

    model = load_model(file)[0].to(device).eval()
    return model, model


def _time_cuda(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    """Per-call ms measured with CUDA events after warm-up (one synchronize per call)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(float(a.elapsed_time(b)))
    return out


# ------------------------------------------------------------------------------------------------ memory probe
def probe_memory(spec: dict[str, Any], timeout_s: float = 600.0) -> int | None:
    """Run `python -m kdmobile.bench.runner --memory-probe SPEC` and return its peak RSS growth in bytes (None and a
    warning on stderr if the probe fails)."""
    import subprocess

    cmd = [sys.executable, "-m", "kdmobile.bench.runner", "--memory-probe", json.dumps(spec)]
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
    from kdmobile.runtime.backends import open_backend
    from kdmobile.runtime.predictors import ForecastPredictor, RetrievalPredictor

    bundle = load_bundle(spec["path"])
    for module in _PRELOAD.get(bundle.target, ()):  # the library's own import is not the model's memory
        try:
            importlib.import_module(module)
            break
        except ImportError:
            continue
    batch = int(spec["batch"])

    def run() -> Any:
        cls = RetrievalPredictor if bundle.task == "retrieval" else ForecastPredictor
        pred = cls(bundle, backend=open_backend(bundle, threads=int(spec["threads"])))
        x = np.zeros([batch, *bundle.input["shape"][1:]], dtype=np.float32)
        if pred.batched or batch == 1:
            return pred, pred.backend.run({pred.input_name: x})
        return pred, [pred.backend.run({pred.input_name: x[i:i + 1]}) for i in range(batch)]

    return measure_peak_rss(run)


def _probe_torch(spec: dict[str, Any]) -> int:
    """In the probe process: peak RSS growth while loading a checkpoint and running it once on zeros (CPU)."""
    import torch

    from kdmobile.models import forecasters, registry, student  # noqa: F401  (imported before the baseline)
    if spec["model_kind"] == "clip-teacher":
        import open_clip  # noqa: F401

        from kdmobile.models import clip_teacher  # noqa: F401
    torch.set_num_threads(int(spec["threads"]))

    def run() -> Any:
        module, forward = _load_torch(spec["file"], spec["model_kind"], "cpu")
        with torch.inference_mode():
            return module, forward(torch.zeros(spec["shape"]))

    return measure_peak_rss(run)


def _probe_main(argv: Sequence[str]) -> int:
    """Entry point of the memory probe: prints {"peak_rss_bytes": N} as the last line."""
    if len(argv) != 2 or argv[0] != "--memory-probe":
        print("usage: python -m kdmobile.bench.runner --memory-probe JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    grown = _probe_bundle(spec) if spec["kind"] == "bundle" else _probe_torch(spec)
    print(json.dumps({"peak_rss_bytes": int(grown)}))
    return 0


# ---------------------------------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """What to measure, found from the inputs, and what was noticed on the way."""

    subjects: list[Subject] = field(default_factory=list)
    runs: list[RunInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    torch_fallback: list[str] = field(default_factory=list)  # runs without bundles: their PyTorch student measured


def _same_dir(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except OSError:
        return False


def find_bundles(run: RunInfo, bundles_dir: str | Path | None, notes: list[str]) -> list[Bundle]:
    """This run's bundles (checked): with bundles_dir None, those RUN/exports.json records (where `kdmobile export`
    wrote them), else or then RUNNAME-TARGET-PRECISION under the default `bundles/`; with a bundles_dir, those in it."""
    candidates: list[Path] = []
    if bundles_dir is None:
        candidates = recorded_bundles(run.path)
    root = Path(bundles_dir if bundles_dir is not None else DEFAULT_BUNDLES).expanduser()
    if not candidates:
        candidates = [root / f"{run.name}-{t}-{p}" for t in TARGETS for p in PRECISIONS]
    found = []
    for d in candidates:
        if not d.is_dir():
            continue
        bundle = load_bundle(d)  # refuses a changed bundle (checksums) in one line
        src = (bundle.manifest.get("source") or {}).get("run_dir")
        if src and Path(src).expanduser().is_dir() and not _same_dir(src, run.path):
            notes.append(f"{d} was exported from {src}, not {run.path}: skipped")
            continue
        found.append(bundle)
    return found


def _runnable(bundle: Bundle, notes: list[str]) -> bool:
    """False (with a note) for bundles this machine cannot run: CoreML off macOS."""
    if bundle.target == "coreml" and platform.system() != "Darwin":
        notes.append(f"{bundle.path.name}: skipped (CoreML runs on macOS only)")
        return False
    if bundle.model_path.suffix != MODEL_SUFFIX.get(bundle.target, bundle.model_path.suffix):
        notes.append(f"{bundle.path.name}: skipped (unexpected model file {bundle.model_path.name})")
        return False
    return True


def _check_io(bundle: Bundle) -> None:
    """Refuse (before any measurement or report) a bundle whose manifest shapes disagree with its model file."""
    from kdmobile.runtime.backends import open_backend
    from kdmobile.runtime.predictors import check_model_io

    try:
        backend = open_backend(bundle)
    except KDError:
        return  # a backend missing here is reported per model by `measure`, as before
    check_model_io(bundle, backend)


def _torch_devices(settings: Settings) -> list[str]:
    """Devices for PyTorch subjects: auto = CPU (+ CUDA when available); [] when torch is missing (auto)."""
    try:
        import torch
    except ImportError:
        if settings.device == "auto":
            return []
        raise KDError("teachers and un-exported students run in PyTorch: install torch, or pass --no-teachers "
                      "and bundles only") from None
    cuda = torch.cuda.is_available()
    if settings.device == "cuda" and not cuda:
        raise KDError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return {"cpu": ["cpu"], "cuda": ["cuda"], "auto": ["cpu", "cuda"] if cuda else ["cpu"]}[settings.device]


def _teacher_subjects(run: RunInfo, devices: Sequence[str]) -> list[Subject]:
    """The run's teachers (teachers/*.safetensors), on each device."""
    files = sorted((run.path / "teachers").glob(f"*{WEIGHTS_SUFFIX}"))
    order = [k for k in ((run.metrics or {}).get("models") or {})]
    keyed = []
    for f in files:
        key = f"teacher:{f.stem}" if run.method == "ammkd" else f.stem
        keyed.append((order.index(key) if key in order else len(order), key, f))
    out: list[Subject] = []
    for device in devices:
        for _, key, f in sorted(keyed):
            params, flops = _params_flops(run.entry(key))
            kind = "clip-teacher" if run.method == "ammkd" else "forecaster"
            out.append(TorchSubject(f"{run.name}/{key}", "teacher", run, f, device, kind, params, flops))
    return out


def _baseline_subjects(run: RunInfo, devices: Sequence[str]) -> list[Subject]:
    """The run's no-KD student (trained without the teachers), so the table shows what distillation added."""
    file, entry = run.path / NOKD_FILE, run.entry("student_nokd")
    if not file.is_file() or not entry:
        return []
    params, flops = _params_flops(entry)
    kind = "student" if run.method == "ammkd" else "forecaster"
    return [TorchSubject(f"{run.name}/student_nokd", "baseline", run, file, d, kind, params, flops) for d in devices]


def plan(inputs: Sequence[str], bundles_dir: str | Path | None, settings: Settings) -> Plan:
    """Resolve RUN and BUNDLE paths into subjects: bundles first, then the runs' teachers."""
    out = Plan()
    bundles: list[tuple[Bundle, RunInfo | None]] = []
    torch_students: list[RunInfo] = []

    def add_run(path: str | Path) -> RunInfo:
        run = open_run(path)
        for r in out.runs:
            if r.path == run.path:
                return r
        out.runs.append(run)
        return run

    for arg in inputs:
        p = Path(arg).expanduser()
        if not p.exists():
            raise KDError(f"{p}: no such bundle or run directory")
        if p.is_dir() and (p / "manifest.json").is_file():
            bundle = load_bundle(p)
            src = (bundle.manifest.get("source") or {}).get("run_dir")
            run = None
            if src and (Path(src) / "method.json").is_file():
                run = add_run(src)
            else:
                out.notes.append(f"{p.name}: run directory {src or '(none recorded)'} not found: metric from the "
                                 "manifest's export verification, no teachers")
            bundles.append((bundle, run))
        elif p.is_dir() and (p / "method.json").is_file():
            run = add_run(p)
            found = find_bundles(run, bundles_dir, out.notes)
            if not found:
                where = (f"{run.path / 'exports.json'} or {DEFAULT_BUNDLES}/{run.name}-*" if bundles_dir is None
                         else f"{Path(bundles_dir)}/{run.name}-*")
                out.notes.append(f"{run.name}: no bundles found in {where}: benchmarked the PyTorch student (torch "
                                 "eager) instead; run `kdmobile export` for the phone numbers")
                out.torch_fallback.append(run.name)
                torch_students.append(run)
            bundles += [(b, run) for b in found]
        else:
            raise KDError(f"{p}: not a bundle (no manifest.json) or run directory (no method.json)")
    seen: set[Path] = set()
    for bundle, run in bundles:
        key = bundle.path.resolve()
        if key not in seen and _runnable(bundle, out.notes):
            seen.add(key)
            _check_io(bundle)
            out.subjects.append(BundleSubject(bundle, run))
    needs_torch = bool(torch_students) or (settings.teachers and out.runs)
    devices = _torch_devices(settings) if needs_torch else []
    if needs_torch and not devices:
        out.notes.append("torch is not installed: teachers and un-exported students were not measured")
    for run in torch_students:
        if not (run.path / STUDENT_FILE).is_file():
            raise KDError(f"{run.path}: no bundles and no {STUDENT_FILE} to benchmark")
        params, flops = _params_flops(run.entry("student"))
        for device in devices:
            out.subjects.append(TorchSubject(f"{run.name}/student", "student", run, run.path / STUDENT_FILE, device,
                                             "student", params, flops))
    if settings.teachers:
        for run in out.runs:
            subjects = _teacher_subjects(run, devices)
            if devices and not subjects:
                out.notes.append(f"{run.name}: no teachers/*.safetensors in the run directory")
            out.subjects += subjects + _baseline_subjects(run, devices)
    if not out.subjects:
        raise KDError("nothing to benchmark: " + ("; ".join(out.notes) or "no bundles or runs given"))
    return out


# ---------------------------------------------------------------------------------------------------- measuring
def measure(subjects: Sequence[Subject], settings: Settings) -> list[dict[str, Any]]:
    """Every subject at every batch size: memory, latency statistics and the task metric, as report rows."""
    from tqdm import tqdm

    from kdmobile.bench.report import latency_fields

    batches = list(dict.fromkeys(settings.batches))
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(subjects) * len(batches), desc="bench", unit="measurement", file=sys.stderr,
               disable=not settings.progress, dynamic_ncols=True)
    try:
        for s in subjects:
            bar.set_postfix_str(f"{s.model} ({s.backend}, {s.device})")
            done = 0
            try:
                mem = s.memory(settings)
                s.load(settings)
                per_batch = []
                for b in batches:
                    samples, mode, warm = s.timed(b, settings)
                    per_batch.append({"batch": b, "batch_mode": mode, "threads": settings.threads,
                                      "warmup": warm, **latency_fields(samples)})
                    done += 1
                    bar.update(1)
                name, value, source = s.metric()
                rows += [{**s.describe(), "metric_name": name, "metric": value, "metric_source": source, **pb,
                          **mem, "status": "ok"} for pb in per_batch]
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one model failing to run must not lose the others' numbers
                msg = " ".join(f"{type(e).__name__}: {e}".split())[:300] if not isinstance(e, KDError) else str(e)
                print(f"kdmobile: warning: {s.model} ({s.backend}, {s.device}) failed: {msg}", file=sys.stderr)
                bar.update(len(batches) - done)
                rows += [_failed_row(s, b, settings, msg) for b in batches]
            finally:
                s.close()
    finally:
        bar.close()
    return rows


def _failed_row(s: Subject, batch: int, settings: Settings, msg: str) -> dict[str, Any]:
    """A row for a model that could not be measured (no latency, memory or metric)."""
    empty = dict.fromkeys(["p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms", "n_runs",
                           "peak_rss_mb", "peak_gpu_mb", "metric_name", "metric"])
    return {**s.describe(), **empty, "metric_source": "n/a (failed)", "batch": batch, "batch_mode": None,
            "threads": settings.threads, "warmup": None, "status": f"FAILED: {msg}"}


def bench_host(settings: Settings) -> dict[str, Any]:
    """host_info() plus threads, torch version and the CUDA card used (when torch ran on one)."""
    from importlib.metadata import PackageNotFoundError, version

    host = host_info()
    host["threads"] = settings.threads
    try:
        host["torch"] = version("torch")
    except PackageNotFoundError:
        host["torch"] = None
    host["env_threads"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    if "torch" in sys.modules and sys.modules["torch"] is not None:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            host["gpu"] = torch.cuda.get_device_name(0)
    return host


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
