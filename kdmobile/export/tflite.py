"""PyTorch -> TFLite (LiteRT) with litert-torch, then fp16 / int8 with ai-edge-quantizer.

The float model keeps the PyTorch signature: one NCHW float32 input, float32 outputs. Every quantized variant
keeps float32 input and output tensors too (static int8 adds a QUANTIZE after the input and a DEQUANTIZE before
the output), so the runtime feeds every precision the same way.

int8 comes in two recipes:

- ``dynamic``: int8 per-channel weights, float activations quantized on the fly by the kernels
  (``ai_edge_quantizer.recipe.dynamic_wi8_afp32()``). No calibration.
- ``static``: int8 per-channel weights and int8 activations, ranges calibrated on sample inputs
  (``ai_edge_quantizer.recipe.static_wi8_ai8()``, graph input/output left float).
- ``auto`` with calibration data builds both, times them against the float model in LiteRT on this machine and
  keeps the faster one close to fp32 (kdmobile.export.int8_choice); the timings go into the manifest. Without
  calibration data, the rule of choose_int8_recipe: hard-swish (which splits the XNNPACK int8 graph; static ran
  2-3x slower than fp32 for MobileNetV3 on x86) -> dynamic, otherwise static, dynamic when it cannot calibrate.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from kdmobile.errors import KDError, ToolError, UserError
from kdmobile.export.options import TFLITE_RECIPES
from kdmobile.export.conversion import calibration_batches, eval_mode, first_line, quiet_native_output
from kdmobile.fileio import atomic_path
from kdmobile.targets import PRECISIONS

log = logging.getLogger(__name__)


# TFLite builtin operator code of HARD_SWISH (tflite schema, BuiltinOperator).
_TFL_HARD_SWISH = 117


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def _litert_quiet() -> Iterator[None]:
    """litert-torch's own progress display and torch log silencing are env-var switches: set them, then restore."""
    keys = ("LITERT_TORCH_SHOW_PROGRESS", "LITERT_TORCH_SILENCE_TORCH_LOGS", "TF_CPP_MIN_LOG_LEVEL")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({"LITERT_TORCH_SHOW_PROGRESS": "n", "LITERT_TORCH_SILENCE_TORCH_LOGS": "y",
                       "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------------------------
# Recipe choice


def hard_swish_modules(model: nn.Module) -> list[str]:
    """Names of modules that compute hard-swish: nn.Hardswish and timm's HardSwish / HardSwishMe variants."""
    found = []
    for name, module in model.named_modules():
        cls = type(module).__name__.lower().replace("_", "")
        if isinstance(module, nn.Hardswish) or cls.startswith("hardswish"):
            found.append(name or type(module).__name__)
    return found


def tflite_op_counts(model_bytes: bytes) -> dict[str, int]:
    """Builtin operator name -> count over all subgraphs of a .tflite flatbuffer."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    fb = tfl_flatbuffer_utils.read_model(bytearray(model_bytes))
    codes = [max(oc.builtinCode, oc.deprecatedBuiltinCode) for oc in fb.operatorCodes]
    names = {int(v): k for k, v in vars(qtyping.BuiltinOperator).items() if isinstance(v, int) and k.isupper()}
    counts: dict[str, int] = {}
    for sg in fb.subgraphs:
        for op in sg.operators or []:
            code = codes[op.opcodeIndex]
            name = names.get(code, f"BUILTIN_{code}")
            counts[name] = counts.get(name, 0) + 1
    return counts


def choose_int8_recipe(model: nn.Module, recipe: str, have_calibration: bool,
                       float_ops: dict[str, int] | None = None) -> tuple[str, str]:
    """Resolve `recipe` ("auto", "dynamic", "static") to ("dynamic" | "static", reason)."""
    if recipe not in TFLITE_RECIPES:
        raise UserError(f"unknown int8 recipe '{recipe}'; choose one of {', '.join(TFLITE_RECIPES)}")
    if recipe == "static":
        if not have_calibration:
            raise UserError("static int8 needs calibration data (a few hundred training inputs); none was given")
        return "static", "requested: int8 weights and activations, calibrated"
    if recipe == "dynamic":
        return "dynamic", "requested: int8 weights, activations quantized at run time"
    hs = hard_swish_modules(model)
    hs_ops = (float_ops or {}).get("HARD_SWISH", 0)
    if hs or hs_ops:
        what = f"{len(hs)} hard-swish modules" if hs else f"{hs_ops} HARD_SWISH ops"
        return "dynamic", (f"auto: model has {what}; LiteRT static int8 ran 2-3x slower than fp32 on such "
                           "networks on x86 (hard-swish splits the XNNPACK int8 graph), so int8 weights with "
                           "dynamic-range activations")
    if not have_calibration:
        return "dynamic", "auto: no hard-swish, but no calibration data for static int8, so dynamic-range int8"
    return "static", ("auto: no hard-swish; LiteRT static int8 (weights and activations) ran 1.0-1.8x faster "
                      "than fp32 on such networks")


# ---------------------------------------------------------------------------------------------------------------
# Conversion and quantization


def _float_digest(model: nn.Module, example: torch.Tensor) -> str:
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in list(model.state_dict().items()) + [("__example__", example)]:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def convert_float(model: nn.Module, example: torch.Tensor, cache: dict[str, bytes] | None = None) -> bytes:
    """litert-torch conversion of `model(example)` to a float32 .tflite flatbuffer (bytes).

    `cache`, owned by one export (kdmobile.export.jobs.Job.cache), maps a digest of the model's class, weights and
    example to the flatbuffer: an export of fp32, fp16 and int8 converts the model once (~15 s for the MobileNetV3
    student) and quantizes that thrice. Nothing is kept between exports.
    """
    digest = _float_digest(model, example) if cache is not None else None
    if digest is not None and digest in cache:
        return cache[digest]
    data = _convert_float(model, example)
    if digest is not None:
        cache[digest] = data
    return data


def _convert_float(model: nn.Module, example: torch.Tensor) -> bytes:
    with eval_mode(model), torch.no_grad(), _litert_quiet():
        try:
            with quiet_native_output():
                try:
                    import litert_torch
                except ImportError as exc:
                    raise UserError("TFLite export needs litert-torch: pip install 'kdmobile[tflite]'") from exc
                edge = litert_torch.convert(model, (example,))
                data = edge.model_content()
        except KDError:
            raise
        except Exception as exc:  # litert-torch raises many types (export, lowering, MLIR, converter)
            raise ToolError(f"tflite conversion failed: {first_line(exc)}") from exc
    return bytes(data)


def _signature_io(model_bytes: bytes) -> tuple[str, str]:
    """(signature key, input name) of a single-input float model."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_native_output():
        interp = Interpreter(model_content=model_bytes)
        sigs = interp.get_signature_list()
    if len(sigs) != 1:
        raise UserError(f"tflite model has {len(sigs)} signatures; expected one")
    key, sig = next(iter(sigs.items()))
    if len(sig["inputs"]) != 1:
        raise UserError(f"tflite model has {len(sig['inputs'])} inputs; expected one")
    return key, sig["inputs"][0]


def quantize_tflite(float_bytes: bytes, precision: str, kind: str | None = None,
                    calibration: list[np.ndarray] | None = None) -> bytes:
    """Quantize a float .tflite with ai-edge-quantizer. precision fp16, or int8 with kind dynamic | static.

    fp16:    weight-only float casting of every supported op's weights (FLOAT_CASTING, 16 bits);
    dynamic: recipe.dynamic_wi8_afp32();
    static:  recipe.static_wi8_ai8() with the graph INPUT/OUTPUT left float (NO_QUANTIZE), calibrated on
             `calibration` (inputs shaped like the model input).
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    algo = algorithm_manager.AlgorithmName
    ops = qtyping.TFLOperationName
    try:
        with quiet_native_output():
            if precision == "fp16":
                q = quantizer.Quantizer(bytearray(float_bytes))
                q.add_weight_only_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=16,
                                         algorithm_key=algo.FLOAT_CASTING)
            elif kind == "dynamic":
                q = quantizer.Quantizer(bytearray(float_bytes), recipe.dynamic_wi8_afp32())
            elif kind == "static":
                if not calibration:
                    raise UserError("static int8 needs calibration data; none was given")
                q = quantizer.Quantizer(bytearray(float_bytes), recipe.static_wi8_ai8())
                for op in (ops.INPUT, ops.OUTPUT):  # keep float32 I/O: the runtime feeds float
                    q.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key=algo.NO_QUANTIZE)
            else:
                raise UserError(f"cannot quantize to {precision}/{kind}")
            calib = None
            if q.need_calibration:
                sig, name = _signature_io(float_bytes)
                calib = q.calibrate({sig: [{name: x} for x in calibration or []]},
                                    num_threads=max(1, min(4, os.cpu_count() or 1)))
            result = q.quantize(calib, enable_progress_bar=False, enable_progress_report=False)
    except KDError:
        raise
    except Exception as exc:
        raise ToolError(f"tflite {precision} quantization failed: {first_line(exc)}") from exc
    if result.quantized_model is None:
        raise UserError(f"tflite {precision} quantization produced no model")
    return bytes(result.quantized_model)


def convert_tflite(model: nn.Module, example: torch.Tensor, out_path: Path, precision: str,
                   calibration: np.ndarray | None, recipe: str = "auto",
                   metadata: Mapping[str, str] | None = None, cache: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Convert `model` to a .tflite file at `out_path` in fp32, fp16 or int8; return a manifest entry.

    `example` is one input as PyTorch takes it (NCHW, fixed batch); the file keeps that layout and float32 I/O.
    `calibration` (float32, (N, *example.shape[1:]) or (N, *example.shape)) is used by static int8 only.
    `recipe` matters for int8 only: "auto" | "dynamic" | "static" (see the module docstring).
    `metadata` goes into the flatbuffer's metadata table (kdmobile.export.metadata.embed_tflite).
    The file is written to a temporary sibling and renamed into place; errors are one-line KDErrors.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' for tflite; choose one of {', '.join(PRECISIONS)}")
    if recipe not in TFLITE_RECIPES:
        raise UserError(f"unknown int8 recipe '{recipe}'; choose one of {', '.join(TFLITE_RECIPES)}")
    if precision == "int8" and recipe == "static" and calibration is None:  # fail before the slow conversion
        raise UserError("static int8 needs calibration data (a few hundred training inputs); none was given")
    # Check the calibration data's shape before the slow conversion, too.
    batches = (calibration_batches(calibration, tuple(example.shape))
               if precision == "int8" and calibration is not None and recipe != "dynamic" else None)
    t0 = time.perf_counter()
    known = len(cache) if cache is not None else 0
    float_bytes = convert_float(model, example, cache)
    t_convert = time.perf_counter() - t0
    reused = cache is not None and len(cache) == known and known > 0  # nothing new was converted
    info: dict[str, Any] = {
        "converter": f"litert-torch {_version('litert-torch')}",
        "quantizer": None,
        "recipe": "float32",
        "reason": "fp32: as converted",
        "input_layout": "NCHW",
        "convert_seconds": round(t_convert, 2),
        "reused_float_conversion": reused,
    }
    data = float_bytes
    if precision != "fp32":
        info["quantizer"] = f"ai-edge-quantizer {_version('ai-edge-quantizer')}"
        t1 = time.perf_counter()
        if precision == "fp16":
            data = quantize_tflite(float_bytes, "fp16")
            info.update(recipe="fp16_weights", reason="fp16: weights stored as float16 (FLOAT_CASTING), "
                                                      "float32 compute and I/O")
        else:
            if recipe == "auto" and batches is not None:  # both recipes built and timed here (int8_choice)
                from kdmobile.export.int8_choice import choose_tflite_recipe

                with tempfile.TemporaryDirectory(prefix="kdmobile-tflite-") as tmp:
                    kind, data, facts = choose_tflite_recipe(float_bytes, lambda k: quantize_tflite(
                        float_bytes, "int8", k, batches if k == "static" else None), batches, Path(tmp))
                reason, info["measurement"] = facts.pop("reason"), facts
            else:  # an explicit recipe, or no calibration data: the rule
                kind, reason = choose_int8_recipe(model, recipe, batches is not None, tflite_op_counts(float_bytes))
                data = quantize_tflite(float_bytes, "int8", kind, batches if kind == "static" else None)
            info.update(recipe="dynamic_wi8_afp32" if kind == "dynamic" else "static_wi8_ai8", reason=reason)
            if kind == "static":
                info["calibration_inputs"] = len(batches)
        info["quantize_seconds"] = round(time.perf_counter() - t1, 2)
    if metadata:
        from kdmobile.export.metadata import embed_tflite

        data = embed_tflite(data, metadata)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
    info["bytes"] = len(data)
    info["float_bytes"] = len(float_bytes)
    return info
