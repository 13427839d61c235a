"""Latency-only reference rows (`kdmobile bench --reference ViT-B-32,RN50`): the image towers users distil from, with
random weights (non-trivial BatchNorm statistics), exported to ONNX at the bundles' input size and timed in the same
runtime, threads and batch as the students, so "N x faster" is a ratio within one runtime. Also each row's achieved
GFLOP/s against this core's peak, measured once per bench."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kdmobile.bench.settings import Settings
from kdmobile.bench.subjects import Subject
from kdmobile.bench.timing import time_calls
from kdmobile.errors import UserError
from kdmobile.fileio import cache_dir


def reference_file(name: str, size: int, log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """The ONNX image tower of open_clip `name` at `size` px (random weights), built once and cached; with its
    parameter and FLOP counts."""
    import open_clip

    path = cache_dir() / "reference" / f"{name}-{size}px-open_clip{open_clip.__version__}.onnx"
    info_path = path.with_suffix(".json")
    if not (path.is_file() and info_path.is_file()):
        _build(name, size, path, info_path, log)
    return path, json.loads(info_path.read_text())


def _build(name: str, size: int, path: Path, info_path: Path, log: Callable[[str], None]) -> None:
    import torch

    from kdmobile.models.clip_teacher import _open_clip  # open_clip, with kdmobile's built-in configs registered

    from kdmobile.console import quiet_open_clip_random_init
    from kdmobile.export.conversion import quiet_native_output
    from kdmobile.export.onnx import export_fp32, optimize
    from kdmobile.fileio import atomic_path
    from kdmobile.models.profile import count_flops, count_params, randomise_batchnorm

    open_clip = _open_clip()
    if name not in open_clip.list_models():
        raise UserError(f"--reference {name}: not an open_clip model (e.g. ViT-B-32, RN50)")
    log(f"reference {name}: building its image tower at {size} px (random weights; cached in {path.parent})")
    started = time.perf_counter()
    torch.manual_seed(0)
    with quiet_open_clip_random_init():  # built for this input size (a ViT's token grid depends on it)
        tower = open_clip.create_model(name, pretrained=None, force_image_size=size).visual.eval()
    randomise_batchnorm(tower)
    example = torch.zeros(1, 3, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw.onnx")
    try:
        with quiet_native_output():  # the dynamo exporter's progress lines, the TorchScript exporter's IR dump
            export_fp32(tower, example, raw, "image", "embedding")
        with atomic_path(path) as tmp:
            optimize(raw, tmp)
    finally:
        raw.unlink(missing_ok=True)
    info = {"params": count_params(tower), "flops": count_flops(tower, example), "image_size": size,
            "build_s": round(time.perf_counter() - started, 1)}
    with atomic_path(info_path) as tmp:
        tmp.write_text(json.dumps(info))


class ReferenceSubject(Subject):
    """An open_clip image tower in onnxruntime, latency only (random weights: no task metric)."""

    def __init__(self, name: str, path: Path, info: dict[str, Any]) -> None:
        super().__init__(f"reference:{name}", "reference", None, "onnxruntime", "cpu", "fp32",
                         f"open_clip {name}, random weights, image tower at {info['image_size']} px (latency only)",
                         path.stat().st_size, info["params"], info["flops"])
        self.path, self.size = path, int(info["image_size"])
        self.backend_: Any = None
        self.inputs: np.ndarray | None = None

    def probe_spec(self, settings: Settings) -> dict[str, Any]:
        return {}

    def memory(self, settings: Settings) -> dict[str, float | None]:
        return {"peak_rss_mb": None, "peak_gpu_mb": None}  # a latency reference: its memory is not the question

    def load(self, settings: Settings) -> None:
        from kdmobile.runtime.backends import OnnxBackend

        self.backend_ = OnnxBackend(self.path, threads=settings.threads)
        rng = np.random.default_rng(0)
        self.inputs = rng.standard_normal((max(settings.batches), 3, self.size, self.size)).astype(np.float32)
        self.backend_.run({"image": self.inputs[:1]})

    def timed(self, batch: int, settings: Settings) -> tuple[list[float], str, int]:
        x = np.ascontiguousarray(self.inputs[:batch])
        samples, warm = time_calls(lambda: self.backend_.run({"image": x}), settings)
        return samples, "batched", warm

    def metric(self) -> tuple[str | None, float | None, str]:
        return None, None, "latency only (random weights)"

    def close(self) -> None:
        self.backend_ = self.inputs = None


def reference_subjects(names: list[str], size: int, log: Callable[[str], None] = print) -> list[Subject]:
    """One latency-only subject per open_clip name, at `size` px."""
    return [ReferenceSubject(n, *reference_file(n, size, log)) for n in names]


def peak_gflops(threads: int, n: int = 2048) -> tuple[float | None, str]:
    """This core's fp32 GEMM throughput at `threads` threads: the best of onnxruntime's MatMul (when onnx is there to
    write the one-op model), torch and numpy (n x n, best of 3 each), with where it came from. torch's thread count
    is restored. (None, why) when none of them can run."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    found: dict[str, float] = {}
    for name, make in (("onnxruntime", _ort_matmul), ("torch", _torch_matmul)):
        try:
            fn, restore = make(a, b, threads)
        except ImportError:
            continue
        try:
            fn()
            found[name] = 2 * n ** 3 / min(_seconds(fn) for _ in range(3)) / 1e9
        finally:
            restore()
    if not found:
        return None, "not measured (neither onnx nor torch installed)"
    best = max(found, key=found.get)  # type: ignore[arg-type]
    return found[best], f"{best} {n}x{n} fp32 MatMul, {threads} thread(s); " + ", ".join(
        f"{k} {v:.0f}" for k, v in found.items())


def _ort_matmul(a: np.ndarray, b: np.ndarray, threads: int) -> tuple[Callable[[], Any], Callable[[], None]]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(a.shape)) for k in "AB"]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "peak", io,
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, list(a.shape))])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return (lambda: session.run(None, {"A": a, "B": b})), (lambda: None)


def _torch_matmul(a: np.ndarray, b: np.ndarray, threads: int) -> tuple[Callable[[], Any], Callable[[], None]]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return (lambda: ta @ tb), (lambda: torch.set_num_threads(before))


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def add_compute_fields(rows: list[dict[str, Any]], peak: float | None) -> None:
    """speedup_vs_reference (the first reference row of the same backend and batch) and achieved GFLOP/s with
    its fraction of the measured peak, for every row that has the numbers."""
    refs = [r for r in rows if r["role"] == "reference" and r.get("p50_ms")]
    for r in rows:
        ref = next((x for x in refs if x["backend"] == r["backend"] and x["batch"] == r["batch"]), None)
        ok = ref is not None and r["role"] != "reference" and r.get("p50_ms")
        r["speedup_vs_reference"] = ref["p50_ms"] / r["p50_ms"] if ok else None
        r["reference_model"] = ref["model"] if ok else None
        gflops = (r["flops"] * r["batch"] / (r["p50_ms"] / 1e3) / 1e9) if r.get("flops") and r.get("p50_ms") else None
        r["gflops_per_s"] = gflops
        r["frac_peak"] = gflops / peak if gflops is not None and peak else None


def reference_notes(rows: list[dict[str, Any]], peak: float | None) -> list[str]:
    """One line per model measured against a reference, for the report."""
    out = [f"{r['model']}: {r['speedup_vs_reference']:.1f}x faster than {r['reference_model']} ({r['backend']}, "
           f"batch {r['batch']})" for r in rows if r.get("speedup_vs_reference")]
    if peak:
        out.append(f"peak fp32 GEMM here: {peak:.1f} GFLOP/s (best of onnxruntime and torch at the bench's thread "
                   "count, host.peak_source); GFLOP/s and fraction of peak per model are in report.json")
    return out
