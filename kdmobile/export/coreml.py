"""PyTorch -> CoreML ``.mlpackage`` (ML Program) with coremltools, and a spec-level check that works on Linux.

fp32 and fp16 set the ML Program's compute precision; int8 keeps float32 compute and stores the weights as
int8 (``ct.optimize.coreml.linear_quantize_weights``, per-channel linear-symmetric), which the model dequantizes
when it loads (``constexpr_affine_dequantize`` ops for an iOS16 target). Every precision keeps float32 input and
output tensors, so callers feed them alike.

CoreML prediction needs macOS (the compiled-model runtime ships only there). On Linux the saved package is
reloaded without compiling it and its spec is checked: input/output names, shapes and dtypes, the metadata,
and for int8 that quantized weights are present. On macOS one prediction is run as well and compared with
PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections import Counter
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from kdmobile import __version__
from kdmobile.errors import KDError, ToolError, UserError
from kdmobile.export.conversion import eval_mode, first_line, quiet_native_output
from kdmobile.fileio import atomic_path
from kdmobile.targets import PRECISIONS
# Ops that hold compressed weights in an ML Program (iOS16/17: affine; iOS18+: blockwise shift-scale).
QUANTIZED_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
# Metadata keys that go to the model's own description fields instead of user_defined_metadata.
_DESCRIPTION_KEYS = ("author", "short_description", "license")
_NOTE_LINUX = "CoreML prediction needs macOS; spec validated on Linux, not run"


def _meta_str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@contextlib.contextmanager
def _coreml_context() -> Iterator[Any]:
    """Import coremltools quietly (it prints version warnings and missing-native-library lines on Linux)."""
    with quiet_native_output():
        try:
            import coremltools as ct
        except ImportError as exc:
            raise UserError("CoreML export needs coremltools: pip install 'kdmobile[coreml]'") from exc
    yield ct


def _trace(model: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, torch.Tensor]:
    out = model(example)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"CoreML export supports models with one tensor output; got {type(out).__name__}")
    traced = torch.jit.trace(model, (example,), check_trace=False)
    return traced, out


def _spec_ops(spec: Any) -> Counter:
    ops: Counter = Counter()

    def walk(block: Any) -> None:
        for op in block.operations:
            ops[op.type] += 1
            for inner in op.blocks:
                walk(inner)

    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            walk(block)
    return ops


def _feature(feature: Any) -> dict[str, Any]:
    arr = feature.type.multiArrayType
    dtypes = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32"}
    return {"name": feature.name, "shape": [int(d) for d in arr.shape],
            "dtype": dtypes.get(int(arr.dataType), str(arr.dataType))}


def validate_mlpackage(path: Path, input_name: str, input_shape: tuple[int, ...], output_name: str,
                       output_shape: tuple[int, ...], metadata: Mapping[str, str] | None = None,
                       precision: str | None = None) -> dict[str, Any]:
    """Reload a saved .mlpackage without compiling it (works on Linux) and check its spec; KDError if wrong."""
    with _coreml_context() as ct:
        try:
            with quiet_native_output():
                spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        except Exception as exc:
            raise UserError(f"{path}: not a readable CoreML package ({first_line(exc)})") from exc
    inputs = [_feature(f) for f in spec.description.input]
    outputs = [_feature(f) for f in spec.description.output]
    problems = []
    if [i["name"] for i in inputs] != [input_name] or inputs[0]["shape"] != list(input_shape):
        problems.append(f"inputs {inputs} != {input_name}{list(input_shape)}")
    if [o["name"] for o in outputs] != [output_name] or outputs[0]["shape"] != list(output_shape):
        problems.append(f"outputs {outputs} != {output_name}{list(output_shape)}")
    if any(f["dtype"] != "float32" for f in inputs + outputs):
        problems.append("input/output dtype is not float32")
    user = dict(spec.description.metadata.userDefined)
    for key, value in (metadata or {}).items():
        if key in _DESCRIPTION_KEYS:
            continue
        if user.get(key) != _meta_str(value):
            problems.append(f"metadata '{key}' missing or different")
    ops = _spec_ops(spec)
    n_quant = sum(ops[o] for o in QUANTIZED_WEIGHT_OPS)
    if precision == "int8" and n_quant == 0:
        problems.append("int8 requested but the program holds no quantized weights")
    if problems:
        raise UserError(f"coreml validation failed for {path.name}: " + "; ".join(problems))
    return {
        "validated": True,
        "spec_version": int(spec.specificationVersion),
        "inputs": inputs,
        "outputs": outputs,
        "metadata_keys": sorted(user),
        "quantized_weight_ops": n_quant,
        "op_types": sorted(ops),
    }


def convert_coreml(model: nn.Module, example: torch.Tensor, out_path: Path, precision: str,
                   metadata: Mapping[str, Any], input_name: str = "image",
                   output_name: str = "embedding") -> dict[str, Any]:
    """Convert `model(example)` to an ML Program `.mlpackage` at `out_path`; validate it; return a manifest entry.

    - Traced with torch.jit.trace (MHA fast path off, eval mode; both restored afterwards), converted with
      `ct.convert(convert_to="mlprogram", minimum_deployment_target=iOS16)`; input and output are float32
      tensors named `input_name` / `output_name` with the example's fixed shape (NCHW as PyTorch has it).
    - precision: fp32 (FLOAT32 compute), fp16 (FLOAT16 compute), int8 (FLOAT32 compute, int8 per-channel
      linear-symmetric weights via `ct.optimize.coreml.linear_quantize_weights`).
    - metadata: "author", "short_description", "license" fill the model description; every other key goes to
      `user_defined_metadata` (non-string values JSON-encoded, e.g. labels); "kdmobile_version" and
      "kdmobile_precision" are added unless given (the keys of kdmobile.export.metadata, as in ONNX and TFLite),
      and the short description names "kdmobile_head".
    - The package is written to a temporary sibling and renamed into place.

    Returns {"validated": True, "inputs", "outputs", "metadata_keys", "quantized_weight_ops", "op_types",
    "ran_prediction", "note", ...}. On Linux prediction cannot run ("ran_prediction": False and the note says so).
    On macOS (platform.system() == "Darwin") one prediction is run and "parity" holds max_abs_diff and cosine
    against PyTorch; that path cannot be exercised on the Linux machines this project is tested on.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' for coreml; choose one of {', '.join(PRECISIONS)}")
    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise UserError(f"{out_path}: a CoreML ML Program must be saved as a .mlpackage directory")
    meta = {k: _meta_str(v) for k, v in metadata.items()}
    meta.setdefault("kdmobile_version", __version__)
    meta.setdefault("kdmobile_precision", precision)
    example = example.detach().to(torch.float32)

    t0 = time.perf_counter()
    with _coreml_context() as ct:
        try:
            with eval_mode(model), torch.no_grad(), quiet_native_output():
                traced, reference = _trace(model, example)
                mlmodel = ct.convert(
                    traced,
                    convert_to="mlprogram",
                    inputs=[ct.TensorType(name=input_name, shape=tuple(example.shape), dtype=np.float32)],
                    outputs=[ct.TensorType(name=output_name, dtype=np.float32)],
                    compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                    minimum_deployment_target=ct.target.iOS16,
                )
                if precision == "int8":
                    cfg = ct.optimize.coreml.OptimizationConfig(
                        global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                 dtype="int8"))
                    mlmodel = ct.optimize.coreml.linear_quantize_weights(mlmodel, config=cfg)
        except KDError:
            raise
        except Exception as exc:  # tracing and the MIL frontend raise many types
            raise ToolError(f"coreml conversion failed: {first_line(exc)}") from exc

        mlmodel.author = meta.pop("author", "kdmobile")
        mlmodel.short_description = meta.pop(
            "short_description", f"kdmobile {meta.get('kdmobile_head', 'model')} ({precision})")
        if "license" in meta:
            mlmodel.license = meta.pop("license")
        for key, value in meta.items():
            mlmodel.user_defined_metadata[key] = value
        # Save to a temporary sibling, validate that copy, and only then rename it into place.
        with atomic_path(out_path) as tmp:
            try:
                with quiet_native_output():
                    mlmodel.save(str(tmp))
            except Exception as exc:
                raise ToolError(f"coreml save failed: {first_line(exc)}") from exc
            t_convert = time.perf_counter() - t0
            info = validate_mlpackage(tmp, input_name, tuple(example.shape), output_name,
                                      tuple(reference.shape), meta, precision)
    info.update(
        converter=f"coremltools {_version('coremltools')}",
        precision=precision,
        compute_precision="float16" if precision == "fp16" else "float32",
        weights="int8 linear_symmetric per-channel" if precision == "int8" else
        ("float16" if precision == "fp16" else "float32"),
        minimum_deployment_target="iOS16",
        convert_seconds=round(t_convert, 2),
        bytes=_dir_size(out_path),
    )
    if platform.system() == "Darwin":
        info.update(_predict_parity(out_path, input_name, output_name, example, reference))
    else:
        info.update(ran_prediction=False, note=_NOTE_LINUX)
    return info


def _predict_parity(path: Path, input_name: str, output_name: str, example: torch.Tensor,
                    reference: torch.Tensor) -> dict[str, Any]:
    """macOS only: run one prediction and compare it with PyTorch (not exercised on Linux)."""
    with _coreml_context() as ct:
        try:
            loaded = ct.models.MLModel(str(path))
            got = np.asarray(loaded.predict({input_name: example.numpy()})[output_name], dtype=np.float32)
        except Exception as exc:
            raise ToolError(f"coreml prediction failed: {first_line(exc)}") from exc
    ref = reference.detach().numpy().astype(np.float32).reshape(got.shape)
    a, b = got.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    return {"ran_prediction": True, "note": "CoreML prediction run on macOS",
            "parity": {"max_abs_diff": float(np.abs(got - ref).max()), "cosine": cos}}


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"
