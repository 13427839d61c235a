"""ONNX int8: the format choice per ISA, static QDQ / dynamic quantization, and weight-only int8 storage.

Formats (`--int8-format`):
  s8s8     static QDQ, int8 activations + int8 weights (calibrated)
  u8s8     static QDQ, uint8 activations + int8 weights (calibrated); in both the RGB stem stays fp32
  dynamic  dynamic quantization: int8 weights, activations quantized per call at run time
  w8a32    weight-only int8: int8 weights (per output channel, symmetric) stored as Cast + Mul, which onnxruntime
           constant-folds into fp32 weights when the session loads, so the file is ~3.5x smaller and inference
           runs at exactly fp32 speed and accuracy (standard ONNX ops only, no calibration)
  auto     measured on the export host: the fastest candidate that stays close to fp32 (export/int8_choice.py),
           or, with --int8-for CPU, a preset for another machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kdmobile.errors import UserError

INT8_FORMATS = ("auto", "s8s8", "u8s8", "dynamic", "w8a32")
STATIC_FORMATS = ("s8s8", "u8s8")
MIN_WEIGHT_ELEMENTS = 256  # smaller weight tensors stay fp32 in w8a32 (scales would cost more than they save)
# Static int8 leaves the image stem (a Conv reading <= 4 channels) in fp32: at 224 px onnxruntime's int8 kernel for
# a 3-channel convolution was slower than fp32, and keeping it made the whole u8s8 student 1.07 -> 1.21x
# (mobilenetv4_conv_small_035) and 1.28 -> 1.44x (_050) its own fp32 (benchmarks/results/int8_path.md).
STEM_MAX_CHANNELS = 4



def resolve_int8_format(requested: str, int8_for: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """`--int8-format` / `--int8-for` -> (format, manifest facts), or None when `auto` is to be measured here
    (kdmobile.export.int8_choice.choose_by_measurement)."""
    from kdmobile.export.int8_choice import PRESETS

    if requested not in INT8_FORMATS:
        raise UserError(f"--int8-format {requested!r}: choose one of {', '.join(INT8_FORMATS)}")
    if int8_for is not None and int8_for not in PRESETS:
        raise UserError(f"--int8-for {int8_for!r}: choose one of {', '.join(PRESETS)}")
    if requested != "auto":
        return requested, {"requested": requested, "reason": "requested with --int8-format"}
    if int8_for is not None:
        fmt, why = PRESETS[int8_for]
        return fmt, {"requested": "auto", "int8_for": int8_for, "reason": f"preset for {int8_for}: {why}"}
    return None


class _Reader:
    """onnxruntime CalibrationDataReader over (N, ...) float32 calibration inputs, one sample per call."""

    def __init__(self, input_name: str, data: np.ndarray) -> None:
        self.input_name = input_name
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self._it: Iterator[int] = iter(range(len(self.data)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._it, None)
        return None if i is None else {self.input_name: self.data[i:i + 1]}

    def rewind(self) -> None:
        self._it = iter(range(len(self.data)))


def _reader(input_name: str, data: np.ndarray) -> Any:
    """A _Reader that is also an instance of onnxruntime's CalibrationDataReader ABC."""
    from onnxruntime.quantization import CalibrationDataReader

    cls = type("KDCalibrationReader", (_Reader, CalibrationDataReader), {})
    return cls(input_name, data)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization's root-logger warnings and Python warnings (e.g. per-channel axis notes) for
    the block; the root logger's level and the warning filters are restored however the block ends."""
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_onnx(src: Path, dst: Path, fmt: str, calibration: np.ndarray | None, input_name: str,
                  workdir: Path) -> dict[str, Any]:
    """Quantize the fp32 model at `src` into `dst` in format `fmt`; returns the manifest's quantization details."""
    import onnxruntime

    if fmt == "w8a32":
        return weight_only_int8(src, dst)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / "preprocessed.onnx"
    with quiet():
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if fmt == "dynamic":
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=False)
            return {"activations": "dynamic int8 (per call)", "weights": "int8 per-tensor",
                    "tool": f"onnxruntime.quantization {onnxruntime.__version__} quantize_dynamic",
                    "calibration_samples": 0}
        if fmt not in STATIC_FORMATS:
            raise UserError(f"unknown ONNX int8 format {fmt!r}")
        if calibration is None or len(calibration) == 0:
            raise UserError(f"int8 format {fmt} needs calibration samples (--calibration-samples N, N >= 1)")
        act = QuantType.QInt8 if fmt == "s8s8" else QuantType.QUInt8
        stems = image_stems(pre)
        quantize_static(str(pre), str(dst), _reader(input_name, calibration), quant_format=QuantFormat.QDQ,
                        activation_type=act, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_exclude=stems)
    return {"activations": "int8" if fmt == "s8s8" else "uint8", "weights": "int8 per-channel",
            "layout": "QDQ", "calibration_samples": int(len(calibration)), "calibration_method": "minmax",
            "float_nodes": stems, "float_nodes_why": f"image stem (Conv with <= {STEM_MAX_CHANNELS} input channels)",
            "tool": f"onnxruntime.quantization {onnxruntime.__version__} quantize_static"}


def image_stems(path: Path) -> list[str]:
    """Names of the Conv nodes reading <= STEM_MAX_CHANNELS channels (the RGB stem), which static int8 leaves fp32."""
    import onnx

    graph = onnx.load(str(path)).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Conv" and len(n.input) > 1
            and len(dims.get(n.input[1], [])) == 4 and dims[n.input[1]][1] * _group(n) <= STEM_MAX_CHANNELS]


def _group(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _weight_axis(op: str, node: Any, rank: int) -> int | None:
    """The output-channel axis of a node's weight input (input 1), or None if the op is not handled."""
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1 if rank > 1 else None
    if op == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if op == "MatMul":
        return rank - 1 if rank >= 2 else None
    return None


def weight_only_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Store Conv/Gemm/MatMul weights as int8 + per-channel fp32 scale, dequantized by Cast + Mul (folded at load)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    chosen: dict[str, int] = {}
    for node in graph.node:
        if len(node.input) < 2 or node.input[1] not in inits or node.input[1] in graph_inputs:
            continue
        t = inits[node.input[1]]
        if t.data_type != TensorProto.FLOAT:
            continue
        axis = _weight_axis(node.op_type, node, len(t.dims))
        if axis is None or int(np.prod(t.dims)) < MIN_WEIGHT_ELEMENTS:
            continue
        if chosen.get(t.name, axis) != axis:  # shared with a different layout: leave it fp32
            chosen[t.name] = -1
            continue
        chosen[t.name] = axis
    new_nodes, n_q, n_el = [], 0, 0
    for name, axis in chosen.items():
        if axis < 0:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        shape = [1] * w.ndim
        shape[axis] = -1
        scale = (np.maximum(np.abs(w).max(axis=reduce), 1e-12) / 127.0).astype(np.float32).reshape(shape)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                  numpy_helper.from_array(scale, f"{name}_scale")])
        new_nodes += [helper.make_node("Cast", [f"{name}_int8"], [f"{name}_f32"], to=TensorProto.FLOAT,
                                       name=f"{name}_dequant_cast"),
                      helper.make_node("Mul", [f"{name}_f32", f"{name}_scale"], [name], name=f"{name}_dequant_mul")]
        n_q += 1
        n_el += int(q.size)
    if not n_q:
        raise UserError("w8a32: the model has no Conv/Gemm/MatMul weights to quantize")
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)  # dequantization first keeps the graph topologically sorted
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return {"activations": "float32", "weights": "int8 per-channel symmetric (weight-only)",
            "compute": "float32 (onnxruntime folds Cast+Mul into fp32 weights at session load)",
            "quantized_tensors": n_q, "quantized_weights": n_el, "calibration_samples": 0,
            "tool": "kdmobile weight-only int8 (Cast + Mul)"}


def file_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a directory (.mlpackage)."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size
