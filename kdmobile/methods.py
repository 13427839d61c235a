"""The distillation methods (AMMKD, SDKD) as rows of one registry: what each trains and what export, bench and the
run reader need to know about its runs, so that no module outside a method's own package (kdmobile/ammkd/,
kdmobile/sdkd/) compares method names; what its tasks mean to export and bench is in kdmobile.tasks.

A method row names its code lazily ("module:attribute", as kdmobile.targets does), so this module imports nothing
heavy: the torch-free runtime and the CLI's `--help` can read it. A new method is one `register_method(Method(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kdmobile.errors import UserError
from kdmobile.rows import Rows
from kdmobile.targets import Ref


@dataclass(frozen=True)
class Method:
    """One distillation method. `head` is what its bundles output (the manifest's `head`: retrieval | forecast);
    `data_tasks` what its students are trained for (kdmobile.tasks rows: classes, captions | forecast), the first
    when a file records none."""

    name: str
    summary: str                      # one line for `kdmobile train --help`
    head: str                         # retrieval | forecast
    data_tasks: tuple[str, ...]       # the student card tasks it trains, the default first
    register_cli: Ref                 # (sub-parsers of `kdmobile train`) -> adds `kdmobile train NAME`
    teacher_metric_prefix: str        # metrics.json key of teacher NAME: prefix + NAME
    teacher_model_kind: str           # how bench loads a teachers/*.safetensors file
    student_model_kind: str           # how bench loads student(_nokd).safetensors
    exports_teachers: bool            # `export --model teacherN` (time a teacher in the students' runtime)
    takes_class_files: bool           # `export --classes FILE` (new classes through the teachers)

    def teacher_key(self, name: str) -> str:
        """The metrics.json models key of teacher `name`."""
        return f"{self.teacher_metric_prefix}{name}"


_ROWS: Rows[Method] = Rows(Method, (
    Method("ammkd", "image-text retrieval student from two CLIP teachers", head="retrieval", data_tasks=("classes", "captions"),
           register_cli="kdmobile.train.cli:register_ammkd", teacher_metric_prefix="teacher:",
           teacher_model_kind="clip-teacher", student_model_kind="student", exports_teachers=False,
           takes_class_files=True),
    Method("sdkd", "spatiotemporal forecaster with spectral distillation", head="forecast", data_tasks=("forecast",),
           register_cli="kdmobile.train.cli:register_sdkd", teacher_metric_prefix="",
           teacher_model_kind="forecaster", student_model_kind="forecaster", exports_teachers=True,
           takes_class_files=False),
))
_REGISTRY = _ROWS.table
METHODS: Mapping[str, Method] = _ROWS.view  # a live, read-only view
register_method = _ROWS.register  # add (or replace) a method: `kdmobile train NAME`, export, bench, the run reader


def get_method(name: Any, where: str = "run") -> Method:
    """The registered method `name`, or a one-line error naming the known ones."""
    m = _REGISTRY.get(name) if isinstance(name, str) else None
    if m is None:
        raise UserError(f"{where}: unknown method {name!r} (known: {', '.join(_REGISTRY)})")
    return m
