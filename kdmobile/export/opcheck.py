"""Before converting: trace the model and refuse, in one line, operators a target is known not to take.

The deny-lists (kdmobile.targets, one per target) are small and explicit (what was seen to fail, or what the bundle
contract rules out); a converter error is still caught and reported per artifact by the exporter. FFTs and complex
tensors are refused for every target.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Iterable

from kdmobile.errors import UserError
from kdmobile.targets import TARGETS

# target -> {operator regex: why}; the deny-lists themselves are in the target table (kdmobile.targets)
COMPLEX_MARK = "complex tensors"


def _name(target: Any) -> str:
    """'aten._fft_r2c.default' -> 'aten._fft_r2c'; 'aten::fft_rfft2' -> 'aten.fft_rfft2'."""
    s = str(target).replace("::", ".")
    parts = s.split(".")
    if len(parts) >= 3 and parts[0] in ("aten", "prims", "quantized_decomposed"):
        return ".".join(parts[:2])
    return s


def _is_complex(val: Any) -> bool:
    dtype = getattr(val, "dtype", None)
    return bool(getattr(dtype, "is_complex", False))


def traced_ops(model: Any, example: Any) -> set[str]:
    """ATen operator names (core-ATen, after decompositions) the model runs on `example`, plus COMPLEX_MARK if any
    intermediate tensor is complex. torch.export first; TorchScript tracing where torch.export cannot trace."""
    import torch

    model = model.eval()
    ops: set[str] = set()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            ep = torch.export.export(model, (example,))
            graphs = [ep.graph]
            try:
                graphs.append(ep.run_decompositions().graph)
            except Exception:  # noqa: BLE001 - the undecomposed graph is still informative
                pass
        for graph in graphs:
            for node in graph.nodes:
                if node.op == "call_function":
                    ops.add(_name(node.target))
                    vals = node.meta.get("val")
                    if any(_is_complex(v) for v in (vals if isinstance(vals, (tuple, list)) else [vals])):
                        ops.add(COMPLEX_MARK)
        return ops
    except Exception as first:  # noqa: BLE001 - fall back to the TorchScript tracer
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, (example,), check_trace=False)
        except Exception as second:  # noqa: BLE001
            raise UserError(f"cannot trace the model to check its operators (torch.export: "
                          f"{type(first).__name__}; jit.trace: {type(second).__name__}: {second})") from None
        for node in traced.inlined_graph.nodes():
            ops.add(_name(node.kind()))
            for out in node.outputs():
                t = out.type()
                dtype = getattr(t, "dtype", lambda: None)() if hasattr(t, "dtype") else None
                if dtype is not None and dtype.is_complex:
                    ops.add(COMPLEX_MARK)
        return ops


def unsupported(ops: Iterable[str], target: str) -> list[str]:
    """The operators in `ops` that `target` cannot take (sorted)."""
    rules = [re.compile(p) for p in (TARGETS[target].deny_ops if target in TARGETS else {})]
    bad = {op for op in ops if op == COMPLEX_MARK or any(r.search(op) for r in rules)}
    return sorted(bad)


def check_ops(model: Any, example: Any, targets: Iterable[str]) -> set[str]:
    """Refuse with one KDError listing, per target, the operators it cannot take; returns the traced op set."""
    ops = traced_ops(model, example)
    problems = []
    for target in targets:
        bad = unsupported(ops, target)
        if bad:
            problems.append(f"model uses operators {target} cannot take: {', '.join(bad)}")
    if problems:
        raise UserError("; ".join(problems))
    return ops
