"""`kdmobile train ammkd --student auto --latency-budget-ms X`: time each candidate backbone's student on this host as
export would ship it (`--runtime` onnx, tflite or executorch, through export's own converters; fp32, or with `--int8`
the int8 model export builds there; batch 1, one thread, at the run's image size), then pick the most accurate one
that fits the budget by the zoo's recorded accuracy (kdmobile.student_choice.within_budget). With `--int8-for arm64`
nothing is timed: the budget is checked against published ARM64 figures (student_choice.ARM64_INT8_MS).

The weights are random: latency does not depend on them. Measurements are cached per host (CPU model, ISA flags,
onnxruntime version), runtime, backbone, image size, width and precision in $KDMOBILE_CACHE/student_latency.json,
so a second run (or a --resume) reuses them and makes the same choice.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kdmobile.errors import KDError, UserError
from kdmobile.fileio import cache_dir, write_json
from kdmobile.student_choice import ARM64_INT8_MS, ARM64_SOURCE, ZOO_SOURCE, ZOO_TOP1, within_budget
from kdmobile.table import format_table
from kdmobile.untrusted import read_json

CACHE_FILE = "student_latency.json"
RUNTIMES = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}  # `--runtime`: the file each one runs
RUNTIME_WORDS = {"onnx": "onnxruntime", "tflite": "LiteRT (XNNPACK)", "executorch": "ExecuTorch (XNNPACK)"}


@dataclass
class AutoChoice:
    """What `--student auto` measured and chose."""

    backbone: str
    reason: str
    p50_ms: dict[str, float]
    formats: dict[str, str]      # what was timed per backbone: fp32, or the int8 format export would keep
    cached: list[str]            # backbones whose time came from the cache
    where: str                   # host and timing settings, for the plan
    source: str = "measured"     # "measured" here, or "recorded" (published figures for another device)

    def table(self) -> str:
        """The measured candidates, most accurate first."""
        rows = [[b, f"{ZOO_TOP1.get(b, float('nan')):.1f}", f"{ms:.3g}", self.formats[b],
                 "cached" if b in self.cached else self.source, "<- chosen" if b == self.backbone else ""]
                for b, ms in sorted(self.p50_ms.items(), key=lambda kv: -ZOO_TOP1.get(kv[0], 0.0))]
        where = "p50 ms here" if self.source == "measured" else "p50 ms (published)"
        return format_table(["candidate", "zoo top-1 %", where, "timed as", "source", ""], rows)


def _host_key() -> str:
    from kdmobile.runtime.measure import host_info

    h = host_info()
    isa = ",".join(sorted(k for k, v in (h.get("isa") or {}).items() if v))
    return f"{h.get('cpu')}|{h.get('machine')}|{isa}|onnxruntime {h.get('onnxruntime')}"


def _time_one(backbone: str, image_size: int, embed_dim: int, int8: bool, runtime: str = "onnx") -> tuple[float, str]:
    """(p50 ms, what was timed) of one candidate's student as export ships it to `runtime`."""
    import torch

    from kdmobile.export.int8_choice import one_thread_session, time_side_by_side
    from kdmobile.models.registry import create_model, fuse_for_inference

    torch.manual_seed(0)
    model = fuse_for_inference(create_model("ammkd_student", backbone=backbone, embed_dim=embed_dim,
                                            teacher_dims=[embed_dim], image_size=image_size)).eval()
    example = torch.randn(1, 3, image_size, image_size)
    calib = np.random.default_rng(0).standard_normal((16, 3, image_size, image_size)).astype(np.float32)
    precision = "int8" if int8 else "fp32"
    with tempfile.TemporaryDirectory(prefix="kdmobile-auto-") as tmp:
        path = Path(tmp) / f"model{RUNTIMES[runtime]}"
        if runtime == "onnx":
            info = convert_onnx_student(model, example, path, precision, calib)
            if int8:  # the auto choice timed every candidate against fp32 side by side: its numbers are the answer
                q = info["quantization"]
                return float(q["candidates"][q["format"]]["p50_ms"]), f"int8 ({q['format']})"
            session = one_thread_session(path)
            run = lambda x: session.run(None, {"image": x})[0]  # noqa: E731
            what = "fp32"
        else:
            from kdmobile.runtime.backends import ExecuTorchBackend, LiteRTBackend

            if runtime == "tflite":
                from kdmobile.export.tflite import convert_tflite

                info = convert_tflite(model, example, path, precision, calib if int8 else None, "auto")
                what = f"int8 ({info['recipe']})" if int8 else "fp32"
                backend: Any = LiteRTBackend(path, threads=1)
            else:
                from kdmobile.export.executorch import convert_executorch

                convert_executorch(model, example, path, precision, calib if int8 else None)
                what, backend = precision, ExecuTorchBackend(path, threads=1)
            name = backend.input_names[0]
            run = lambda x: backend.run({name: x})[0]  # noqa: E731
        return time_side_by_side({"model": run}, example.numpy())["model"], what


def convert_onnx_student(model: Any, example: Any, path: Path, precision: str, calib: np.ndarray) -> dict[str, Any]:
    """The candidate's ONNX file as export builds it (int8: every format timed, the fastest close to fp32 kept)."""
    from kdmobile.export.onnx import convert_onnx

    return convert_onnx(model, example, path, precision, calib if precision == "int8" else None,
                        input_name="image", output_name="embedding")


def recorded_arm64(candidates: list[str], budget_ms: float, log: Callable[[str], None] = print) -> AutoChoice:
    """`--int8-for arm64`: the most accurate candidate whose published ARM64 int8 latency fits the budget."""
    known = {b: ARM64_INT8_MS[b] for b in candidates if b in ARM64_INT8_MS}
    if not known:
        raise UserError(f"--int8-for arm64: no published ARM64 figure for {', '.join(candidates)[:200]} (recorded: "
                        f"{', '.join(ARM64_INT8_MS)})")
    if skipped := [b for b in candidates if b not in known]:
        log(f"--student auto: no published ARM64 figure for {', '.join(skipped)}: not considered")
    best, reason = within_budget(known, budget_ms)
    return AutoChoice(best, reason, known, {b: "int8 (published)" for b in known}, [],
                      f"latency: {ARM64_SOURCE}; NOT measured here; accuracy: {ZOO_SOURCE}", source="recorded")


def choose_auto_student(candidates: list[str], budget_ms: float, image_size: int, embed_dim: int, int8: bool,
                        log: Callable[[str], None] = print, runtime: str = "onnx",
                        int8_for: str | None = None) -> AutoChoice:
    """Time the candidates (validated by the config: recorded, at most MAX_CANDIDATES; cached per host) and pick
    the most accurate one within the budget; with `int8_for` ("arm64") use the published table instead."""
    if int8_for is not None:
        return recorded_arm64(candidates, budget_ms, log)
    path = cache_dir() / CACHE_FILE
    try:
        cache: dict[str, Any] = read_json(path) if path.is_file() else {}
    except (KDError, OSError):
        cache = {}  # a damaged cache is rebuilt
    cache = cache if isinstance(cache, dict) else {}
    host = _host_key()
    p50: dict[str, float] = {}
    formats: dict[str, str] = {}
    cached: list[str] = []
    for b in candidates:
        key = f"{host}|{runtime}|{b}|{image_size}px|d{embed_dim}|{'int8' if int8 else 'fp32'}"
        hit = cache.get(key)
        if isinstance(hit, dict) and isinstance(hit.get("p50_ms"), float) and isinstance(hit.get("timed"), str):
            p50[b], formats[b] = hit["p50_ms"], hit["timed"]
            cached.append(b)
            continue
        log(f"--student auto: timing {b} at {image_size} px ({'int8' if int8 else 'fp32'}, {runtime}, 1 thread)")
        p50[b], formats[b] = _time_one(b, image_size, embed_dim, int8, runtime)
        cache[key] = {"p50_ms": p50[b], "timed": formats[b]}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
    best, reason = within_budget(p50, budget_ms)
    where = (f"latency: {RUNTIME_WORDS[runtime]}, 1 thread, batch 1, {image_size} px, measured on this host (cache "
             f"{path}); accuracy: {ZOO_SOURCE}")
    return AutoChoice(best, reason, p50, formats, cached, where)
