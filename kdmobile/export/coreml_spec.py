"""What can be checked of a CoreML package on a machine that cannot run it (CoreML predicts only on macOS): the
spec loads and its one input and output match the bundle's manifest. The CoreML target row names this check."""

from __future__ import annotations

from typing import Any

from kdmobile.bundle import Bundle


def check_spec(bundle: Bundle) -> dict[str, Any]:
    """Validate a CoreML package's spec on a machine that cannot run it: loads, one input/output, shapes match."""
    try:
        import coremltools as ct
    except ImportError:
        return {"status": "not checked (coremltools not installed)", "flagged": False}
    try:
        spec = ct.models.MLModel(str(bundle.model_path), skip_model_load=True).get_spec()
    except Exception as e:  # noqa: BLE001 - a corrupt package raises many kinds
        return {"status": f"FLAGGED: CoreML spec unreadable ({type(e).__name__})", "flagged": True}
    ins = [(i.name, [int(s) for s in i.type.multiArrayType.shape]) for i in spec.description.input]
    outs = [o.name for o in spec.description.output]
    problems = []
    if len(ins) != 1 or len(outs) != 1:
        problems.append(f"expected 1 input and 1 output, got {len(ins)} and {len(outs)}")
    elif ins[0][1] and ins[0][1][1:] != list(bundle.input["shape"][1:]):
        problems.append(f"input shape {ins[0][1]} != manifest {bundle.input['shape']}")
    status = ("FLAGGED: " + "; ".join(problems)) if problems else "spec ok (CoreML predicts on macOS only)"
    return {"status": status, "flagged": bool(problems), "spec": {"inputs": ins, "outputs": outs},
            "spec_version": int(spec.specificationVersion)}
