"""The export verb's settings as pydantic models, like train's configs: defaults stated once (the CLI's flags and
help read them from here) and validated once, when a model is built, with the CLI's one-line messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kdmobile.config import validation_message
from kdmobile.errors import UserError
from kdmobile.export.int8_choice import PRESETS
from kdmobile.export.quantize import INT8_FORMATS
from kdmobile.export.run import read_classes_file
from kdmobile.fileio import check_writable, clean_stale
from kdmobile.targets import PRECISIONS, TARGETS, target_names

TFLITE_RECIPES = ("auto", "dynamic", "static")
DEFAULT_CALIBRATION = 128


class _Settings(BaseModel):
    """Strict fields; a wrong type is a one-line KDError like every other bad value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise UserError(validation_message(err, "export setting")) from None


class Thresholds(_Settings):
    """When an artifact is flagged: top-1 (or R@1) drop in points, relative MSE rise."""

    top1: float = 1.0
    mse: float = 0.05

    @model_validator(mode="after")
    def _check(self) -> "Thresholds":
        require_thresholds(self)
        return self


def require_thresholds(th: Thresholds) -> None:
    """One-line error for thresholds that make no sense (run when a Thresholds is built)."""
    if not (th.top1 >= 0):
        raise UserError(f"--threshold-top1 must be >= 0 points, got {th.top1}")
    if not (th.mse >= 0):
        raise UserError(f"--threshold-mse must be >= 0 (a relative rise, 0.05 = 5%), got {th.mse}")


class ExportOptions(_Settings):
    """The export verb's choices; bad values and combinations are refused when the options are built."""

    targets: list[str] = ["onnx"]
    precisions: list[str] = ["fp32"]
    out: Path = Path("bundles")
    calibration_samples: int = DEFAULT_CALIBRATION
    classes_file: Path | None = None
    strict: bool = False
    int8_format: Literal[INT8_FORMATS] = "auto"  # type: ignore[valid-type]
    int8_for: str | None = None  # a PRESETS key (the presets' table is read when options are checked)
    tflite_recipe: Literal[TFLITE_RECIPES] = "auto"  # type: ignore[valid-type]
    model: str = "student"  # or a forecast run's teacher (export/run.py load_run)
    sign: Path | None = None  # a PEM private key (kdmobile keygen): each bundle gets bundle.sig
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @model_validator(mode="after")
    def _check(self) -> "ExportOptions":
        for t in self.targets:
            if t not in TARGETS:
                raise UserError(f"unknown target {t!r} (choose {', '.join(target_names())} or all)")
        for pr in self.precisions:
            if pr not in PRECISIONS:
                raise UserError(f"unknown precision {pr!r} (choose {', '.join(PRECISIONS)} or all)")
        if self.int8_for is not None and self.int8_for not in PRESETS:
            raise UserError(f"--int8-for {self.int8_for!r}: choose one of {', '.join(PRESETS)}")
        if self.calibration_samples < 0:
            raise UserError(f"--calibration-samples must be >= 1, got {self.calibration_samples}")
        if self.calibration_samples == 0 and "int8" in self.precisions:
            raise UserError("--calibration-samples 0 with int8: static int8 needs at least 1 calibration sample")
        if self.classes_file is not None:
            read_classes_file(self.classes_file)
        if self.sign is not None:
            from kdmobile.signing import check_private_key

            check_private_key(self.sign)  # a missing or wrong key fails now, not after the conversions
        out = Path(self.out).expanduser()
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory")
        return self

    def prepare_out(self) -> list[Path]:
        """Prove --out is writable with free space (before any conversion) and remove temporaries of killed exports;
        returns what was removed (export says so)."""
        out = check_writable(self.out, "--out")
        out.mkdir(parents=True, exist_ok=True)  # removed again by export_run if nothing lands in it
        return clean_stale(out)


def default(name: str, model: type[BaseModel] = ExportOptions) -> Any:
    """The default of one setting (for the CLI's help texts and flag handling)."""
    return model.model_fields[name].get_default(call_default_factory=True)
