"""The run directory: the contract between `kdmobile train` and `kdmobile export` / `kdmobile bench`.

runs/NAME/
  config.yaml            resolved config (repeat the run with --config)
  method.json            {"method": "ammkd"|"sdkd", "kdmobile_version": ...}
  log.jsonl              one JSON record per epoch/event
  INCOMPLETE             present from the first write until metrics.json is written (export/bench refuse the run)
  stages/STAGE/last.pt   per-epoch checkpoints (for --resume; loaded with torch.load(weights_only=True))
  teachers/NAME.safetensors   trained teachers (safetensors; the open_clip name or registry recipe in the header)
  student.safetensors    the student, rebuildable by kdmobile.models.load_model (no pickle anywhere)
  metrics.json           evaluation of teachers and student on the held-out split
  + method files (AMMKD: labels.json, class_vectors.npz; SDKD: normalisation.json)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdmobile import __version__
from kdmobile.contracts.heldout import FILE as HELDOUT_FILE
from kdmobile.contracts.heldout import HeldOut, read_heldout
from kdmobile.errors import KDError, ToolError, UserError
from kdmobile.fileio import check_writable, clean_stale, write_json
from kdmobile.methods import METHODS, get_method
from kdmobile.untrusted import MAX_LABELS_BYTES
from kdmobile.untrusted import read_json as untrusted_json
from kdmobile.untrusted import read_yaml

# Every file name of a run (nothing outside this module and kdmobile.contracts spells them).
STUDENT_FILE = "student.safetensors"
NOKD_FILE = "student_nokd.safetensors"  # the same student trained without distillation (baseline)
WEIGHTS_SUFFIX = ".safetensors"
PICKLE_STUDENT_FILE = "student.pt"  # what runs before safetensors wrote: refused, never unpickled
INCOMPLETE = "INCOMPLETE"
CONFIG_FILE = "config.yaml"
METHOD_FILE = "method.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
TEACHERS_DIR = "teachers"
TOWERS_DIR = "towers"  # teachers exported to ONNX by `kdmobile bench` to time them in the students' runtime
LABELS_FILE = "labels.json"                # AMMKD: class names
CLASS_VECTORS_FILE = "class_vectors.npz"   # AMMKD: each teacher's class vectors
NORMALISATION_FILE = "normalisation.json"  # SDKD: frame mean and std
STUDENT_CLASS_VECTORS_FILE = "student_class_vectors.npy"  # AMMKD: the student's fused class vectors (bench)
STAGES_DIR = "stages"                      # per-stage checkpoints for --resume


def stage_dir(run: str | Path, stage: str) -> Path:
    """Where a training stage keeps its checkpoints."""
    return Path(run) / STAGES_DIR / stage


def teacher_file(run: str | Path, name: str) -> Path:
    """Where a run keeps the trained teacher `name`."""
    return Path(run) / TEACHERS_DIR / f"{name}{WEIGHTS_SUFFIX}"


def teacher_files(run: str | Path) -> list[Path]:
    """The trained teachers a run keeps, sorted by name."""
    return sorted((Path(run) / TEACHERS_DIR).glob(f"*{WEIGHTS_SUFFIX}"))


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` looks like a kdmobile run directory (it has method.json)."""
    return (Path(path) / METHOD_FILE).is_file()


def epoch_seconds(run: str | Path, stage: str) -> list[float]:
    """Seconds of each finished epoch of one training stage, from RUN/log.jsonl."""
    return [float(r["seconds"]) for r in read_log(run) if r.get("event") == "epoch" and r.get("stage") == stage]


def read_log(run: str | Path) -> list[dict[str, Any]]:
    """Every record of RUN/log.jsonl, in order (a torn last line is skipped)."""
    import json

    path = Path(run) / LOG_FILE
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def read_metrics(run: str | Path) -> dict[str, Any]:
    """RUN/metrics.json (size- and depth-limited; one-line error when missing or not an object)."""
    doc = read_json(Path(run) / METRICS_FILE)
    if not isinstance(doc, dict):
        raise UserError(f"{Path(run) / METRICS_FILE}: not a JSON object")
    return doc


def new_run_dir(out: str | Path, name: str, resume: bool, exist_ok: bool = False) -> Path:
    """Pick runs/NAME (or NAME2, NAME3... when taken, like Ultralytics) or, with resume, the existing one."""
    root = Path(out).expanduser()
    path = root / name
    if resume:
        if not (path / METHOD_FILE).is_file():
            raise UserError(f"--resume: {path} is not a kdmobile run directory")
        check_writable(path, "run directory")
        for d in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
            clean_stale(d)  # temporary files of a killed process
        return path
    check_writable(root, "--out")
    if path.exists() and not exist_ok:
        i = 2
        while (root / f"{name}{i}").exists():
            i += 1
        path = root / f"{name}{i}"
    return path


MAX_RUN_SUFFIX = 10_000


def claim_run_dir(picked: Path, name: str, resume: bool) -> Path:
    """Create the run directory atomically (mkdir without exist_ok) when training starts: `picked` (new_run_dir's
    choice, shown in the plan), or NAME2, NAME3... if another run claimed it since. Two trainings started with one
    --name so get two directories instead of sharing one."""
    if resume:
        return picked
    picked.parent.mkdir(parents=True, exist_ok=True)
    candidates = [picked, *(picked.parent / f"{name}{i}" for i in range(2, MAX_RUN_SUFFIX))]
    for cand in candidates:
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise ToolError(f"{picked.parent}: {name}, {name}2 ... {name}{MAX_RUN_SUFFIX - 1} are all taken; "
                    "choose another --name")


RESUME_FREE = ("train.device", "teacher_train.device", "train.workers", "teacher_train.workers")


def check_resume(run: Path, settings: dict[str, Any]) -> None:
    """Before --resume writes anything: refuse a finished run, and settings that differ from the run's saved
    config.yaml (naming the keys), so a resumed student never mixes two configurations. Device and worker counts
    may change between the two halves of a run."""
    if (run / METRICS_FILE).is_file():
        raise UserError(f"--resume: {run} has finished (metrics.json is there); start a new run instead")
    saved_file = run / CONFIG_FILE
    if not saved_file.is_file():  # killed before its config was written: nothing to compare with
        return
    saved = read_yaml(saved_file)
    if not isinstance(saved, dict):
        raise UserError(f"--resume: {saved_file} is not a settings mapping")
    now, before = _flat(settings), _flat(saved)
    differ = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k) and k not in RESUME_FREE)
    if differ:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise UserError(f"--resume: settings differ from {saved_file}: {shown}{more}; resume with the run's own "
                        "settings (--config of that file) or start a new run")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def write_method(run: Path, method: str) -> None:
    """Mark a directory as a kdmobile run of `method`, incomplete until `write_metrics`."""
    run.mkdir(parents=True, exist_ok=True)
    (run / INCOMPLETE).write_text("training has not finished: resume it with `kdmobile train METHOD --resume`\n")
    write_json(run / METHOD_FILE, {"method": method, "kdmobile_version": __version__})


def write_metrics(run: Path, metrics: dict[str, Any]) -> None:
    """Write metrics.json, the last file of a run, and only then drop the INCOMPLETE marker. Non-finite numbers are
    an error of the run (training diverged), never written as NaN / Infinity into JSON."""
    bad = [k for k, v in _flat(metrics).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise UserError(f"{run}: training produced non-finite metrics ({', '.join(bad[:4])}"
                        f"{' ...' if len(bad) > 4 else ''}): it diverged or the data hold extreme values; the run "
                        "stays INCOMPLETE (lower --lr, or check the data's scale)")
    write_json(run / METRICS_FILE, metrics)
    (run / INCOMPLETE).unlink(missing_ok=True)


def require_complete(run: str | Path, verb: str) -> None:
    """Refuse, in one line, a run directory whose training has not finished."""
    p = Path(run)
    if (p / INCOMPLETE).exists():
        method = read_method(p)
        raise UserError(f"{p}: training did not finish ({INCOMPLETE} marker, no metrics.json); {verb} needs a "
                      f"finished run: `kdmobile train {method} --resume --out {p.parent} --name {p.name}`")


def read_method(run: str | Path) -> str:
    """The method of a run directory, with a one-line error if it is not one."""
    p = Path(run).expanduser()
    f = p / METHOD_FILE
    if not p.is_dir():
        raise UserError(f"{p}: no such run directory")
    if not f.is_file():
        raise UserError(f"{p}: not a kdmobile run directory (no method.json)")
    doc = untrusted_json(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
        raise UserError(f"{f}: corrupt (no \"method\" string)")
    return doc["method"]


def read_json(path: str | Path) -> Any:
    """Load a JSON file of a run, with a one-line error if missing or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: missing (was the run finished?)")
    return untrusted_json(p, max_bytes=MAX_LABELS_BYTES)


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
        listed = [Path(p) for p in untrusted_json(path).get("bundles", []) if isinstance(p, str)]
    except (KDError, OSError, ValueError, AttributeError):
        return []
    return [p for p in listed if p.is_dir()] if existing_only else listed


# ------------------------------------------------------------------------------------------------ reading a run


@dataclass
class RunDir:
    """A finished run directory as export and bench read it: method, metrics.json, and lazily its held-out set and
    student card (the one reader of a run; nothing outside kdmobile.rundir and kdmobile.contracts names its files)."""

    path: Path
    method: str
    metrics: dict[str, Any] | None
    _heldout: HeldOut | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def task(self) -> str:
        """What the student was trained for: classes | captions | forecast (kdmobile.tasks)."""
        m = get_method(self.method, str(self.path))
        if len(m.data_tasks) == 1:
            return m.data_tasks[0]
        task = (self.metrics or {}).get("task")
        return task if task in m.data_tasks else self.heldout().task

    @property
    def head(self) -> str:
        """What its bundles output: retrieval | forecast."""
        return get_method(self.method, str(self.path)).head

    def has_heldout(self) -> bool:
        return (self.path / HELDOUT_FILE).is_file()

    def heldout(self) -> HeldOut:
        """The held-out arrays (read and checked once); one-line error when missing or unreadable."""
        if self._heldout is None:
            self._heldout = read_heldout(self.path)
        return self._heldout

    def entry(self, *keys: str) -> dict[str, Any] | None:
        """The first of models.KEY in metrics.json that exists."""
        models = (self.metrics or {}).get("models", {})
        return next((models[k] for k in keys if k in models), None)

    def test_size(self) -> int | None:
        """Test-split size recorded in metrics.json."""
        m = self.metrics or {}
        sizes = m.get("split_sizes") or m.get("split_windows") or {}
        return sizes.get("test")

    def normalisation(self) -> dict[str, float]:
        """A forecast run's frame normalisation (normalisation.json); identity when absent."""
        f = self.path / NORMALISATION_FILE
        doc = untrusted_json(f) if f.is_file() else {}
        return {"mean": float(doc.get("mean", 0.0)), "std": float(doc.get("std", 1.0))}


def open_run(path: str | Path, verb: str) -> RunDir:
    """A finished run directory, with one-line errors for a path that is not one, a foreign method or an
    unfinished run (`verb` names the command that needs it)."""
    p = Path(path).expanduser().resolve()
    method = read_method(p)
    if method not in METHODS:
        raise UserError(f"{p}: method {method!r} cannot be used by {verb} (expected {' or '.join(METHODS)})")
    require_complete(p, verb)
    metrics = None
    if (p / METRICS_FILE).is_file():
        metrics = read_metrics(p)
    return RunDir(p, method, metrics)
