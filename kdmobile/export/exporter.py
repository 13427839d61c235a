"""`kdmobile export`: a run directory -> checked bundles, one per target x precision, each verified at export.

Reads only the run directory (export/run.py: student.safetensors, heldout.npz, class vectors, teachers/ for
--classes; nothing is unpickled), dispatches to one converter per target (export/jobs.py), writes each bundle
atomically through kdmobile.bundle.write_bundle with verification run by the runtime's own predictors inside the
write (a failed threshold flags the bundle; an exception leaves none). Settings: export/options.py; the outcome:
export/report.py; per-target facts: kdmobile/targets.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kdmobile import __version__
from kdmobile.bundle import Bundle, load_bundle, write_bundle, write_class_vectors
from kdmobile.errors import KDError, ToolError, UserError
from kdmobile.export.jobs import Job
from kdmobile.export.metadata import model_metadata
from kdmobile.export.options import ExportOptions, Thresholds
from kdmobile.export.quantize import file_size
from kdmobile.export.report import Artifact, ExportReport
from kdmobile.export.run import Run, load_run, read_classes_file
from kdmobile.export.verify import (Reference, format_results, reference_captions, reference_classes,
                                    reference_forecast, reference_row, verify_bundle, verify_random)
from kdmobile.fileio import MIN_FREE_BYTES, sha256_file
from kdmobile.rundir import CLASS_VECTORS_FILE, LABELS_FILE, STUDENT_FILE, teacher_file
from kdmobile.targets import TARGETS, resolve
from kdmobile.untrusted import MAX_LABELS_BYTES, load_npz, read_json

IO_NAMES = {"retrieval": ("image", "embedding"), "forecast": ("frames", "forecast")}
VERIFY_SAMPLES = 1000  # held-out samples used for parity and metrics (the PyTorch reference uses the same ones)


# ---------------------------------------------------------------------------------------------------- exporter
def verification_index(n: int) -> np.ndarray:
    """Which of n held-out samples verification uses: all up to VERIFY_SAMPLES, else that many evenly spaced (a split
    stored class by class would otherwise be verified on its first classes only)."""
    return np.unique(np.linspace(0, n - 1, min(n, VERIFY_SAMPLES)).round().astype(np.int64))


class Exporter:
    """Prepares a run once (class vectors, calibration, reference outputs) and writes one bundle per job."""

    def __init__(self, run: Run, opts: ExportOptions, log: Callable[[str], None] = print,
                 bundled: tuple[np.ndarray, list[str], bool] | None = None) -> None:
        """`bundled` = (class vectors, labels, new_classes) of an existing bundle, for --verify. `opts` were
        validated when they were built."""
        if opts.classes_file is not None and run.task != "retrieval":
            raise UserError(f"--classes: {run.name} is an {run.method} ({run.kind}) run; new classes only apply to "
                          "retrieval (ammkd) runs")
        self.run, self.opts, self.log = run, opts, log
        self.input_name, self.output_name = IO_NAMES[run.task]
        self.new_classes = opts.classes_file is not None
        self.labels: list[str] = []
        self.class_vectors: np.ndarray | None = None
        self.class_source = "run"
        self.model_inputs, self.raw_inputs = self._heldout_inputs()
        self.example = self._torch(self.model_inputs[:1])
        if bundled is not None:
            self.class_vectors, self.labels, self.new_classes = bundled
        elif run.task == "retrieval":
            self._prepare_classes()
        self.calibration = self._calibration() if "int8" in opts.precisions and bundled is None else None
        self.reference = self._reference()
        self.conversion_cache: dict[str, Any] = {}  # one export's converters share work (jobs.Job.cache)

    # ------------------------------------------------------------------ preparation
    @staticmethod
    def _torch(x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def _heldout_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """(normalised model inputs, raw runtime inputs) of the held-out samples verification uses."""
        run = self.run
        if run.task == "forecast":
            x_all = run.need("x_test")
            self.verify_index = verification_index(len(x_all))
            x = x_all[self.verify_index].astype(np.float32)
            return x, (x * self.std + self.mean).astype(np.float32)
        from kdmobile.data.transforms import normalise

        images = run.need("images_test")
        self.verify_index = verification_index(len(images))
        images = images[self.verify_index]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise UserError(f"{run.path / 'heldout.npz'}: images_test should be uint8 (N,S,S,3)")
        return normalise(images, tuple(self.img_mean), tuple(self.img_std)), images

    @property
    def img_mean(self) -> list[float]:
        """Per-channel image mean the student was trained with (CLIP's by default)."""
        return self.run.card.image_mean

    @property
    def img_std(self) -> list[float]:
        """Per-channel image std the student was trained with (CLIP's by default)."""
        return self.run.card.image_std

    @property
    def mean(self) -> float:
        """Forecast normalisation mean (physical units)."""
        return self.run.card.frame_mean

    @property
    def std(self) -> float:
        """Forecast normalisation std (physical units)."""
        return self.run.card.frame_std

    def _fuse(self, vectors: Sequence[Any]) -> np.ndarray:
        """The student's text fusion of per-teacher vectors -> (K, D) float32 L2-normalised rows."""
        import torch

        with torch.inference_mode():
            fused = self.run.model.fuse_text([torch.as_tensor(np.asarray(v, np.float32)) for v in vectors])
        return fused.float().numpy()

    def _teacher_vectors(self, names: list[str]) -> list[np.ndarray]:
        """Each teacher's text encoder on the new class names, with the run's prompt templates."""
        from kdmobile.config import DEFAULT_TEMPLATES
        from kdmobile.models.clip_teacher import load_teacher

        templates = list(self.run.card.templates or DEFAULT_TEMPLATES)
        out = []
        for t in self.run.card.teachers:
            path = teacher_file(self.run.path, t)
            if not path.is_file():
                raise UserError(f"--classes needs the teachers' text encoders: {path} missing")
            out.append(load_teacher(path).class_vectors(names, templates).float().numpy())
        if not out:
            raise UserError(f"{self.run.path / STUDENT_FILE}: no teachers recorded; cannot encode new classes")
        return out

    def _prepare_classes(self) -> None:
        """Bundled class vectors + labels: new classes through the teachers, else the run's classes/captions."""
        run = self.run
        teachers = list(run.card.teachers)
        if self.opts.classes_file is not None:
            self.labels = read_classes_file(self.opts.classes_file)
            self.class_vectors = self._fuse(self._teacher_vectors(self.labels))
            self.class_source = f"classes file {Path(self.opts.classes_file).name}"
        elif run.kind == "classes":
            path = run.path / CLASS_VECTORS_FILE
            if not path.is_file():
                raise UserError(f"{path}: missing (per-teacher class vectors)")
            z = load_npz(path)
            missing = [t for t in teachers if t not in z]
            if missing:
                raise UserError(f"{path}: no class vectors for teacher(s) {', '.join(missing)}")
            self.class_vectors = self._fuse([z[t] for t in teachers])
            self.labels = list(run.card.labels or read_json(run.path / LABELS_FILE, max_bytes=MAX_LABELS_BYTES))
        else:  # captions: the gallery is the held-out captions, fused like class vectors
            self.class_vectors = self._fuse(run.text_vectors(teachers))
            self.labels = [str(c) for c in run.need("captions_test")]
            self.class_source = "held-out captions"
        if self.class_vectors is None or len(self.labels) != len(self.class_vectors):
            raise UserError(f"{run.path}: {len(self.labels)} labels for "
                          f"{0 if self.class_vectors is None else len(self.class_vectors)} class vectors")

    def _calibration(self) -> np.ndarray:
        """Up to --calibration-samples normalised training inputs for static int8."""
        run, n = self.run, self.opts.calibration_samples
        if run.task == "forecast":
            return run.need("x_calib")[:n].astype(np.float32)
        from kdmobile.data.transforms import normalise

        return normalise(run.need("images_calib")[:n], tuple(self.img_mean), tuple(self.img_std))

    def _reference(self) -> Reference:
        """The fp32 PyTorch student's outputs and metric on the held-out inputs."""
        run, idx = self.run, self.verify_index
        if run.kind == "forecast":
            y = run.need("y_test")[idx].astype(np.float32)
            return reference_forecast(run.model, self.model_inputs, y, self.mean, self.std)
        if run.kind == "captions":
            owner = run.need("caption_owner_test")
            keep = np.isin(owner, idx)  # the captions of the images used; owners renumbered to their positions
            text = self._fuse([v[keep] for v in run.text_vectors(list(run.card.teachers))])
            return reference_captions(run.model, self.raw_inputs, self.model_inputs, text,
                                      np.searchsorted(idx, owner[keep]))
        labels = run.heldout().labels_test
        return reference_classes(run.model, self.raw_inputs, self.model_inputs,
                                 None if labels is None else labels[idx], self.class_vectors, self.logit_scale,
                                 self.new_classes)

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.run.model, "scale", None)
        return float(scale().detach()) if callable(scale) else 1.0

    # --------------------------------------------------------------------- manifest
    def manifest(self, target: str, precision: str, info: dict[str, Any]) -> dict[str, Any]:
        """The bundle manifest (write_bundle fills schema_version, created and files)."""
        run = self.run
        shape = [1, *self.model_inputs.shape[1:]]
        m: dict[str, Any] = {"task": run.task, "target": target, "precision": precision,
                             "model_file": TARGETS[target].model_file}
        if run.task == "retrieval":
            m["input"] = {"name": self.input_name, "shape": shape, "dtype": "float32", "layout": "NCHW",
                          "value_range": [0, 255], "mean": self.img_mean, "std": self.img_std,
                          "resize": "bilinear", "color": "RGB"}
            k, d = self.class_vectors.shape
            m["outputs"] = [{"name": self.output_name, "shape": [1, int(d)], "l2_normalised": True}]
            m["retrieval"] = {"class_vectors": {"file": "class_vectors.f32", "shape": [int(k), int(d)],
                                                "dtype": "float32", "byte_order": "little"},
                              "logit_scale": self.logit_scale, "labels_file": "labels.json",
                              "prompt_templates": list(run.card.templates),
                              "kind": run.kind if not self.new_classes else "classes",
                              "class_source": self.class_source, "teachers": list(run.card.teachers)}
        else:
            calib = run.heldout().x_calib if run.heldout().x_calib is not None else self.model_inputs
            raw = calib * self.std + self.mean
            lo, hi = float(raw.min()), float(raw.max())
            m["input"] = {"name": self.input_name, "shape": shape, "dtype": "float32", "layout": "NTHW",
                          "value_range": [lo, hi if hi > lo else lo + 1.0], "mean": [self.mean], "std": [self.std],
                          "value_range_note": "observed on the calibration windows, physical units"}
            t_out = int(run.card.frames_out or self.reference.outputs.shape[1])
            m["outputs"] = [{"name": self.output_name, "shape": [1, t_out, *shape[2:]]}]
            m["forecast"] = {"frames_in": int(shape[1]), "frames_out": t_out, "mean": self.mean, "std": self.std,
                             "height": int(shape[2]), "width": int(shape[3]),
                             "units": "the model maps (x - mean) / std to (y - mean) / std; predictors take raw units"}
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
        return model_metadata(self.run.task, self.run.name, target, precision, self.input_name, self.output_name)

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
            if self.run.task == "retrieval":
                cv = self.class_vectors
                files["class_vectors.f32"] = lambda p: write_class_vectors(p, cv)
                files["labels.json"] = (json.dumps(self.labels, indent=1, ensure_ascii=False) + "\n").encode()
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
        if run.task != bundle.task:
            raise UserError(f"--run {run.path}: a {run.method} ({run.task}) run cannot verify a {bundle.task} bundle")
        opts = ExportOptions(targets=[bundle.target], precisions=[bundle.precision], thresholds=thresholds)
        bundled = None
        if bundle.task == "retrieval":
            new = bundle.manifest["retrieval"].get("class_source", "run") not in ("run", "held-out captions")
            bundled = (bundle.class_vectors, bundle.labels, new and run.kind != "captions")
        ref = Exporter(run, opts, bundled=bundled).reference
        art.verification = verify_bundle(bundle, ref, thresholds)
        if (source.get("student_sha256") or source.get("model_sha256")) not in (None, sha256_file(run.model_file)):
            art.verification["note"] = (f"{run.model_file.name} differs from the one exported: compared with "
                                        f"{run.path}'s")
    else:
        art.verification = verify_random(bundle, "no --run DIR given: checked against itself on random inputs")
    rows = ([reference_row(ref, None)] if ref is not None else []) + [art.row()]
    return ExportReport([art], format_results(rows), rows)
