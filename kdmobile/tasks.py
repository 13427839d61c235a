"""What a data task means outside training: the head its bundles output, its headline metric, and the code that
export, verification and bench call for it, so that no shared module compares task names.

Words: a *task* is what a student was trained for (`classes`, `captions`, `forecast`: the student card's and
metrics.json's `task`); a *head* is what its bundles output (`retrieval`, `forecast`: the manifest's `head`). Each
method package implements its tasks (kdmobile.ammkd.tasks, kdmobile.sdkd.tasks) and a row here names the code
lazily, so this module imports nothing heavy. A new task is a `register_task(TaskRow(...))` plus its name in the
student card's and the manifest's `task` choices (kdmobile/contracts/).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from kdmobile.errors import UserError
from kdmobile.rows import Rows
from kdmobile.targets import Ref, resolve

if TYPE_CHECKING:  # only for annotations: the exporter, verification and bench import torch or the runtime
    from kdmobile.bundle import Bundle
    from kdmobile.contracts.heldout import HeldOut
    from kdmobile.contracts.student import StudentCard
    from kdmobile.export.verify import Reference

Score = tuple["str | None", "float | None", str]  # (metric name, value, where it comes from)


@dataclass(frozen=True)
class TaskRow:
    """One data task: its bundles' head, the metric a table shows and a gate checks, and its code (a Task)."""

    name: str
    head: str        # retrieval | forecast
    headline: str    # top1 | R@1 | mse
    code: Ref        # a Task subclass, "module:Class"


class Task(ABC):
    """The task-specific steps of export (`exp` is the kdmobile.export.exporter.Exporter preparing a run: its run,
    options, and what earlier steps prepared), of verification and of bench."""

    row: TaskRow
    io_names: tuple[str, str] = ("input", "output")  # the model file's input and output names

    def __init__(self, row: TaskRow) -> None:
        self.row = row

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def head(self) -> str:
        return self.row.head

    def headline(self, metrics: Mapping[str, Any] | None) -> tuple[str, float | None]:
        """The headline (name, value) of a metrics dict."""
        value = (metrics or {}).get(self.row.headline)
        return self.row.headline, None if value is None else float(value)

    # ------------------------------------------------------------------------------------------------- export
    @abstractmethod
    def export_inputs(self, exp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(which held-out samples, their normalised model inputs, their raw runtime inputs) verification uses."""

    @abstractmethod
    def calibration(self, exp: Any, n: int) -> np.ndarray:
        """Up to n normalised training inputs for static int8."""

    def prepare(self, exp: Any) -> None:
        """What the bundle carries besides the model (a retrieval gallery), set on `exp`; nothing by default."""

    @abstractmethod
    def reference(self, exp: Any) -> Reference:
        """The fp32 PyTorch model's outputs and metric on the held-out inputs."""

    @abstractmethod
    def manifest_sections(self, exp: Any, shape: list[int]) -> dict[str, Any]:
        """The manifest's input, outputs and head section for a model taking `shape`."""

    def bundle_task(self, exp: Any) -> str:
        """The manifest's `task`: what the bundle's outputs are scored as (this task by default)."""
        return self.name

    def bundle_files(self, exp: Any) -> dict[str, Any]:
        """Files the bundle holds besides the model (name -> bytes or writer)."""
        return {}

    def bundled(self, bundle: Bundle) -> Any:
        """What an existing bundle fixes for `export --verify` (its gallery), or None."""
        return None

    # ------------------------------------------------------------------------------------------- verification
    @abstractmethod
    def run_bundle(self, bundle: Bundle, ref: Reference) -> tuple[np.ndarray, dict[str, float], float | None]:
        """(outputs, metric, preprocessing difference or None) of the bundle's runtime predictor on ref's inputs."""

    # ---------------------------------------------------------------------------------------------------- bench
    @abstractmethod
    def bench_inputs(self, bundle: Bundle, heldout: HeldOut) -> np.ndarray | None:
        """Held-out inputs in the bundle predictor's raw units, or None when the set has none for this bundle."""

    @abstractmethod
    def score_bundle(self, bundle: Bundle, predictor: Any, heldout: HeldOut) -> Score:
        """The bundle's headline metric on the held-out set, through its runtime predictor."""

    @abstractmethod
    def torch_inputs(self, heldout: HeldOut, card: StudentCard | None) -> np.ndarray:
        """Normalised held-out inputs for a PyTorch model with this card (None: a teacher, fed its own defaults)."""

    @abstractmethod
    def score_torch(self, model: Any, run: Any, card: StudentCard | None, device: str) -> Score:
        """An un-exported PyTorch student's headline metric on the held-out set of run (a kdmobile.rundir.RunDir)."""


_ROWS: Rows[TaskRow] = Rows(TaskRow, (
    TaskRow("classes", head="retrieval", headline="top1", code="kdmobile.ammkd.tasks:ClassesTask"),
    TaskRow("captions", head="retrieval", headline="R@1", code="kdmobile.ammkd.tasks:CaptionsTask"),
    TaskRow("forecast", head="forecast", headline="mse", code="kdmobile.sdkd.tasks:ForecastTask"),
))
TASKS: Mapping[str, TaskRow] = _ROWS.view


def register_task(row: TaskRow) -> None:
    """Add (or replace) a data task."""
    _ROWS.register(row)
    _task.cache_clear()


def get_task(name: Any) -> Task:
    """The code of task `name`, or a one-line error naming the known ones."""
    if not isinstance(name, str) or name not in _ROWS.table:
        raise UserError(f"unknown task {name!r} (known: {', '.join(_ROWS.table)})")
    return _task(name)


@lru_cache(maxsize=None)
def _task(name: str) -> Task:
    row = _ROWS.table[name]
    return resolve(row.code)(row)
