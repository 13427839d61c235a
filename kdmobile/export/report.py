"""What one `kdmobile export` (or --verify) did: an Artifact per target x precision and the verification table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdmobile.export.verify import TABLE_HEADERS, table_row
from kdmobile.table import fit_table_notes, precision_label


@dataclass
class Artifact:
    """The outcome of one target x precision: the bundle (or the error) and its verification."""

    target: str
    precision: str
    bundle: Path | None = None
    size: int | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_is_user: bool = False

    @property
    def flagged(self) -> bool:
        return bool(self.verification.get("flagged"))

    def row(self) -> list[Any]:
        if self.error is not None:
            return [self.target, self.precision, None, None, None, "-", "-", f"FAILED: {self.error}"]
        row = table_row(self.target, self.precision, self.size, self.verification)
        row[1] = precision_label(self.precision, self.quantization())  # name the int8 format that was chosen
        return row

    def quantization(self) -> str | None:
        """The quantization format recorded in the bundle's manifest (w8a32, dynamic_wi8_afp32, ...), if any."""
        try:
            manifest = json.loads((Path(self.bundle) / "manifest.json").read_text()) if self.bundle else {}
        except (OSError, ValueError):
            return None
        return (manifest.get("quantization") or {}).get("format")


@dataclass
class ExportReport:
    """Everything one `kdmobile export` did, and the printed table."""

    artifacts: list[Artifact]
    table: str
    rows: list[list[Any]] = field(default_factory=list)

    def render(self, wide: bool = False, width: int = 120) -> str:
        """The verification table: as is (wide), or fitted to `width` columns by moving long metric or status
        texts under the table as numbered notes."""
        if wide or not self.rows:
            return self.table
        return fit_table_notes(TABLE_HEADERS, self.rows, width, movable=(5, len(TABLE_HEADERS) - 1))

    @property
    def failed(self) -> list[Artifact]:
        return [a for a in self.artifacts if a.error is not None]

    @property
    def flagged(self) -> list[Artifact]:
        return [a for a in self.artifacts if a.flagged]
