"""ONNX conversion: torch.onnx export with a dynamic batch, onnxruntime graph optimisation, fp16 and int8 variants."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kdmobile.errors import UserError
from kdmobile.targets import PRECISIONS

OPSET = 17
# ORT_ENABLE_BASIC only does semantics-preserving rewrites that stay in the standard ONNX domain (constant folding,
# redundant-node removal, Conv+BatchNorm/Add/Mul folding). EXTENDED adds com.microsoft contrib ops (FusedConv, Gelu,
# ...) that only onnxruntime runs, and ALL adds hardware-specific NCHWc layouts: those would tie the file to one
# runtime/CPU, while onnxruntime re-applies them itself when a session loads the file.
OPT_LEVEL = "basic"


def export_fp32(model: Any, example: Any, path: Path, input_name: str, output_name: str) -> str:
    """torch.onnx.export with a dynamic batch dimension; returns which exporter worked ("torchscript"/"dynamo")."""
    import torch

    model = model.eval()
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[input_name], output_names=[output_name], dynamic_axes=axes,
                              do_constant_folding=True)
        return "torchscript"
    except Exception as first:  # noqa: BLE001 - fall back to the dynamo exporter, report both if it fails too
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                                  opset_version=max(OPSET, 18), input_names=[input_name],
                                  output_names=[output_name],
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
            return "dynamo"
        except Exception as second:  # noqa: BLE001
            raise RuntimeError(f"torch.onnx.export failed: {type(first).__name__}: {first}; dynamo exporter: "
                               f"{type(second).__name__}: {second}") from second


def _strip_unused_domains(model: Any) -> None:
    """Drop opset imports that no node uses (onnxruntime's optimiser adds all it knows)."""
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def optimize(src: Path, dst: Path) -> None:
    """Run onnxruntime's BASIC graph optimisation and save the result as a portable standard-ONNX file."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst))
    _strip_unused_domains(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and compute with float32 inputs/outputs (onnxruntime.transformers.float16, keep_io_types)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"weights": "float16", "activations": "float16", "io": "float32",
            "tool": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"}


def convert_onnx(model: Any, example: Any, out_path: Path, precision: str, calibration: np.ndarray | None,
                 int8_format: str = "auto", *, input_name: str = "input", output_name: str = "output",
                 metadata: Mapping[str, str] | None = None, int8_for: str | None = None) -> dict[str, Any]:
    """Export `model` to `out_path` as fp32, fp16 or int8 ONNX; returns the manifest's quantization/export info."""
    import onnxruntime

    from kdmobile.export.int8_choice import choose_by_measurement
    from kdmobile.export.quantize import quantize_onnx, quiet, resolve_int8_format

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} for onnx")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix=".onnx-work.", dir=out_path.parent) as tmp:
        work = Path(tmp)
        raw, fp32 = work / "raw.onnx", work / "fp32.onnx"
        exporter = export_fp32(model, example, raw, input_name, output_name)
        with quiet():
            optimize(raw, fp32)
        info: dict[str, Any] = {"exporter": f"torch.onnx ({exporter})", "opset": OPSET,
                                "graph_optimization": f"onnxruntime {onnxruntime.__version__} {OPT_LEVEL}",
                                "dynamic_batch": True}
        if precision == "fp32":
            fp32.replace(out_path)
            info["quantization"] = {"format": "none"}
        elif precision == "fp16":
            info["quantization"] = {"format": "fp16", **to_fp16(fp32, out_path)}
        else:
            preset = resolve_int8_format(int8_format, int8_for)
            if preset is None:  # auto: every candidate built and timed here, the fastest close to fp32 kept
                fmt, facts = choose_by_measurement(
                    fp32, out_path, calibration, input_name, work,
                    lambda src, dst, f: quantize_onnx(src, dst, f, calibration, input_name, dst.parent))
                info["quantization"] = {"format": fmt, **facts}
            else:
                fmt, facts = preset
                details = quantize_onnx(fp32, out_path, fmt, calibration, input_name, work)
                info["quantization"] = {"format": fmt, **facts, **details}
    if metadata:
        from kdmobile.export.metadata import write_onnx

        write_onnx(out_path, metadata)
    return info
