"""`kdmobile export`: a run directory -> checked bundles, one per target x precision, each verified at export.

Reads only the run directory (export/run.py: student.safetensors, heldout.npz, class vectors, teachers/ for
--classes; nothing is unpickled), dispatches to one converter per target (export/jobs.py), writes each bundle
atomically through kdmobile.bundle.write_bundle with verification run by the runtime's own predictors inside the
write (a failed threshold flags the bundle; an exception leaves none). Settings: export/options.py; the outcome:
export/report.py; per-target facts: kdmobile/targets.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kdmobile import __version__
from kdmobile.bundle import Bundle, load_bundle, write_bundle
from kdmobile.errors import KDError, ToolError, UserError
from kdmobile.export.jobs import Job
from kdmobile.export.metadata import model_metadata
from kdmobile.export.options import ExportOptions, Thresholds
from kdmobile.export.quantize import file_size
from kdmobile.export.report import Artifact, ExportReport
from kdmobile.export.run import Run, load_run
from kdmobile.export.verify import Reference, format_results, reference_row, verify_bundle, verify_random
from kdmobile.fileio import MIN_FREE_BYTES, sha256_file
from kdmobile.methods import METHODS, get_method
from kdmobile.targets import TARGETS, resolve
from kdmobile.tasks import get_task

# ---------------------------------------------------------------------------------------------------- exporter
class Exporter:
    """Prepares a run once (class vectors, calibration, reference outputs) and writes one bundle per job."""

    def __init__(self, run: Run, opts: ExportOptions, log: Callable[[str], None] = print,
                 bundled: tuple[np.ndarray, list[str], bool] | None = None) -> None:
        """`bundled` = (class vectors, labels, new_classes) of an existing bundle, for --verify. `opts` were
        validated when they were built. What depends on the run's task (classes, captions, forecast) is asked of
        its kdmobile.tasks.Task."""
        if opts.classes_file is not None and not get_method(run.method).takes_class_files:
            able = ", ".join(n for n, m in METHODS.items() if m.takes_class_files)
            raise UserError(f"--classes: {run.name} is an {run.method} ({run.task}) run; new classes only apply to "
                            f"{able} runs")
        self.run, self.opts, self.log = run, opts, log
        self.task = get_task(run.task)
        self.input_name, self.output_name = self.task.io_names
        self.new_classes = opts.classes_file is not None
        self.labels: list[str] = []
        self.class_vectors: np.ndarray | None = None
        self.class_source = "run"
        self.verify_index, self.model_inputs, self.raw_inputs = self.task.export_inputs(self)
        self.example = self._torch(self.model_inputs[:1])
        if bundled is not None:
            self.class_vectors, self.labels, self.new_classes = bundled
        else:
            self.task.prepare(self)
        self.calibration = (self.task.calibration(self, opts.calibration_samples)
                            if "int8" in opts.precisions and bundled is None else None)
        self.reference = self.task.reference(self)
        self.conversion_cache: dict[str, Any] = {}  # one export's converters share work (jobs.Job.cache)

    @staticmethod
    def _torch(x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.run.model, "scale", None)
        return float(scale().detach()) if callable(scale) else 1.0

    # --------------------------------------------------------------------- manifest
    def manifest(self, target: str, precision: str, info: dict[str, Any]) -> dict[str, Any]:
        """The bundle manifest (write_bundle fills schema_version, created and files)."""
        run = self.run
        shape = [1, *self.model_inputs.shape[1:]]
        m: dict[str, Any] = {"head": self.task.head, "task": self.task.bundle_task(self), "target": target,
                             "precision": precision, "model_file": TARGETS[target].model_file,
                             **self.task.manifest_sections(self, shape)}
        m["quantization"] = info.pop("quantization", {"format": "none"})
        if target in info:  # a converter may add a manifest section named after its target (CoreML's spec facts)
            m[target] = info.pop(target)
        m["export"] = {"kdmobile_version": __version__, **info, **self._versions(target)}
        m["source"] = {"run_dir": str(run.path), "run_name": run.name, "method": run.method,
                       "model": run.model_name, f"{'student' if run.model_name == 'student' else 'model'}_sha256":
                           sha256_file(run.model_file),
                       "classes_file": None if self.opts.classes_file is None else str(self.opts.classes_file)}
        return m

    @staticmethod
    def _versions(target: str) -> dict[str, str | None]:
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for p in TARGETS[target].export_packages:
            try:
                out[p] = version(p)
            except PackageNotFoundError:
                out[p] = None
        return {"versions": out}  # type: ignore[dict-item]

    def metadata(self, target: str, precision: str) -> dict[str, str]:
        """String metadata carried inside the model file itself (the same keys in every format)."""
        return model_metadata(self.task.head, self.run.name, target, precision, self.input_name, self.output_name)

    # ------------------------------------------------------------------------ export
    def export_one(self, target: str, precision: str) -> Artifact:
        """Convert, stage, verify and atomically write one bundle."""
        out = Path(self.opts.out).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        model = "" if self.run.model_name == "student" else f"-{self.run.model_name}"
        name = f"{self.run.name}{model}-{target}-{precision}"
        art = Artifact(target, precision)
        # the pid in the name lets the next export remove this directory if the process is killed (clean_stale)
        with tempfile.TemporaryDirectory(prefix=f".{name}.work.{os.getpid()}.", dir=out) as tmp:
            model_path = Path(tmp) / TARGETS[target].model_file
            job = Job(self.run.model, self.example, model_path, precision, self.calibration, self.opts.int8_format,
                      self.opts.int8_for, self.opts.tflite_recipe, self.input_name, self.output_name,
                      self.metadata(target, precision), cache=self.conversion_cache)
            info = dict(resolve(TARGETS[target].converter)(job) or {})
            if not model_path.exists():
                raise RuntimeError(f"the {target} converter wrote no {model_path.name}")
            manifest = self.manifest(target, precision, info)
            files: dict[str, Any] = {TARGETS[target].model_file: model_path}
            files.update(self.task.bundle_files(self))
            th = self.opts.thresholds

            def verify(bundle: Bundle) -> dict[str, Any]:
                result = verify_bundle(bundle, self.reference, th)
                art.verification = result
                return result

            art.bundle = write_bundle(out / name, manifest, files, verify=verify, sign=self.opts.sign)
        art.size = file_size(art.bundle / TARGETS[target].model_file)
        return art

    def _disk_note(self) -> str:
        """' (--out DIR: N MiB free)' when a failure may come from a full disk (e.g. a truncated model file)."""
        try:
            free = shutil.disk_usage(Path(self.opts.out).expanduser()).free
        except OSError:
            return ""
        return f" (--out has only {free >> 20} MiB free: disk full?)" if free < MIN_FREE_BYTES else ""

    def export_all(self) -> ExportReport:
        """Every requested target x precision; a failing artifact is reported and the others still exported."""
        from kdmobile.export.opcheck import check_ops

        check_ops(self.run.model, self.example, self.opts.targets)
        arts = []
        for target in self.opts.targets:
            for precision in self.opts.precisions:
                if precision not in TARGETS[target].precisions:  # e.g. --target all --precision all
                    self.log(f"{target} {precision}: skipped ({target} offers {', '.join(TARGETS[target].precisions)})")
                    continue
                try:
                    art = self.export_one(target, precision)
                    self.log(f"{target} {precision}: {art.bundle} ({art.verification.get('status', '-')})")
                except ToolError as e:
                    art = Artifact(target, precision, error=str(e))
                    self.log(f"{target} {precision}: failed: {e}")
                except KDError as e:
                    art = Artifact(target, precision, error=str(e), error_is_user=True)
                    self.log(f"{target} {precision}: failed: {e}")
                except Exception as e:  # noqa: BLE001 - one converter failing must not lose the other bundles
                    msg = " ".join(f"{type(e).__name__}: {e}".split())[:300] + self._disk_note()
                    art = Artifact(target, precision, error=msg)
                    self.log(f"{target} {precision}: failed: {msg}")
                arts.append(art)
        rows = [reference_row(self.reference, None), *[a.row() for a in arts]]
        return ExportReport(arts, format_results(rows), rows)


def export_run(run_dir: str | Path, opts: ExportOptions, log: Callable[[str], None] = print) -> ExportReport:
    """Export a run directory to bundles (see Exporter); --out is checked before any conversion starts."""
    run = load_run(run_dir, opts.model)
    out = Path(opts.out).expanduser()
    created = not out.exists()
    for stale in opts.prepare_out():
        log(f"removed {stale.name}: staging left in {out} by an export that was killed")
    try:
        report = Exporter(run, opts, log).export_all()
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # no empty --out folder left behind by a failed export
        raise
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    return report


# ------------------------------------------------------------------------------------------------ --verify BUNDLE
def verify_existing(bundle_path: str | Path, thresholds: Thresholds, run_dir: str | Path | None = None,
                    trust: dict[str, Any] | None = None) -> ExportReport:
    """Re-verify a bundle: its seal, then parity/metric against `run_dir` when given, else random inputs.

    The manifest's `source.run_dir` is never followed: a bundle names whatever it likes, and only a run directory
    the user points at (--run DIR) is opened.
    """
    bundle = load_bundle(bundle_path, trust)  # refuses a broken seal or signature, unlisted files, bad checksums
    source = bundle.manifest.get("source") or {}
    art = Artifact(bundle.target, bundle.precision, bundle=bundle.path, size=file_size(bundle.model_path))
    ref: Reference | None = None
    if run_dir is not None:
        model = source.get("model", "student")
        run = load_run(run_dir, model if isinstance(model, str) else "student")  # load_run checks the name
        task = get_task(run.task)
        if task.head != bundle.head:
            raise UserError(f"--run {run.path}: a {run.method} ({task.head}) run cannot verify a {bundle.head} bundle")
        opts = ExportOptions(targets=[bundle.target], precisions=[bundle.precision], thresholds=thresholds)
        ref = Exporter(run, opts, bundled=task.bundled(bundle)).reference
        art.verification = verify_bundle(bundle, ref, thresholds)
        if (source.get("student_sha256") or source.get("model_sha256")) not in (None, sha256_file(run.model_file)):
            art.verification["note"] = (f"{run.model_file.name} differs from the one exported: compared with "
                                        f"{run.path}'s")
    else:
        art.verification = verify_random(bundle, "no --run DIR given: checked against itself on random inputs")
    rows = ([reference_row(ref, None)] if ref is not None else []) + [art.row()]
    return ExportReport([art], format_results(rows), rows)
