"""Bench settings as one pydantic model: defaults stated once (the CLI reads them), one-line errors for bad values."""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kdmobile.config import validation_message
from kdmobile.errors import UserError
from kdmobile.runtime.cli import MAX_THREADS

DEVICES = ("auto", "cpu", "cuda")  # torch subjects: auto (CPU, plus CUDA when available), cpu, cuda
# The command-line flag that sets each field, so an error names what the user typed.
FLAGS = {"runs": "--runs", "warmup": "--warmup", "batches": "--batch", "threads": "--threads", "device": "--device",
         "teachers": "--no-teachers", "max_time_s": "--max-time", "progress": "--no-progress",
         "references": "--reference"}
MAX_RUNS = 1_000_000
MAX_BENCH_BATCH = 4096          # inputs in one timed call (a 224 px image batch of 4096 is 2.4 GB of float32)
MAX_BATCHES = 16          # batch sizes per bench
MAX_TIME_S = 24 * 3600
# Values that make no sense: (is it fine?, the one-line error), checked in field order (the first one is reported).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "runs": (lambda v: 1 <= v <= MAX_RUNS, f"--runs must be between 1 and {MAX_RUNS}, got {{v}}"),
    "warmup": (lambda v: 0 <= v <= MAX_RUNS, f"--warmup must be between 0 and {MAX_RUNS}, got {{v}}"),
    "batches": (lambda v: 0 < len(v) <= MAX_BATCHES and 1 <= min(v) and max(v) <= MAX_BENCH_BATCH,
                f"--batch: 1 to {MAX_BATCHES} sizes, each between 1 and {MAX_BENCH_BATCH}, got {{v}}"),
    "threads": (lambda v: 1 <= v <= MAX_THREADS, f"--threads must be between 1 and {MAX_THREADS}, got {{v}}"),
    "device": (lambda v: v in DEVICES, "--device must be auto, cpu or cuda, got {v!r}"),
    "max_time_s": (lambda v: 0 < v <= MAX_TIME_S, f"--max-time must be between 0 and {MAX_TIME_S} seconds, got {{v}}"),
}


class Settings(BaseModel):
    """How to measure: timed runs, warm-up, batch sizes, threads, torch devices and the per-measurement budget."""

    model_config = ConfigDict(extra="forbid")

    runs: int = 200
    warmup: int = 20
    batches: list[int] = Field(default_factory=lambda: [1])
    threads: int = 1
    device: str = "auto"
    teachers: bool = True
    max_time_s: float = 60.0
    progress: bool = True
    references: list[str] = Field(default_factory=list)  # open_clip image towers timed as latency-only rows

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, data: Any, handler: Any) -> Any:
        """A pydantic ValidationError becomes a one-line KDError (kdmobile.config.validation_message)."""
        try:
            return handler(data)
        except ValidationError as err:
            raise UserError(validation_message(err, "bench settings", FLAGS)) from None

    @field_validator(*_CHECKS)
    @classmethod
    def _check(cls, v: Any, info: ValidationInfo) -> Any:
        """The value checks of _CHECKS, with today's one-line messages."""
        ok, message = _CHECKS[str(info.field_name)]
        if not ok(v):
            raise ValueError(message.format(v=v))
        return v

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one field (the CLI's argparse defaults come from here, not from restated numbers)."""
        f = cls.model_fields[name]
        return f.get_default(call_default_factory=True)

    def as_dict(self) -> dict[str, Any]:
        """The settings report.json records (everything but the progress bar)."""
        return self.model_dump(exclude={"progress"})
