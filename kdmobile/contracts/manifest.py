"""The bundle manifest as a typed (pydantic) model: one definition for the Python writer and reader, and the JSON
Schema shipped for the Android demo's Java and JavaScript readers (`android_demo/manifest.schema.json`).

Validation errors become one `VerificationError` line listing every problem, as a user reading a refused bundle needs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError,
                      model_validator)

from kdmobile.errors import VerificationError
from kdmobile.targets import PRECISIONS, TARGET_NAMES

Number = Union[StrictInt, StrictFloat]
TASKS = ("retrieval", "forecast")


class _Part(BaseModel):
    """A manifest section: strict types (a JSON boolean is no number), unknown keys kept for newer writers."""

    model_config = ConfigDict(strict=True, extra="allow")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class InputSpec(_Part):
    name: StrictStr
    shape: list[Any]
    dtype: Literal["float32"]
    layout: Literal["NCHW", "NTHW"]
    value_range: list[Any]
    mean: list[Any]
    std: list[Any]

    @model_validator(mode="after")
    def _values(self) -> "InputSpec":
        """Impossible preprocessing is refused: a zero or negative std divides by nothing (every probability printed
        as nan), a non-finite mean or range poisons every input."""
        if not all(_finite(v) for v in self.mean) or not all(_finite(v) and v > 0 for v in self.std):
            raise ValueError("mean must be finite numbers and std finite numbers > 0")
        vr = self.value_range
        if len(vr) != 2 or not all(_finite(v) for v in vr) or not vr[0] < vr[1]:
            raise ValueError("value_range must be two finite numbers, low < high")
        return self


class ClassVectorsSpec(_Part):
    file: StrictStr
    shape: list[Any]
    dtype: Literal["float32"]
    byte_order: Literal["little"]


class RetrievalSpec(_Part):
    class_vectors: ClassVectorsSpec
    logit_scale: Number
    labels_file: StrictStr
    prompt_templates: list[Any]

    @model_validator(mode="after")
    def _scale(self) -> "RetrievalSpec":
        """A logit scale <= 0 inverts (or flattens) the ranking: refused."""
        if not (_finite(self.logit_scale) and self.logit_scale > 0):
            raise ValueError("logit_scale must be a finite number > 0")
        return self


class ForecastSpec(_Part):
    frames_in: StrictInt
    frames_out: StrictInt
    mean: Number
    std: Number

    @model_validator(mode="after")
    def _norm(self) -> "ForecastSpec":
        if not (_finite(self.mean) and _finite(self.std) and self.std > 0):
            raise ValueError("mean must be finite and std a finite number > 0")
        return self


class _Manifest(_Part):
    schema_version: StrictInt
    target: Literal[TARGET_NAMES]  # type: ignore[valid-type]
    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    model_file: StrictStr
    input: InputSpec
    outputs: list[Any]
    files: dict[str, Any]


class RetrievalManifest(_Manifest):
    task: Literal["retrieval"]
    retrieval: RetrievalSpec


class ForecastManifest(_Manifest):
    task: Literal["forecast"]
    forecast: ForecastSpec


Manifest = Annotated[Union[RetrievalManifest, ForecastManifest], Field(discriminator="task")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Manifest)
_TYPE_NAMES = {"string": "str", "int": "int", "float": "a number", "list": "list", "dict": "dict",
               "model": "dict", "model_attributes": "dict", "dataclass": "dict"}


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (what android_demo/manifest.schema.json holds)."""
    schema = _ADAPTER.json_schema()
    schema["title"] = "kdmobile bundle manifest"
    schema["description"] = ("manifest.json of a kdmobile bundle (schema_version 2). Sealed by bundle.sha256, "
                             "which a reader checks before parsing this file.")
    return schema


def _loc(err: dict[str, Any], task: str | None) -> str:
    """Dotted field name of a pydantic error, without the union tag."""
    parts = [str(p) for p in err["loc"]]
    if parts and parts[0] == task:
        parts = parts[1:]
    return ".".join(parts)


def _problem(err: dict[str, Any], task: str | None) -> str:
    """One readable problem from a pydantic error (a number field's two union branches read as one)."""
    parts = _loc(err, task).split(".")
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
    task = manifest.get("task")
    if task not in TASKS:
        missing = "task" if "task" not in manifest else None
        if missing:
            raise VerificationError(f"{where}: missing required fields: task")
        raise VerificationError(f"{where}: invalid manifest: task={task!r} (expected one of {', '.join(TASKS)})")
    try:
        _ADAPTER.validate_python(manifest)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        missing = [_loc(x, task) for x in errors if x["type"] == "missing"]
        if missing:
            raise VerificationError(f"{where}: missing required fields: {', '.join(missing)}") from None
        problems = list(dict.fromkeys(_problem(x, task) for x in errors))
        raise VerificationError(f"{where}: invalid manifest: {'; '.join(problems)}") from None


def write_json_schema(path: str | Path) -> None:
    """Write the JSON Schema file shipped with the Android demo."""
    import json

    Path(path).write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
