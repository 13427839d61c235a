"""The one table of export targets (ONNX, TFLite, CoreML, ExecuTorch): what each writes, runs on and refuses, and
the code that does it.

Every per-target fact lives here: the model file name and suffix, its converter, metadata reader and runtime
backend (named as "module:attribute" and imported on first use), where it can run, the modules bench imports before
measuring memory, its precisions, the operators it cannot take and the packages whose versions a bundle records.
Export, bundle, runtime and bench read this table instead of keeping their own copies; a new target is one
`register_target(Target(...))`. It imports nothing heavier than the standard library, so the torch-free runtime
can use it.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Union

from kdmobile.rows import Rows

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

# Refused for every target: the exported students are real-valued and FFT-free by design (SDKD's FFT lives only in
# the training loss), so an FFT in a student is a bug that would otherwise surface as a long converter traceback.
COMMON_DENY_OPS: Mapping[str, str] = MappingProxyType({
    r"^aten\._?fft_": "FFT",
    r"^aten\.(i?stft)$": "STFT",
    r"^aten\.(complex|polar|view_as_complex|view_as_real|real|imag|conj|_conj|conj_physical|angle)$": "complex",
})
# Probed with litert-torch 0.10 + ai-edge-litert 2.3 (tiny one-op models): 2-D FFT ("only 1D FFT on the last
# dimension"), nonzero (data-dependent shape), median/kthvalue ("Lowering not found") and argsort fail to convert;
# sort/topk convert but the interpreter lacks STABLEHLO_SORT. grid_sample, pixel_shuffle, unfold, cumsum, bicubic
# resize, roll and atan2 converted and ran.
_DATA_DEPENDENT = {r"^aten\.(nonzero|unique|_unique2|unique_consecutive|masked_select)$": "data-dependent output shape"}
_TFLITE_DENY_OPS = {
    **_DATA_DEPENDENT,
    r"^aten\.(sort|argsort|msort|topk)$": "STABLEHLO_SORT is not in the LiteRT interpreter",
    r"^aten\.(median|nanmedian|kthvalue|mode)$": "no litert-torch lowering",
}
# ExecuTorch (executorch 1.5.1 pip wheel, XNNPACK delegate): ops XNNPACK does not take run on the wheel's portable
# kernels. Probed (tiny one-op models, fp32): nonzero, unique, masked_select (data-dependent shape), median, kthvalue
# and mode (not core ATen) fail to lower; sort/argsort/msort lower but the .pte fails to load (the wheel has no
# aten::sort.values kernel); topk, grid_sample, pixel_shuffle, unfold, cumsum, bicubic resize, roll, atan2, SDPA and
# einsum ran. fp16 is not offered: it converts and runs (cosine 0.9999997 on the tiny student) but XNNPACK has no
# fp16 GELU, the graph splits into 24 delegates and it ran 1.9x slower than fp32 at the same file size.
_EXECUTORCH_DENY_OPS = {
    **_DATA_DEPENDENT,
    r"^aten\.(sort|argsort|msort)$": "the executorch wheel has no sort kernel (the .pte would not load)",
    r"^aten\.(median|nanmedian|kthvalue|mode)$": "not in core ATen: ExecuTorch cannot lower it",
}
_EXECUTORCH_PRECISIONS = ("fp32", "int8")


Ref = Union[str, Callable[..., Any], type]  # "module:attribute" (imported when first used) or the object itself


def resolve(ref: Ref) -> Any:
    """The object a Ref names: imported on first use, so a target's heavy converter loads only when it is needed."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Target:
    """One export target and the code that serves it. `runtime_packages` maps module -> distribution (what
    `kdmobile doctor` looks for); `export_packages` are the distributions whose versions a bundle's manifest records.
    `converter(job) -> manifest sections` writes the model file (kdmobile.export.jobs.Job), `metadata_reader(path)`
    reads kdmobile's metadata back from it, `runtime(path, threads=)` runs it (kdmobile.runtime.backends.Backend)."""

    name: str
    model_file: str                      # the model's name inside a bundle
    backend: str                         # the runtime's display name (bench tables, reports)
    runtime: Ref                         # the Backend class that runs the model file
    converter: Ref                       # Job -> {"quantization": {...}, other manifest sections}
    metadata_reader: Ref                 # model file -> kdmobile's metadata (dict of strings)
    preload: tuple[str, ...]             # modules bench imports before measuring a model's memory (first found)
    runtime_packages: Mapping[str, str]
    export_packages: tuple[str, ...]
    metadata: str                        # where kdmobile's metadata sits in the model file
    deny_ops: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(COMMON_DENY_OPS)))
    precisions: tuple[str, ...] = PRECISIONS
    platforms: tuple[str, ...] = ()      # sys.platform prefixes where the runtime predicts; () = everywhere
    offline_check: Ref | None = None     # bundle -> verification dict, where the model cannot run (CoreML's spec)

    @property
    def suffix(self) -> str:
        """'.onnx', '.tflite', '.mlpackage' or '.pte'."""
        return Path(self.model_file).suffix

    def runs_here(self) -> bool:
        """Whether this machine can run the target's models (CoreML predicts only on macOS)."""
        return not self.platforms or sys.platform.startswith(self.platforms)

    def where_it_runs(self) -> str:
        """'macOS' for a note such as "CoreML predicts on macOS only"."""
        names = {"darwin": "macOS", "linux": "Linux", "win32": "Windows"}
        return ", ".join(names.get(p, p) for p in self.platforms) or "everywhere"


_JOBS = "kdmobile.export.jobs"
_META = "kdmobile.export.metadata"
_BACKENDS = "kdmobile.runtime.backends"
_ROWS: Rows[Target] = Rows(Target, (
    Target("onnx", "model.onnx", backend="onnxruntime", runtime=f"{_BACKENDS}:OnnxBackend",
           converter=f"{_JOBS}:onnx_job", metadata_reader=f"{_META}:read_onnx", preload=("onnxruntime",),
           runtime_packages=MappingProxyType({"onnxruntime": "onnxruntime"}),
           export_packages=("torch", "onnx", "onnxruntime"),
           metadata="ONNX metadata_props (key -> value)"),
    Target("tflite", "model.tflite", backend="litert", runtime=f"{_BACKENDS}:LiteRTBackend",
           converter=f"{_JOBS}:tflite_job", metadata_reader=f"{_META}:read_tflite",
           preload=("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
           runtime_packages=MappingProxyType({"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                                              "tensorflow": "tensorflow"}),
           export_packages=("torch", "litert-torch", "ai-edge-quantizer"),
           metadata="flatbuffer Model.metadata entry 'kdmobile' -> a buffer holding the UTF-8 JSON object",
           deny_ops=MappingProxyType({**COMMON_DENY_OPS, **_TFLITE_DENY_OPS})),
    Target("coreml", "model.mlpackage", backend="coreml", runtime=f"{_BACKENDS}:CoreMLBackend",
           converter=f"{_JOBS}:coreml_job", metadata_reader=f"{_META}:read_coreml", preload=("coremltools",),
           runtime_packages=MappingProxyType({"coremltools": "coremltools"}),
           export_packages=("torch", "coremltools"),
           metadata="CoreML user_defined_metadata (key -> value); short_description names the task",
           platforms=("darwin",),  # the compiled-model runtime ships only with macOS
           offline_check="kdmobile.export.coreml_spec:check_spec"),
    Target("executorch", "model.pte", backend="executorch", runtime=f"{_BACKENDS}:ExecuTorchBackend",
           converter=f"{_JOBS}:executorch_job", metadata_reader=f"{_META}:read_executorch",
           preload=("executorch.runtime",),  # imports torch too: ExecuTorch's Python runtime links libtorch
           runtime_packages=MappingProxyType({"executorch": "executorch"}),
           export_packages=("torch", "executorch", "torchao"),
           metadata="constant method 'kdmobile_metadata' returning the UTF-8 JSON object (a string EValue)",
           deny_ops=MappingProxyType({**COMMON_DENY_OPS, **_EXECUTORCH_DENY_OPS}), precisions=_EXECUTORCH_PRECISIONS),
))
_REGISTRY = _ROWS.table
TARGETS: Mapping[str, Target] = _ROWS.view  # a live, read-only view: register_target adds rows
register_target = _ROWS.register  # add (or replace) a target: export, verify, predict and bench then serve it
target_names = _ROWS.names        # the registered targets' names, built-in ones first


def target_of(path: str | Path) -> Target | None:
    """The target whose model files end like `path` (None for anything else)."""
    suffix = Path(path).suffix.lower()
    return next((t for t in TARGETS.values() if t.suffix == suffix), None)
