"""The one table of export targets (ONNX, TFLite, CoreML, ExecuTorch): what each writes, runs on and refuses.

Every per-target fact lives here: the model file name and suffix, the runtime that runs it (and the modules bench
imports before measuring memory), its precisions, the operators it cannot take, the packages whose versions a
bundle records and where the model file carries kdmobile's metadata. Export, bundle, runtime and bench read this
table instead of keeping their own copies; it imports nothing heavier than the standard library, so the
torch-free runtime can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

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


@dataclass(frozen=True)
class Target:
    """One export target. `runtime_packages` maps module -> distribution (what `kdmobile doctor` looks for);
    `export_packages` are the distributions whose versions a bundle's manifest records."""

    name: str
    model_file: str                      # the model's name inside a bundle
    backend: str                         # the runtime's display name (bench tables, reports)
    runtime: str                         # the class in kdmobile.runtime.backends that runs the model file
    preload: tuple[str, ...]             # modules bench imports before measuring a model's memory (first found)
    runtime_packages: Mapping[str, str]
    export_packages: tuple[str, ...]
    metadata: str                        # where kdmobile's metadata sits in the model file
    deny_ops: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(COMMON_DENY_OPS)))
    precisions: tuple[str, ...] = PRECISIONS

    @property
    def suffix(self) -> str:
        """'.onnx', '.tflite', '.mlpackage' or '.pte'."""
        return Path(self.model_file).suffix


TARGETS: Mapping[str, Target] = MappingProxyType({t.name: t for t in (
    Target("onnx", "model.onnx", backend="onnxruntime", runtime="OnnxBackend", preload=("onnxruntime",),
           runtime_packages=MappingProxyType({"onnxruntime": "onnxruntime"}),
           export_packages=("torch", "onnx", "onnxruntime"),
           metadata="ONNX metadata_props (key -> value)"),
    Target("tflite", "model.tflite", backend="litert", runtime="LiteRTBackend",
           preload=("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
           runtime_packages=MappingProxyType({"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                                              "tensorflow": "tensorflow"}),
           export_packages=("torch", "litert-torch", "ai-edge-quantizer"),
           metadata="flatbuffer Model.metadata entry 'kdmobile' -> a buffer holding the UTF-8 JSON object",
           deny_ops=MappingProxyType({**COMMON_DENY_OPS, **_TFLITE_DENY_OPS})),
    Target("coreml", "model.mlpackage", backend="coreml", runtime="CoreMLBackend", preload=("coremltools",),
           runtime_packages=MappingProxyType({"coremltools": "coremltools"}),
           export_packages=("torch", "coremltools"),
           metadata="CoreML user_defined_metadata (key -> value); short_description names the task"),
    Target("executorch", "model.pte", backend="executorch", runtime="ExecuTorchBackend",
           preload=("executorch.runtime",),  # imports torch too: ExecuTorch's Python runtime links libtorch
           runtime_packages=MappingProxyType({"executorch": "executorch"}),
           export_packages=("torch", "executorch", "torchao"),
           metadata="constant method 'kdmobile_metadata' returning the UTF-8 JSON object (a string EValue)",
           deny_ops=MappingProxyType({**COMMON_DENY_OPS, **_EXECUTORCH_DENY_OPS}), precisions=_EXECUTORCH_PRECISIONS),
)})
TARGET_NAMES: tuple[str, ...] = tuple(TARGETS)
MODEL_SUFFIX: Mapping[str, str] = MappingProxyType({name: t.suffix for name, t in TARGETS.items()})
MODEL_FILE: Mapping[str, str] = MappingProxyType({name: t.model_file for name, t in TARGETS.items()})
BACKEND_NAMES: Mapping[str, str] = MappingProxyType({name: t.backend for name, t in TARGETS.items()})


def target_of(path: str | Path) -> Target | None:
    """The target whose model files end like `path` (None for anything else)."""
    suffix = Path(path).suffix.lower()
    return next((t for t in TARGETS.values() if t.suffix == suffix), None)
