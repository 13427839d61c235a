"""kdmobile's metadata inside every model file: one dict, the same keys and values in ONNX, TFLite, CoreML and .pte.

A model file copied out of its bundle still says what it is (task, run, target, precision, I/O names, kdmobile
version). Where each format keeps it is stated in kdmobile.targets; this module builds the dict, writes it into each
format and reads it back (`read_metadata(path) -> dict[str, str]`). Writers run inside the converters, before the
bundle is staged and sealed, so the seal covers the file as it carries its metadata. Heavy packages are imported
inside the functions; the TFLite reader needs only ai-edge-litert's flatbuffer schema (no torch); the ExecuTorch
reader runs the program's constant method through executorch.runtime (which imports torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from kdmobile import __version__
from kdmobile.errors import UserError
from kdmobile.runtime.backends import EXECUTORCH_METADATA_METHOD, load_executorch_program
from kdmobile.targets import TARGETS, resolve, target_of

METADATA_KEYS: tuple[str, ...] = ("kdmobile_version", "kdmobile_head", "kdmobile_run", "kdmobile_target",
                                  "kdmobile_precision", "input_name", "output_name")
TFLITE_METADATA_NAME = "kdmobile"  # the flatbuffer Model.metadata entry; its buffer holds the dict as UTF-8 JSON
_COREML_OWN = "com.github.apple."  # user_defined_metadata keys coremltools adds itself (source, version, dialect)
_ONNX_OWN = "onnx."  # metadata_props onnxruntime's tools add themselves (onnx.infer, onnx.quant.pre_process)


def model_metadata(head: str, run: str, target: str, precision: str, input_name: str,
                   output_name: str) -> dict[str, str]:
    """The metadata every model file carries (keys METADATA_KEYS, all values strings)."""
    values = (__version__, head, run, target, precision, input_name, output_name)
    return {k: str(v) for k, v in zip(METADATA_KEYS, values)}


# ------------------------------------------------------------------------------------------------------- writers
def write_onnx(path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Carry the metadata inside the .onnx file itself (metadata_props, as Ultralytics does)."""
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for k, v in metadata.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            model.metadata_props.add(key=str(k), value=str(v))
    onnx.save(model, str(path))


def embed_tflite(model_bytes: bytes, metadata: Mapping[str, Any]) -> bytes:
    """The .tflite flatbuffer with a Model.metadata entry TFLITE_METADATA_NAME pointing at a new buffer that holds
    the metadata as UTF-8 JSON (replaced if present). Re-serialised with ai-edge-litert's flatbuffer object API, the
    way ai-edge-quantizer writes its models; tensors, operators and signatures are unchanged."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    payload = json.dumps({str(k): str(v) for k, v in metadata.items()}, sort_keys=True, ensure_ascii=False)
    data = np.frombuffer(payload.encode("utf-8"), dtype=np.uint8)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    entries = list(model.metadata or [])
    ours = next((m for m in entries if _text(m.name) == TFLITE_METADATA_NAME), None)
    if ours is None:
        model.buffers.append(schema.BufferT(data=data))
        entries.append(schema.MetadataT(name=TFLITE_METADATA_NAME, buffer=len(model.buffers) - 1))
    else:
        model.buffers[ours.buffer] = schema.BufferT(data=data)
    model.metadata = entries
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def executorch_constants(metadata: Mapping[str, Any]) -> dict[str, str]:
    """`constant_methods` for ExecuTorch's to_edge_transform_and_lower: one method, EXECUTORCH_METADATA_METHOD,
    that takes no input and returns the metadata as a JSON string (emitted as a String EValue in the .pte)."""
    payload = json.dumps({str(k): str(v) for k, v in metadata.items()}, sort_keys=True, ensure_ascii=False)
    return {EXECUTORCH_METADATA_METHOD: payload}


def _text(name: Any) -> str:
    return name.decode("utf-8", errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)


# ------------------------------------------------------------------------------------------------------- readers
def read_onnx(path: str | Path) -> dict[str, str]:
    """metadata_props of an .onnx file (onnx, else onnxruntime's model metadata), without the keys onnxruntime's
    quantization tools add themselves."""
    try:
        import onnx
    except ImportError:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        props = dict(session.get_modelmeta().custom_metadata_map)
    else:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {k: v for k, v in props.items() if not k.startswith(_ONNX_OWN)}


def read_tflite(path: str | Path) -> dict[str, str]:
    """The JSON object in the TFLITE_METADATA_NAME metadata buffer of a .tflite file ({} when there is none)."""
    from ai_edge_litert import schema_py_generated as schema

    raw = Path(path).read_bytes()
    model = schema.Model.GetRootAs(raw, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _text(entry.Name()) != TFLITE_METADATA_NAME:
            continue
        buf = model.Buffers(entry.Buffer())
        if buf.Offset() > 1:  # large-model layout: the data sits after the flatbuffer
            data = raw[buf.Offset(): buf.Offset() + buf.Size()]
        else:
            data = buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
        return _json_object(path, TFLITE_METADATA_NAME, data)
    return {}


def _json_object(path: str | Path, name: str, data: bytes | str) -> dict[str, str]:
    """The metadata entry `name` parsed as a JSON object of strings (one-line UserError otherwise)."""
    try:
        value = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{path}: the {name!r} metadata is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: the {name!r} metadata is not a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def read_coreml(path: str | Path) -> dict[str, str]:
    """user_defined_metadata of a .mlpackage, without the keys coremltools adds itself (spec only: no macOS)."""
    from kdmobile.export.conversion import quiet_native_output

    with quiet_native_output():
        import coremltools as ct

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    return {k: v for k, v in spec.description.metadata.userDefined.items() if not k.startswith(_COREML_OWN)}


def read_executorch(path: str | Path) -> dict[str, str]:
    """The JSON object the EXECUTORCH_METADATA_METHOD constant method of a .pte returns ({} when there is none)."""
    program = load_executorch_program(path)
    if EXECUTORCH_METADATA_METHOD not in program.method_names:
        return {}
    values = list(program.load_method(EXECUTORCH_METADATA_METHOD).execute([]))
    if len(values) != 1 or not isinstance(values[0], str):
        raise UserError(f"{path}: the {EXECUTORCH_METADATA_METHOD!r} method does not return one string")
    return _json_object(path, EXECUTORCH_METADATA_METHOD, values[0])



def read_metadata(path: str | Path) -> dict[str, str]:
    """kdmobile's metadata from a model file of any target, chosen by its suffix."""
    target = target_of(path)
    if target is None:
        suffixes = ", ".join(t.suffix for t in TARGETS.values())
        raise UserError(f"{path}: not a model file of a kdmobile target ({suffixes})")
    if not Path(path).exists():
        raise UserError(f"{path}: no such model file")
    return resolve(target.metadata_reader)(path)
