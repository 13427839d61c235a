"""Find what to benchmark: read run directories, find and check their bundles, and plan the subjects to measure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from kdmobile.bench.settings import Settings
from kdmobile.bench.towers import BACKEND
from kdmobile.bench.subjects import BundleSubject, Subject, TorchSubject, _params_flops
from kdmobile.bundle import Bundle, load_bundle
from kdmobile.errors import KDError, UserError
from kdmobile.targets import PRECISIONS, TARGETS, target_names
from kdmobile.methods import get_method
from kdmobile.rundir import NOKD_FILE, STUDENT_FILE, RunDir, is_run_dir, open_run, recorded_bundles, teacher_files

DEFAULT_BUNDLES = "bundles"  # where `kdmobile export` writes bundles unless --out says otherwise


@dataclass
class Plan:
    """What to measure, found from the inputs, and what was noticed on the way."""

    subjects: list[Subject] = field(default_factory=list)
    runs: list[RunDir] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    torch_fallback: list[str] = field(default_factory=list)  # runs without bundles: their PyTorch student measured


def _same_dir(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except OSError:
        return False


def find_bundles(run: RunDir, bundles_dir: str | Path | None, notes: list[str],
                 trust: dict[str, Any] | None = None) -> list[Bundle]:
    """This run's bundles (checked): with bundles_dir None, those RUN/exports.json records (where `kdmobile export`
    wrote them), else or then RUNNAME-TARGET-PRECISION under the default `bundles/`; with a bundles_dir, those in it."""
    candidates: list[Path] = []
    if bundles_dir is None:
        candidates = recorded_bundles(run.path)
    root = Path(bundles_dir if bundles_dir is not None else DEFAULT_BUNDLES).expanduser()
    if not candidates:
        candidates = [root / f"{run.name}-{t}-{p}" for t in target_names() for p in PRECISIONS]
    found = []
    for d in candidates:
        if not d.is_dir():
            continue
        bundle = load_bundle(d, trust)  # refuses a changed (or, with trust, unsigned) bundle in one line
        src = (bundle.manifest.get("source") or {}).get("run_dir")
        if src and Path(src).expanduser().is_dir() and not _same_dir(src, run.path):
            notes.append(f"{d} was exported from {src}, not {run.path}: skipped")
            continue
        found.append(bundle)
    return found


def _runnable(bundle: Bundle, notes: list[str]) -> bool:
    """False (with a note) for bundles this machine cannot run (CoreML off macOS)."""
    target = TARGETS[bundle.target]
    if not target.runs_here():
        notes.append(f"{bundle.path.name}: skipped ({target.backend} runs on {target.where_it_runs()} only)")
        return False
    if bundle.model_path.suffix != TARGETS[bundle.target].suffix:
        notes.append(f"{bundle.path.name}: skipped (unexpected model file {bundle.model_path.name})")
        return False
    return True


def _check_io(bundle: Bundle) -> None:
    """Refuse (before any measurement or report) a bundle whose manifest shapes disagree with its model file."""
    from kdmobile.runtime.backends import open_backend
    from kdmobile.runtime.predictors import check_model_io

    try:
        backend = open_backend(bundle)
    except KDError:
        return  # a backend missing here is reported per model by `measure`, as before
    check_model_io(bundle, backend)


def _torch_devices(settings: Settings) -> list[str]:
    """Devices for PyTorch subjects: auto = CPU (+ CUDA when available); [] when torch is missing (auto)."""
    try:
        import torch
    except ImportError:
        if settings.device == "auto":
            return []
        raise UserError("teachers and un-exported students run in PyTorch: install torch, or pass --no-teachers "
                      "and bundles only") from None
    cuda = torch.cuda.is_available()
    if settings.device == "cuda" and not cuda:
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return {"cpu": ["cpu"], "cuda": ["cuda"], "auto": ["cpu", "cuda"] if cuda else ["cpu"]}[settings.device]


def _teacher_subjects(run: RunDir, devices: Sequence[str], exported: set[str], notes: list[str]) -> list[Subject]:
    """The run's teachers (teachers/*.safetensors) in PyTorch on each device, then on the CPU in onnxruntime (exported
    by bench, kdmobile.bench.towers) unless `exported` names it (the run's teacher already has an ONNX bundle)."""
    files = teacher_files(run.path)
    method = get_method(run.method)
    order = [k for k in ((run.metrics or {}).get("models") or {})]
    keyed = []
    for f in files:
        key = method.teacher_key(f.stem)
        params, flops = _params_flops(run.entry(key))
        keyed.append((order.index(key) if key in order else len(order), key, f, params, flops))
    keyed.sort(key=lambda k: k[:2])
    kind = method.teacher_model_kind
    out: list[Subject] = [TorchSubject(f"{run.name}/{key}", "teacher", run, f, device, kind, params, flops)
                          for device in devices for _, key, f, params, flops in keyed]
    if "cpu" in devices:
        from kdmobile.bench.towers import tower_subjects

        out += tower_subjects(run, [(key, f, kind, params, flops) for _, key, f, params, flops in keyed
                                    if f.stem not in exported], notes)
    return out


def _baseline_subjects(run: RunDir, devices: Sequence[str]) -> list[Subject]:
    """The run's no-KD student (trained without the teachers), so the table shows what distillation added."""
    file, entry = run.path / NOKD_FILE, run.entry("student_nokd")
    if not file.is_file() or not entry:
        return []
    params, flops = _params_flops(entry)
    kind = get_method(run.method).student_model_kind
    return [TorchSubject(f"{run.name}/student_nokd", "baseline", run, file, d, kind, params, flops) for d in devices]


def _reference_subjects(p: Plan, names: list[str]) -> list[Subject]:
    """Latency-only open_clip image towers at the first image bundle's input size (a note when there is none)."""
    sizes = [s.bundle.input["shape"][2] for s in p.subjects if isinstance(s, BundleSubject)
             and s.bundle.input["layout"] == "NCHW"]
    if not sizes:
        p.notes.append("--reference: no image bundle to take the input size from; no reference rows")
        return []
    try:
        from kdmobile.bench.reference import reference_subjects
    except ImportError:
        p.notes.append("--reference needs torch and open_clip (the [train] extra) to build the towers")
        return []
    return reference_subjects(names, int(sizes[0]))


def plan(inputs: Sequence[str], bundles_dir: str | Path | None, settings: Settings,
         trust: dict[str, Any] | None = None) -> Plan:
    """Resolve RUN and BUNDLE paths into subjects: bundles first, then the runs' teachers; with `trust`
    (kdmobile.signing.trusted_keys) every bundle must be signed by one of those keys."""
    out = Plan()
    bundles: list[tuple[Bundle, RunDir | None]] = []
    torch_students: list[RunDir] = []

    def add_run(path: str | Path) -> RunDir:
        run = open_run(path, "bench")
        for r in out.runs:
            if r.path == run.path:
                return r
        out.runs.append(run)
        return run

    for arg in inputs:
        p = Path(arg).expanduser()
        if not p.exists():
            raise UserError(f"{p}: no such bundle or run directory")
        if p.is_dir() and (p / "manifest.json").is_file():
            bundle = load_bundle(p, trust)
            src = (bundle.manifest.get("source") or {}).get("run_dir")
            run = None
            if src and is_run_dir(src):
                run = add_run(src)
            else:
                out.notes.append(f"{p.name}: run directory {src or '(none recorded)'} not found: metric from the "
                                 "manifest's export verification, no teachers")
            bundles.append((bundle, run))
        elif p.is_dir() and is_run_dir(p):
            run = add_run(p)
            found = find_bundles(run, bundles_dir, out.notes, trust)
            if not found:
                where = (f"{run.path / 'exports.json'} or {DEFAULT_BUNDLES}/{run.name}-*" if bundles_dir is None
                         else f"{Path(bundles_dir)}/{run.name}-*")
                out.notes.append(f"{run.name}: no bundles found in {where}: benchmarked the PyTorch student (torch "
                                 "eager) instead; run `kdmobile export` for the phone numbers")
                out.torch_fallback.append(run.name)
                torch_students.append(run)
            bundles += [(b, run) for b in found]
        else:
            raise UserError(f"{p}: not a bundle (no manifest.json) or run directory (no method.json)")
    seen: set[Path] = set()
    for bundle, run in bundles:
        key = bundle.path.resolve()
        if key not in seen and _runnable(bundle, out.notes):
            seen.add(key)
            _check_io(bundle)
            out.subjects.append(BundleSubject(bundle, run))
    needs_torch = bool(torch_students) or (settings.teachers and out.runs)
    devices = _torch_devices(settings) if needs_torch else []
    if needs_torch and not devices:
        out.notes.append("torch is not installed: teachers and un-exported students were not measured")
    for run in torch_students:
        if not (run.path / STUDENT_FILE).is_file():
            raise UserError(f"{run.path}: no bundles and no {STUDENT_FILE} to benchmark")
        params, flops = _params_flops(run.entry("student"))
        for device in devices:
            out.subjects.append(TorchSubject(f"{run.name}/student", "student", run, run.path / STUDENT_FILE, device,
                                             get_method(run.method).student_model_kind, params, flops))
    if settings.teachers:
        for run in out.runs:
            exported = {str((s.bundle.manifest.get("source") or {}).get("model")) for s in out.subjects
                        if isinstance(s, BundleSubject) and s.run is run and s.role == "teacher"
                        and s.backend == BACKEND}
            subjects = _teacher_subjects(run, devices, exported, out.notes)
            if devices and not subjects:
                out.notes.append(f"{run.name}: no teachers/*.safetensors in the run directory")
            out.subjects += subjects + _baseline_subjects(run, devices)
    if settings.references:
        out.subjects += _reference_subjects(out, settings.references)
    if not out.subjects:
        raise UserError("nothing to benchmark: " + ("; ".join(out.notes) or "no bundles or runs given"))
    return out


