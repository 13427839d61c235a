"""PyTorch -> ExecuTorch .pte: torch.export, XNNPACK delegate, int8 through the XNNPACK PT2E quantizer, metadata inside.

fp32: ``torch.export.export`` -> ``executorch.exir.to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``
-> ``to_executorch()``. int8: the exported graph is prepared with ``XNNPACKQuantizer`` (symmetric int8, per-channel
weights, per-tensor static activations: ``get_symmetric_quantization_config(is_per_channel=True)``) through
torchao's ``prepare_pt2e``, calibrated on the job's calibration inputs, ``convert_pt2e``-ed, exported again and
lowered the same way. Ops XNNPACK does not take (a student's pooling/LayerNorm/L2-normalise head) stay on
ExecuTorch's portable kernels; the manifest records how many. The input shape is static (the example's batch of 1),
as on a phone. kdmobile's metadata is a constant method of the program (kdmobile.export.metadata).
"""

from __future__ import annotations

import time
from collections import Counter
from importlib import metadata as dist
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from kdmobile.errors import KDError, ToolError, UserError
from kdmobile.export.metadata import executorch_constants
from kdmobile.export.conversion import calibration_batches, eval_mode, first_line, quiet_native_output
from kdmobile.fileio import atomic_path
from kdmobile.targets import TARGETS

QUANT_SCHEME = "XNNPACKQuantizer static int8: symmetric, per-channel weights, per-tensor activations"
_SKIP = {"getitem", "executorch_call_delegate"}  # graph plumbing, not operators left outside the delegate


def _version(name: str) -> str:
    try:
        return dist.version(name)
    except dist.PackageNotFoundError:
        return "not installed"


def _import() -> tuple[Any, Any]:
    """(to_edge_transform_and_lower, XnnpackPartitioner), or a one-line install hint."""
    try:
        with quiet_native_output():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as e:
        raise UserError(f"executorch export unavailable ({e}); pip install 'kdmobile[executorch]'") from None
    return to_edge_transform_and_lower, XnnpackPartitioner


def quantize_int8(model: nn.Module, example: torch.Tensor, batches: list[np.ndarray]) -> Any:
    """The model exported, annotated by XNNPACKQuantizer, calibrated on `batches`, converted and exported again."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise UserError(f"executorch int8 unavailable ({e}); pip install 'kdmobile[executorch]'") from None
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    for x in batches:
        prepared(torch.from_numpy(x))
    return torch.export.export(convert_pt2e(prepared), (example,))


def _portable_ops(program: Any) -> dict[str, int]:
    """Operators left outside the XNNPACK delegate (run by ExecuTorch's portable kernels), with counts."""
    names = Counter(getattr(n.target, "__name__", str(n.target)) for n in program.graph_module.graph.nodes
                    if n.op == "call_function")
    return {k: v for k, v in sorted(names.items()) if k not in _SKIP and not k.startswith("dim_order_ops.")}


def _delegates(program: Any) -> int:
    return sum(1 for n in program.graph_module.graph.nodes
               if n.op == "call_function" and "executorch_call_delegate" in str(n.target))


def convert_executorch(model: nn.Module, example: torch.Tensor, out_path: Path, precision: str,
                       calibration: np.ndarray | None, metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write `model` as an XNNPACK-delegated .pte at `out_path` in fp32 or int8; return the manifest's export info.

    `calibration` ((N, *example.shape[1:]) float32) calibrates int8 activations. Converter failures are a one-line
    ToolError naming the first line of the cause; a precision the target does not offer is a UserError.
    """
    offered = TARGETS["executorch"].precisions
    if precision not in offered:
        raise UserError(f"executorch: precision {precision!r} is not offered (choose {', '.join(offered)}): XNNPACK "
                        "fp16 ran slower than fp32 at the same file size")
    if precision == "int8" and calibration is None:
        raise UserError("executorch int8 needs calibration data (static activation ranges); none was given")
    batches = calibration_batches(calibration, tuple(example.shape)) if precision == "int8" else []
    lower, partitioner = _import()
    t0 = time.perf_counter()
    try:
        with eval_mode(model), torch.no_grad(), quiet_native_output():
            exported = quantize_int8(model, example, batches) if batches else torch.export.export(model, (example,))
            t_quant = time.perf_counter() - t0
            edge = lower(exported, partitioner=[partitioner()],
                         constant_methods=executorch_constants(metadata or {}))
            lowered = edge.exported_program()  # to_executorch() rewrites it in place: count first
            partitions, portable = _delegates(lowered), _portable_ops(lowered)
            data = bytes(edge.to_executorch().buffer)
    except KDError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export, the quantizer and the lowering raise many kinds
        raise ToolError(f"executorch {precision} conversion failed: {first_line(exc)}") from exc
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
    info: dict[str, Any] = {
        "converter": f"executorch {_version('executorch')} (torch.export, to_edge_transform_and_lower)",
        "delegate": "XnnpackPartitioner", "xnnpack_partitions": partitions, "portable_ops": portable,
        "input_layout": "NCHW", "static_shape": list(example.shape), "bytes": len(data),
        "convert_seconds": round(time.perf_counter() - t0, 2), "metadata": TARGETS["executorch"].metadata,
    }
    if batches:
        info.update(quantizer=f"torchao {_version('torchao')} prepare_pt2e/convert_pt2e",
                    calibration_inputs=len(batches), quantize_seconds=round(t_quant, 2))
    return info
