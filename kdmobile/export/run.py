"""What export reads from a run directory (through kdmobile.rundir's one reader: the student or a forecast
teacher, its card, the held-out set) and the --classes file, with one-line errors for a missing, foreign or
unfinished run; no pickle."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.contracts.heldout import FILE as HELDOUT_FILE
from kdmobile.contracts.student import StudentCard, student_card
from kdmobile.errors import UserError
from kdmobile.methods import METHODS, get_method
from kdmobile.rundir import PICKLE_STUDENT_FILE, STUDENT_FILE, WEIGHTS_SUFFIX, RunDir, open_run, teacher_file, teacher_files


@dataclass
class Run(RunDir):
    """A finished run directory as export reads it: the shared reader (kdmobile.rundir.RunDir) plus the student
    and its card (input normalisation, teachers, labels)."""

    model: Any = field(default=None, kw_only=True)
    card: StudentCard = field(default=None, kw_only=True)  # type: ignore[assignment]
    model_name: str = field(default="student", kw_only=True)  # or a forecast run's teacher (teachers/NAME)
    model_file: Path = field(default=None, kw_only=True)  # type: ignore[assignment]

    @property
    def task(self) -> str:
        """classes | captions | forecast: what the student was trained for, as its card says."""
        return self.card.task

    def need(self, name: str) -> np.ndarray:
        """A held-out array, or a one-line error naming heldout.npz."""
        value = getattr(self.heldout(), name, None)
        if value is None:
            raise UserError(f"{self.path / HELDOUT_FILE}: no {name!r} array")
        return value

    def text_vectors(self, teachers: list[str]) -> list[np.ndarray]:
        """Each teacher's held-out caption vectors, or a one-line error naming the missing teacher."""
        found = self.heldout().textvec_test
        missing = [t for t in teachers if t not in found]
        if missing:
            raise UserError(f"{self.path / HELDOUT_FILE}: no caption vectors of teacher(s) {', '.join(missing)}")
        return [found[t] for t in teachers]


def load_run(path: str | Path, model: str = "student") -> Run:
    """Open a finished run directory for export, with one-line errors for a missing/foreign/unfinished one.

    `model` is the student, or for forecast (sdkd) runs one of its teachers (teachers/NAME.safetensors): exported
    the same way, so that student and teacher can be timed in the same runtime."""
    d = open_run(path, "export")
    if model == "student":
        file = d.path / STUDENT_FILE
        if not file.is_file():
            old = f" ({PICKLE_STUDENT_FILE} is the old pickle format, refused: retrain with this kdmobile version)" \
                if (d.path / PICKLE_STUDENT_FILE).is_file() else " (was the run finished?)"
            raise UserError(f"{d.path}: {STUDENT_FILE} missing{old}")
    else:
        if not get_method(d.method).exports_teachers:
            able = ", ".join(f"{m.head} ({n})" for n, m in METHODS.items() if m.exports_teachers)
            raise UserError(f"--model {model}: only {able} runs export a teacher; {d.path} is a {d.method} "
                            "run (its CLIP teachers are timed by `kdmobile bench --reference`)")
        file = teacher_file(d.path, model) if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", model) else None
        if file is None or not file.is_file():
            names = [f.name.removesuffix(WEIGHTS_SUFFIX) for f in teacher_files(d.path)]
            raise UserError(f"--model {model!r}: no such model in {d.path} (student, "
                            f"{', '.join(names) or 'no teachers'})")
    d.heldout()  # refuses a missing or inconsistent held-out set before the model is loaded
    from kdmobile.models.registry import fuse_for_inference, load_model

    loaded, extra = load_model(file)
    return Run(d.path, d.method, d.metrics, model=fuse_for_inference(loaded), card=student_card(extra, d.method, str(file)),
               model_name=model, model_file=file)


def read_classes_file(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines ignored); one-line errors for missing, empty or duplicate names."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--classes {p}: no such file")
    try:
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--classes {p}: unreadable ({e})") from None
    names = [n for n in names if n]
    if not names:
        raise UserError(f"--classes {p}: no class names (one per line)")
    seen: set[str] = set()
    dups = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dups:
        raise UserError(f"--classes {p}: duplicate class names: {', '.join(dups)}")
    return names
