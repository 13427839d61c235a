"""The run directory: the contract between `kdmobile train` and `kdmobile export` / `kdmobile bench`.

runs/NAME/
  config.yaml            resolved config (repeat the run with --config)
  method.json            {"method": "ammkd"|"sdkd", "kdmobile_version": ...}
  log.jsonl              one JSON record per epoch/event
  stages/STAGE/last.pt   per-epoch checkpoints (for --resume)
  teachers/NAME.pt       trained teachers
  student.pt             the student, rebuildable by kdmobile.models.load_model
  metrics.json           evaluation of teachers and student on the held-out split
  + method files (AMMKD: labels.json, class_vectors.npz; SDKD: normalisation.json)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdmobile import __version__
from kdmobile.errors import KDError
from kdmobile.fileio import write_json


def new_run_dir(out: str | Path, name: str, resume: bool, exist_ok: bool = False) -> Path:
    """Pick runs/NAME (or NAME2, NAME3... when taken, like Ultralytics) or, with resume, the existing one."""
    root = Path(out).expanduser()
    path = root / name
    if resume:
        if not (path / "method.json").is_file():
            raise KDError(f"--resume: {path} is not a kdmobile run directory")
        return path
    if path.exists() and not exist_ok:
        i = 2
        while (root / f"{name}{i}").exists():
            i += 1
        path = root / f"{name}{i}"
    return path


def write_method(run: Path, method: str) -> None:
    """Mark a directory as a kdmobile run of `method`."""
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "method.json", {"method": method, "kdmobile_version": __version__})


def read_method(run: str | Path) -> str:
    """The method of a run directory, with a one-line error if it is not one."""
    p = Path(run).expanduser()
    f = p / "method.json"
    if not p.is_dir():
        raise KDError(f"{p}: no such run directory")
    if not f.is_file():
        raise KDError(f"{p}: not a kdmobile run directory (no method.json)")
    try:
        return str(json.loads(f.read_text())["method"])
    except (ValueError, KeyError) as exc:
        raise KDError(f"{f}: corrupt ({exc})") from None


def read_json(path: str | Path) -> Any:
    """Load a JSON file of a run, with a one-line error if missing or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise KDError(f"{p}: missing (was the run finished?)")
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise KDError(f"{p}: corrupt JSON ({exc})") from None


EXPORTS_FILE = "exports.json"


def record_bundles(run: str | Path, bundles: list[Path]) -> Path:
    """Remember in RUN/exports.json where `kdmobile export` wrote this run's bundles, so `kdmobile bench RUN`
    finds them wherever --out put them (newest export first, each bundle listed once)."""
    path = Path(run).expanduser() / EXPORTS_FILE
    known = recorded_bundles(run, existing_only=False)
    fresh = [str(Path(b).expanduser().resolve()) for b in bundles]
    write_json(path, {"bundles": list(dict.fromkeys([*fresh, *map(str, known)]))})
    return path


def recorded_bundles(run: str | Path, existing_only: bool = True) -> list[Path]:
    """Bundle directories listed in RUN/exports.json ([] when there is none or it is unreadable)."""
    path = Path(run).expanduser() / EXPORTS_FILE
    try:
        listed = [Path(p) for p in json.loads(path.read_text()).get("bundles", [])]
    except (OSError, ValueError, AttributeError):
        return []
    return [p for p in listed if p.is_dir()] if existing_only else listed
