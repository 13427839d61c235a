"""What export reads from a run directory (the student, its extra dict, the held-out arrays) and the --classes file,
with one-line errors for a missing, foreign or unfinished run; nothing is unpickled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.errors import KDError
from kdmobile.rundir import STUDENT_FILE, read_method, require_complete
from kdmobile.untrusted import load_npz


@dataclass
class Run:
    """What export needs from a run directory: the student, its extra dict and the held-out arrays."""

    path: Path
    method: str
    kind: str                    # "classes" | "captions" | "forecast"
    model: Any
    extra: dict[str, Any]
    heldout: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def task(self) -> str:
        """The bundle task."""
        return "forecast" if self.kind == "forecast" else "retrieval"

    def need(self, key: str) -> np.ndarray:
        """A held-out array, or a one-line error naming heldout.npz."""
        if key not in self.heldout:
            raise KDError(f"{self.path / 'heldout.npz'}: no {key!r} array")
        return self.heldout[key]


def load_run(path: str | Path) -> Run:
    """Open a run directory with one-line errors for a missing/foreign/unfinished one."""
    p = Path(path).expanduser().resolve()
    method = read_method(p)
    if method not in ("ammkd", "sdkd"):
        raise KDError(f"{p}: method {method!r} has no exporter (expected ammkd or sdkd)")
    require_complete(p, "export")
    student = p / STUDENT_FILE
    if not student.is_file():
        old = " (student.pt is the old pickle format, refused: retrain with this kdmobile version)" \
            if (p / "student.pt").is_file() else " (was the run finished?)"
        raise KDError(f"{p}: {STUDENT_FILE} missing{old}")
    if not (p / "heldout.npz").is_file():
        raise KDError(f"{p}: heldout.npz missing (held-out and calibration data; was the run finished?)")
    from kdmobile.models.registry import load_model

    model, extra = load_model(student)
    heldout = load_npz(p / "heldout.npz")
    kind = extra.get("task", "forecast" if method == "sdkd" else "classes")
    if method == "sdkd" and kind != "forecast":
        raise KDError(f"{student}: an sdkd student should have task 'forecast', not {kind!r}")
    if kind not in ("classes", "captions", "forecast"):
        raise KDError(f"{student}: unknown task {kind!r}")
    return Run(p, method, kind, model.eval(), dict(extra), heldout)


def read_classes_file(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines ignored); one-line errors for missing, empty or duplicate names."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise KDError(f"--classes {p}: no such file")
    try:
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise KDError(f"--classes {p}: unreadable ({e})") from None
    names = [n for n in names if n]
    if not names:
        raise KDError(f"--classes {p}: no class names (one per line)")
    seen: set[str] = set()
    dups = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dups:
        raise KDError(f"--classes {p}: duplicate class names: {', '.join(dups)}")
    return names
