"""The bundle manifest as a typed (pydantic) model: one definition for the Python writer and reader, and the JSON
Schema shipped for the Android demo's Java and JavaScript readers (`android_demo/manifest.schema.json`).

Validation errors become one `VerificationError` line listing every problem, as a user reading a refused bundle needs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from kdmobile.errors import VerificationError
from kdmobile.targets import PRECISIONS, TARGETS, target_names
from kdmobile.untrusted import MAX_CLASSES

Number = Union[StrictInt, StrictFloat]
SCHEMA_VERSION = 3  # 2: sealed by bundle.sha256, no unlisted files or links; 3: `head` (what it outputs) + `task`
HEADS = ("retrieval", "forecast")  # what a bundle outputs: the manifest's `head` (kdmobile.runtime.predictors)

# Limits every reader (Python here, Java and JS through manifest.schema.json) applies before allocating anything a
# manifest declares: a re-sealed manifest claiming a 60000x60000 input must not make a phone or `export --verify`
# allocate 40 GiB.
MAX_DIM = 16_384                   # any one input dimension (side, channels, frames)
MAX_INPUT_ELEMENTS = 1 << 26       # values in one input sample (256 MiB as float32)
MAX_EMBED_DIM = 65_536
MAX_CLASS_VECTOR_ELEMENTS = 1 << 28  # 1 GiB of float32
FLOAT32_MAX = 3.4028234663852886e38     # every reader computes in float32 (Java casts, numpy float32 inputs)
FLOAT32_MIN_NORMAL = 1.1754943508222875e-38  # a smaller std is 0 (or denormal) once cast: a division by nothing
_POSITIVE = {"type": "number", "minimum": FLOAT32_MIN_NORMAL, "maximum": FLOAT32_MAX}


class _Part(BaseModel):
    """A manifest section: strict types (a JSON boolean is no number), unknown keys kept for newer writers."""

    model_config = ConfigDict(strict=True, extra="allow")


def _finite(v: Any) -> bool:
    """A JSON number (not a boolean) that float32 holds."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= FLOAT32_MAX


def _positive(v: Any) -> bool:
    return _finite(v) and v >= FLOAT32_MIN_NORMAL


def _dims(shape: list[Any], limits: list[int], max_elements: int) -> bool:
    """Whether `shape` holds len(limits) integers, each in 1..its limit, whose product is at most `max_elements`."""
    if len(shape) != len(limits) or not all(type(d) is int and 1 <= d <= hi for d, hi in zip(shape, limits)):
        return False
    return math.prod(shape) <= max_elements


class InputSpec(_Part):
    name: StrictStr
    shape: list[Any] = Field(json_schema_extra={
        "minItems": 4, "maxItems": 4, "items": {"type": "integer", "minimum": 1, "maximum": MAX_DIM},
        "x-kdmobile-max-elements": MAX_INPUT_ELEMENTS})
    dtype: Literal["float32"]
    layout: Literal["NCHW", "NTHW"]
    value_range: list[Any]
    mean: list[Any] = Field(json_schema_extra={"minItems": 1, "items": {"type": "number"}})
    std: list[Any] = Field(json_schema_extra={"minItems": 1, "items": _POSITIVE})

    @model_validator(mode="after")
    def _values(self) -> "InputSpec":
        """Impossible preprocessing is refused: a zero or negative std divides by nothing (every probability printed
        as nan), a non-finite mean or range poisons every input, a shape over the limits would be allocated."""
        if not _dims(self.shape, [MAX_DIM] * 4, MAX_INPUT_ELEMENTS):
            raise ValueError(f"shape must be 4 integers in 1..{MAX_DIM} with at most {MAX_INPUT_ELEMENTS} values "
                             f"per sample, got {str(self.shape)[:80]}")
        if not self.mean or len(self.mean) != len(self.std) or (self.layout == "NCHW"
                                                                 and len(self.mean) != self.shape[1]):
            raise ValueError("mean and std must have one entry per channel")
        if not all(_finite(v) for v in self.mean) or not all(_positive(v) for v in self.std):
            raise ValueError("mean must be finite numbers and std finite numbers > 0")
        vr = self.value_range
        if len(vr) != 2 or not all(_finite(v) for v in vr) or not vr[0] < vr[1]:
            raise ValueError("value_range must be two finite numbers, low < high")
        return self


class ClassVectorsSpec(_Part):
    file: StrictStr
    shape: list[Any] = Field(json_schema_extra={
        "minItems": 2, "maxItems": 2,
        "prefixItems": [{"type": "integer", "minimum": 1, "maximum": MAX_CLASSES},
                        {"type": "integer", "minimum": 1, "maximum": MAX_EMBED_DIM}],
        "x-kdmobile-max-elements": MAX_CLASS_VECTOR_ELEMENTS})
    dtype: Literal["float32"]
    byte_order: Literal["little"]

    @model_validator(mode="after")
    def _shape(self) -> "ClassVectorsSpec":
        if not _dims(self.shape, [MAX_CLASSES, MAX_EMBED_DIM], MAX_CLASS_VECTOR_ELEMENTS):
            raise ValueError(f"shape must be [classes 1..{MAX_CLASSES}, dimension 1..{MAX_EMBED_DIM}] with at most "
                             f"{MAX_CLASS_VECTOR_ELEMENTS} values, got {str(self.shape)[:80]}")
        return self


class RetrievalSpec(_Part):
    class_vectors: ClassVectorsSpec
    logit_scale: Number = Field(json_schema_extra=_POSITIVE)
    labels_file: StrictStr
    prompt_templates: list[Any]

    @model_validator(mode="after")
    def _scale(self) -> "RetrievalSpec":
        """A logit scale <= 0 inverts (or flattens) the ranking: refused."""
        if not _positive(self.logit_scale):
            raise ValueError("logit_scale must be a finite number > 0")
        return self


class ForecastSpec(_Part):
    frames_in: StrictInt = Field(json_schema_extra={"minimum": 1, "maximum": MAX_DIM})
    frames_out: StrictInt = Field(json_schema_extra={"minimum": 1, "maximum": MAX_DIM})
    mean: Number
    std: Number = Field(json_schema_extra=_POSITIVE)

    @model_validator(mode="after")
    def _norm(self) -> "ForecastSpec":
        if not all(1 <= n <= MAX_DIM for n in (self.frames_in, self.frames_out)):
            raise ValueError(f"frames_in and frames_out must be in 1..{MAX_DIM}")
        if not (_finite(self.mean) and _positive(self.std)):
            raise ValueError("mean must be finite and std a finite number > 0")
        return self


class _Manifest(_Part):
    schema_version: StrictInt
    target: StrictStr = Field(json_schema_extra=lambda s: s.update(enum=list(target_names())))
    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    model_file: StrictStr
    input: InputSpec
    outputs: list[Any]
    files: dict[str, Any]

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        """A registered target (kdmobile.targets), the built-in four or one a plugin added; reported like a Literal
        field, alongside any other problem."""
        if v not in TARGETS:
            names = [repr(n) for n in target_names()]
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": ", ".join(names[:-1]) + " or " + names[-1]})
        return v


class RetrievalManifest(_Manifest):
    head: Literal["retrieval"]               # what the bundle outputs: an embedding matched against a gallery
    task: Literal["classes", "captions"]     # what its gallery holds (kdmobile.tasks)
    retrieval: RetrievalSpec


class ForecastManifest(_Manifest):
    head: Literal["forecast"]
    task: Literal["forecast"]
    forecast: ForecastSpec


Manifest = Annotated[Union[RetrievalManifest, ForecastManifest], Field(discriminator="head")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Manifest)
_TYPE_NAMES = {"string": "str", "int": "int", "float": "a number", "list": "list", "dict": "dict",
               "model": "dict", "model_attributes": "dict", "dataclass": "dict"}


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (what android_demo/manifest.schema.json holds)."""
    schema = _ADAPTER.json_schema()
    schema["title"] = "kdmobile bundle manifest"
    schema["description"] = (f"manifest.json of a kdmobile bundle (schema_version {SCHEMA_VERSION}). Sealed by "
                             "bundle.sha256, which a reader checks before parsing this file.")
    return schema


def _loc(err: dict[str, Any], head: str | None) -> str:
    """Dotted field name of a pydantic error, without the union tag."""
    parts = [str(p) for p in err["loc"]]
    if parts and parts[0] == head:
        parts = parts[1:]
    return ".".join(parts)


def _problem(err: dict[str, Any], head: str | None) -> str:
    """One readable problem from a pydantic error (a number field's two union branches read as one)."""
    parts = _loc(err, head).split(".")
    if parts[-1] in ("int", "float"):
        return f"{'.'.join(parts[:-1])} should be a number"
    where = ".".join(parts)
    if err["type"] == "value_error":
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    if err["type"] == "literal_error":
        expected = [e.strip(" '") for e in err["ctx"]["expected"].replace(" or ", ", ").split(",")]
        return f"{where}={err['input']!r} (expected one of {', '.join(expected)})"
    kind = err["type"].split("_type")[0].removesuffix("_parsing")
    return f"{where} should be {_TYPE_NAMES.get(kind, kind)}"


def check_fields(manifest: Any, where: str = "manifest") -> None:
    """Required fields, their types and allowed values; one UserError listing every problem."""
    if not isinstance(manifest, dict):
        raise VerificationError(f"{where}: manifest.json must hold a JSON object")
    head = manifest.get("head")
    if head not in HEADS:
        if "head" not in manifest:
            raise VerificationError(f"{where}: missing required fields: head")
        raise VerificationError(f"{where}: invalid manifest: head={head!r} (expected one of {', '.join(HEADS)})")
    try:
        _ADAPTER.validate_python(manifest)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        missing = [_loc(x, head) for x in errors if x["type"] == "missing"]
        if missing:
            raise VerificationError(f"{where}: missing required fields: {', '.join(missing)}") from None
        problems = list(dict.fromkeys(_problem(x, head) for x in errors))
        raise VerificationError(f"{where}: invalid manifest: {'; '.join(problems)}") from None


def write_json_schema(path: str | Path) -> None:
    """Write the JSON Schema file shipped with the Android demo."""
    import json

    Path(path).write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
