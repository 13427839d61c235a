"""Inference backends behind one small interface (onnxruntime, LiteRT, CoreML, ExecuTorch); heavy imports happen
lazily, so the runtime imports without torch (ExecuTorch's Python runtime itself needs torch: imported on use)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from kdmobile.console import quiet_native_stderr
from kdmobile.errors import UserError
from kdmobile.targets import TARGETS, resolve

if TYPE_CHECKING:
    from kdmobile.bundle import Bundle

Shape = tuple[int | None, ...]  # None marks a dynamic dimension


@runtime_checkable
class Backend(Protocol):
    """What predictors need from an inference engine."""

    input_names: list[str]
    input_shapes: dict[str, Shape]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; return the outputs in the model's order."""
        ...


def _ordered(inputs: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    """Inputs in model order: by name when every name matches, else by position (names differ across formats)."""
    if set(inputs) == set(names):
        return [inputs[n] for n in names]
    if len(inputs) == len(names):
        return list(inputs.values())
    raise UserError(f"model expects inputs {list(names)}, got {list(inputs)}")


class OnnxBackend:
    """onnxruntime on CPU, sequential, with a fixed number of intra-op threads (reproducible latency)."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("ONNX bundles need onnxruntime: pip install 'kdmobile[runtime]'") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{path}: onnxruntime cannot load the model ({str(e).splitlines()[0]})") from None
        ins = self.session.get_inputs()
        self.input_names = [i.name for i in ins]
        self.input_shapes = {i.name: tuple(d if isinstance(d, int) else None for d in i.shape) for i in ins}
        self._dtypes = [np.float16 if i.type == "tensor(float16)" else np.float32 for i in ins]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_shapes = [tuple(d if isinstance(d, int) else None for d in o.shape)
                              for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays = _ordered(inputs, self.input_names)
        feed = {n: np.ascontiguousarray(x, dtype=t) for n, x, t in zip(self.input_names, arrays, self._dtypes)}
        return [np.asarray(y, dtype=np.float32) for y in self.session.run(None, feed)]


def _import_interpreter() -> Any:
    """The tf.lite-style Interpreter class: ai_edge_litert, then tflite_runtime, then tensorflow.lite."""
    for module, attr in (("ai_edge_litert.interpreter", "Interpreter"),
                         ("tflite_runtime.interpreter", "Interpreter"),
                         ("tensorflow", "lite")):
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        return obj.Interpreter if attr == "lite" else obj
    raise UserError("TFLite bundles need a LiteRT interpreter: install one of ai-edge-litert, tflite-runtime "
                    "or tensorflow (pip install 'kdmobile[runtime]')")


class LiteRTBackend:
    """LiteRT (TFLite) interpreter; resizes the batch dimension on demand and (de)quantizes integer I/O."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        interpreter_cls = _import_interpreter()
        try:
            with quiet_native_stderr():  # drops only LiteRT's "INFO: Created ... XNNPACK delegate" line
                self.interpreter = interpreter_cls(model_path=str(path), num_threads=int(threads))
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{path}: LiteRT cannot load the model ({str(e).splitlines()[0]})") from None
        ins = self.interpreter.get_input_details()
        self.input_names = [d["name"] for d in ins]
        self.input_shapes = {
            d["name"]: tuple(None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])) for d in ins
        }
        outs = self.interpreter.get_output_details()
        self.output_names = [d["name"] for d in outs]
        self.output_shapes = [tuple(None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"]))
                              for d in outs]

    def _fit(self, detail: dict[str, Any], x: np.ndarray) -> bool:
        """Resize an input tensor whose shape differs only in batch (or a dynamic dim); return True if resized."""
        cur = tuple(int(s) for s in detail["shape"])
        if x.shape == cur:
            return False
        sig = self.input_shapes[detail["name"]]
        ok = len(x.shape) == len(cur) and all(
            i == 0 or s is None or s == n for i, (s, n) in enumerate(zip(sig, x.shape)))
        if not ok:
            raise UserError(f"input {detail['name']} expects shape {list(cur)}, got {list(x.shape)}")
        self.interpreter.resize_tensor_input(detail["index"], list(x.shape))
        return True

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        details = self.interpreter.get_input_details()
        arrays = _ordered(inputs, self.input_names)
        if any([self._fit(d, x) for d, x in zip(details, arrays)]):
            self.interpreter.allocate_tensors()
            details = self.interpreter.get_input_details()
        for d, x in zip(details, arrays):
            self.interpreter.set_tensor(d["index"], _quantize(x, d))
        self.interpreter.invoke()
        return [_dequantize(self.interpreter.get_tensor(d["index"]), d)
                for d in self.interpreter.get_output_details()]


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Cast a float input to the tensor's dtype, applying its (scale, zero_point) when it is integer."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(x, dtype=dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float32 view of an output, undoing integer quantization when present."""
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(y.dtype, np.integer) and scale:
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
    return np.array(y, dtype=np.float32, copy=True)


class CoreMLBackend:
    """coremltools MLModel.predict on the CPU; CoreML prediction exists only on macOS."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        if not TARGETS["coreml"].runs_here():
            raise UserError("CoreML prediction needs macOS; this bundle was validated at export only")
        try:
            import coremltools as ct
        except ImportError:
            raise UserError("CoreML bundles need coremltools: pip install 'kdmobile[coreml]'") from None
        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        desc = self.model.get_spec().description
        self.input_names = [i.name for i in desc.input]
        self.input_shapes = {i.name: tuple(int(s) for s in i.type.multiArrayType.shape) for i in desc.input}
        self.output_names = [o.name for o in desc.output]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = dict(zip(self.input_names, _ordered(inputs, self.input_names)))
        out = self.model.predict(feed)
        return [np.asarray(out[n], dtype=np.float32) for n in self.output_names]


# ExecuTorch's native start-up and thread-pool notices, and a torch deprecation notice its import triggers
_EXECUTORCH_NOISE = re.compile(r"^\[(cpuinfo_utils|threadpool)\.cpp:\d+\] |KernelPreference'> is an Enum subclass")
EXECUTORCH_METADATA_METHOD = "kdmobile_metadata"  # the .pte constant method holding kdmobile's metadata (JSON)


def _import_executorch() -> tuple[Any, Any]:
    """(executorch.runtime.Runtime, its pybindings module). executorch.runtime imports torch: the wheel's
    pybindings link libtorch, and its methods take and return torch tensors."""
    try:
        with quiet_native_stderr(_EXECUTORCH_NOISE), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "This API is experimental" (ExperimentalWarning) on import
            import executorch.extension.pybindings.portable_lib as lib
            from executorch.runtime import Runtime
    except ImportError:
        raise UserError("ExecuTorch bundles need executorch (which loads torch): "
                        "pip install 'kdmobile[executorch]'") from None
    return Runtime, lib


def load_executorch_program(path: str | os.PathLike) -> Any:
    """An executorch.runtime Program from a .pte file (one-line UserError when ExecuTorch refuses it)."""
    runtime, _ = _import_executorch()
    try:
        with quiet_native_stderr(_EXECUTORCH_NOISE):
            return runtime.get().load_program(Path(path))
    except RuntimeError as e:
        raise UserError(f"{path}: ExecuTorch cannot load the model ({str(e).splitlines()[0]})") from None


class ExecuTorchBackend:
    """ExecuTorch's runtime on the CPU: the .pte's `forward`, XNNPACK-delegated where export lowered it. Shapes are
    static (batch 1), so predictors loop over a batch. The XNNPACK thread pool is ExecuTorch's own, process-wide
    and used by nothing else: each backend sets it to its thread count before running (torch's is left alone)."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        _, self._lib = _import_executorch()
        import torch

        self._torch = torch
        self.threads = int(threads)
        self._program = load_executorch_program(path)
        if "forward" not in self._program.method_names:
            raise UserError(f"{path}: the .pte has no 'forward' method")
        try:
            with quiet_native_stderr(_EXECUTORCH_NOISE):  # the first thread-pool call logs the CPU it found
                self._set_threads()
                self.method = self._program.load_method("forward")
        except RuntimeError as e:
            raise UserError(f"{path}: ExecuTorch cannot load 'forward' ({str(e).splitlines()[0]})") from None
        meta = self.method.metadata
        names = self._io_names()
        self.input_names = [names.get("input_name", "input")] if meta.num_inputs() == 1 else [
            f"input_{i}" for i in range(meta.num_inputs())]
        self.input_shapes = {n: tuple(int(d) for d in meta.input_tensor_meta(i).sizes())
                             for i, n in enumerate(self.input_names)}
        self.output_names = [names.get("output_name", "output")] if meta.num_outputs() == 1 else [
            f"output_{i}" for i in range(meta.num_outputs())]
        self.output_shapes = [tuple(int(d) for d in meta.output_tensor_meta(i).sizes())
                              for i in range(meta.num_outputs())]

    def _io_names(self) -> dict[str, str]:
        """Input/output names from kdmobile's metadata in the .pte ({} without it: the .pte keeps no names)."""
        if EXECUTORCH_METADATA_METHOD not in self._program.method_names:
            return {}
        try:
            value = json.loads(self._program.load_method(EXECUTORCH_METADATA_METHOD).execute([])[0])
        except (RuntimeError, ValueError, TypeError, IndexError):
            return {}
        return {k: str(v) for k, v in value.items()} if isinstance(value, dict) else {}

    def _set_threads(self) -> None:
        """Size ExecuTorch's thread pool for this backend when another backend (or the default: all cores) left a
        different size; a no-op otherwise."""
        if self._lib._threadpool_get_thread_count() != self.threads:
            with quiet_native_stderr(_EXECUTORCH_NOISE):
                self._lib._unsafe_reset_threadpool(self.threads)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._set_threads()
        tensors = [self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                   for x in _ordered(inputs, self.input_names)]
        for name, t in zip(self.input_names, tensors):
            if tuple(t.shape) != self.input_shapes[name]:
                raise UserError(f"input {name} expects shape {list(self.input_shapes[name])}, got {list(t.shape)}")
        return [np.asarray(y.numpy(), dtype=np.float32) for y in self.method.execute(tensors)]


class TorchBackend:
    """An eager torch module behind the same interface (eager-vs-exported comparisons, the evaluator's PyTorch
    models); imports torch lazily. It leaves torch's thread count alone: that is process-wide, the caller's."""

    def __init__(self, module: Any, input_names: Sequence[str] = ("input",), device: str = "cpu") -> None:
        try:
            import torch
        except ImportError:
            raise UserError("the torch backend needs torch installed") from None
        self._torch = torch
        self.module = module.eval()
        self.device = device
        self.input_names = list(input_names)
        self.input_shapes: dict[str, Shape] = {n: (None,) for n in self.input_names}

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        tensors = [self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
                   for x in _ordered(inputs, self.input_names)]
        with self._torch.inference_mode():
            out = self.module(*tensors)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]


def open_backend(bundle: "Bundle", threads: int = 1) -> Backend:
    """The backend that runs this bundle's model file, chosen by its target (kdmobile.targets names the class)."""
    target = TARGETS.get(bundle.target)
    if target is None:
        raise UserError(f"bundle {bundle.path}: no runtime backend for target {bundle.target!r}")
    return resolve(target.runtime)(Path(bundle.model_path), threads=threads)


# module name -> distribution name: every target's runtime packages, then torch (TorchBackend)
_PACKAGES = {**{m: d for t in TARGETS.values() for m, d in t.runtime_packages.items()}, "torch": "torch"}


def _version(module: str, dist: str) -> str | None:
    """Installed version of a package without importing it (None when absent)."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for name in (dist, module):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def available_backends() -> dict[str, str | None]:
    """Inference packages installed here: module name -> version, or None (for `kdmobile doctor`)."""
    return {module: _version(module, dist) for module, dist in _PACKAGES.items()}
