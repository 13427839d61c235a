"""The `kdmobile` command: train, export, bench, predict, data, doctor.

Heavy imports (torch, open_clip, converters) happen inside each verb, and the export, predict and bench verbs are
defined in their stage's module, imported only when that verb runs: `--help` stays fast and `predict` / `bench
BUNDLE` work with only the [runtime] extra installed. A verb whose extra is missing says which one to install.
User errors print one line and exit 2; environment failures (disk full, read-only folder, a converter crash) print
one line with the cause and exit 1; Ctrl-C exits 130 and leaves only complete files behind.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from kdmobile import __version__
from kdmobile.errors import KDError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kdmobile: error: {message} (see '{self.prog} --help')\n")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# ---------------------------------------------------------------------------------------------- train
def _add_common_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (e.g. a previous run's config.yaml); flags override it")
    p.add_argument("--name", help="run name: outputs go to OUT/NAME (NAME2, NAME3... if taken)")
    p.add_argument("--out", help="parent directory of runs (default: runs)")
    p.add_argument("--seed", type=int, help="seed for splits, initialisation and data order")
    p.add_argument("--epochs", type=int, help="student epochs")
    p.add_argument("--batch-size", type=int, help="student batch size (per process under torchrun)")
    p.add_argument("--lr", type=float, help="student learning rate")
    p.add_argument("--device", help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set teacher_train.epochs=2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run OUT/NAME where it stopped")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (the plan, one line per epoch and log.jsonl remain)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the run plan (data, stages, device, teachers, estimated time) and exit; writes nothing")
    p.add_argument("--teachers-from", metavar="RUN",
                   help="reuse the trained teachers of an earlier run of this method (RUN/teachers/*.pt) without "
                        "training them again (teacher epochs default to 0)")


def _common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys set by the flags every method has (None = not given)."""
    return {"name": args.name, "out": args.out, "seed": args.seed, "teacher_train.epochs": args.teacher_epochs,
            "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
            "train.device": args.device, "teacher_train.device": args.device}


def _teachers_from(args: argparse.Namespace, method: str) -> list[str] | None:
    """Teacher files of --teachers-from RUN (None without it); teacher epochs then default to 0."""
    if not args.teachers_from:
        return None
    if args.teachers is not None:
        raise KDError("give --teachers or --teachers-from, not both")
    from kdmobile.train.plan import teacher_files_from

    files = teacher_files_from(args.teachers_from, method)
    if args.teacher_epochs is None:
        args.teacher_epochs = 0
    return files


def _train_with_plan(job: Any, plan: Any, dry_run: bool, progress: bool) -> dict[str, Any] | None:
    """Print the plan; unless a dry run, train with a reporter installed (epoch lines, summaries, estimates)."""
    from kdmobile.train import distributed as dist
    from kdmobile.train.progress import Reporter, reporting

    if dist.is_main():
        print(plan.render(), flush=True)
    if dry_run:
        if dist.is_main():
            print("dry run: nothing was trained or written")
        return None
    reporter = Reporter(stages=plan.stages)
    with reporting(reporter):
        metrics = job.run_all()
    if dist.is_main():
        print(reporter.total_line())
    return metrics


def _train_ammkd(args: argparse.Namespace) -> int:
    from kdmobile.config import AMMKDConfig, load_config

    reused = _teachers_from(args, "ammkd")
    overrides: dict[str, Any] = {
        **_common_overrides(args), "data.spec": args.data, "data.max_train": args.max_train,
        "data.max_test": args.max_test, "data.image_size": args.image_size,
        "teachers": reused or (_csv(args.teachers) if args.teachers else None), "student": args.student,
        "fusion": args.fusion,
        "weighting": args.weighting, "temperature": args.temperature, "tolerance": args.tolerance,
        "loss.terms": _loss_terms(args.loss) if args.loss else None,
    }
    cfg = load_config(AMMKDConfig, args.config, overrides, args.set)
    from kdmobile.train import distributed as dist
    from kdmobile.train.ammkd import AMMKD, metrics_table
    from kdmobile.train.plan import ammkd_plan, source_mismatch

    job = AMMKD(cfg, resume=args.resume, progress=not args.no_progress)
    plan = ammkd_plan(job, teachers_from=args.teachers_from)
    warning = source_mismatch(args.teachers_from, cfg) if args.teachers_from else None
    if warning:
        plan.facts.append(("warning", warning))
    metrics = _train_with_plan(job, plan, args.dry_run, not args.no_progress)
    run = job.run
    if metrics is None:
        return 0
    if dist.is_main():
        print(metrics_table(metrics))
        print(f"student parameters: {metrics['student_params_vs_largest_teacher']:.3f} x the largest teacher's")
        print(f"run directory: {run}  (metrics.json, student.safetensors, teachers/, class_vectors.npz, log.jsonl)")
    return 0


def _loss_terms(text: str) -> dict[str, float]:
    """`ce=1,kl=1,fd=0.5` -> {"ce": 1.0, ...}; validated by the config."""
    terms: dict[str, float] = {}
    for item in _csv(text):
        key, eq, value = item.partition("=")
        try:
            terms[key.strip()] = float(value)
        except ValueError:
            raise KDError(f"--loss {item}: expected TERM=WEIGHT, e.g. ce=1,kl=1,fd=1") from None
        if not eq:
            raise KDError(f"--loss {item}: expected TERM=WEIGHT, e.g. ce=1,kl=1,fd=1")
    return terms


def _train_sdkd(args: argparse.Namespace) -> int:
    from kdmobile.config import SDKDConfig, load_config

    reused = _teachers_from(args, "sdkd")
    overrides: dict[str, Any] = {
        **_common_overrides(args), "data.path": args.data, "data.n": args.n, "data.res": args.res,
        "teachers": args.teachers, "student": args.student, "kd": args.kd, "weighting": args.weighting,
        "teacher_files": reused,
    }
    cfg = load_config(SDKDConfig, args.config, overrides, args.set)
    from kdmobile.rundir import new_run_dir
    from kdmobile.train import distributed as dist
    from kdmobile.train.plan import sdkd_plan
    from kdmobile.train.sdkd import SDKD, cached_navier_stokes_path, metrics_table

    # A dry run must not generate the data set: it plans without the data unless a file or the cache has it.
    data_ready = bool(cfg.data.path) or args.resume or not args.dry_run or cached_navier_stokes_path(cfg).is_file()
    job = SDKD(cfg, resume=args.resume, progress=not args.no_progress) if data_ready else None
    run = job.run if job is not None else new_run_dir(cfg.out, cfg.name, args.resume)
    plan = sdkd_plan(cfg, job, run, teachers_from=args.teachers_from)
    metrics = _train_with_plan(job, plan, args.dry_run, not args.no_progress)
    if metrics is None:
        return 0
    if dist.is_main():
        print(metrics_table(metrics))
        if "mse_reduction_vs_nokd_pct" in metrics:
            print(f"SDKD student vs no-KD student: MSE {metrics['mse_reduction_vs_nokd_pct']:+.1f}% reduction, "
                  f"MAE {metrics['mae_reduction_vs_nokd_pct']:+.1f}% reduction")
        print(f"run directory: {run}  (metrics.json, student.safetensors, teachers/, forecast.png, log.jsonl)")
    return 0


_AMMKD_EXAMPLES = """\
examples:
  kdmobile train ammkd --dry-run                          the plan and an estimated duration; writes nothing
  kdmobile train ammkd --data imagefolder:photos/ --image-size 64 --name photos
  kdmobile train ammkd --teachers-from runs/photos --weighting none --name photos-nokd
                                                          reuse runs/photos/teachers/*.pt: trains only a student
  kdmobile train ammkd --teachers ViT-B-32:openai,RN50:openai --teacher-epochs 2   (needs a network)
"""

_SDKD_EXAMPLES = """\
examples:
  kdmobile train sdkd --dry-run                           the plan; generates and writes nothing
  kdmobile train sdkd --data ns_V1e-3_N5000_T50.mat --kd spectral-low --student sdkd_unet
  kdmobile train sdkd --teachers-from runs/sdkd --kd output --name sdkd-output   reuse the trained teacher
"""


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="distil a student from teachers (ammkd, sdkd)",
                           description="Train teachers and distil a small student; outputs go to a run directory.")
    methods = train.add_subparsers(dest="method", required=True, metavar="METHOD", parser_class=_Parser)
    a = methods.add_parser(
        "ammkd", help="image-text retrieval student from two CLIP teachers",
        description="AMMKD: pre-train two CLIP teachers on the data, encode class prompts once, and distil a timm "
                    "mobile student with feature fusion and multi-teacher KL weighting. A run plan (data, "
                    "stages, device, teachers, estimated time) is printed before training.",
        epilog=_AMMKD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--data", help="digits (default, embedded), cifar10:PATH, cifar100:PATH, imagefolder:PATH, "
                                  "captions:PATH")
    a.add_argument("--teachers", help="comma list of open_clip teachers: built-in kd-vit-s,kd-rn-s (default), "
                                      "NAME:TAG (e.g. ViT-B-32:openai) or NAME:/path/weights.pt")
    a.add_argument("--teacher-epochs", type=int, help="teacher pre-training epochs (0: use the weights as they are)")
    a.add_argument("--student", help="timm backbone of the student (default mobilenetv3_small_075)")
    a.add_argument("--fusion", choices=["full", "none"], help="feature fusion on (full) or off (ablation)")
    a.add_argument("--weighting", help="how the teachers are combined: confidence (CA-MKD per-sample, default), "
                                       "adaptive (AE-KD), reliable (min-norm x confidence), equal, none (no KD), "
                                       "single:TEACHER")
    a.add_argument("--temperature", type=float, help="KD temperature T (default 4)")
    a.add_argument("--loss", metavar="TERM=W,...", help="loss terms and weights: ce (labels), kl (AMMKD), fd (CLIP-KD "
                                                       "feature distillation), icl (interactive contrastive); default "
                                                       "ce=1,kl=1")
    a.add_argument("--tolerance", type=float, help="AE-KD tolerance C in (0,1] (default 0.6; 1 = equal weights)")
    a.add_argument("--image-size", type=int, help="input size in pixels (default: from the data: 32 for digits and "
                                                  "CIFAR, the native size up to 96 for photos)")
    a.add_argument("--max-train", type=int, help="use at most N training images")
    a.add_argument("--max-test", type=int, help="use at most N test images")
    _add_common_train(a)
    a.set_defaults(func=_train_ammkd)
    s = methods.add_parser(
        "sdkd", help="spatiotemporal forecaster with spectral distillation",
        epilog=_SDKD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SDKD: train a conv+Transformer forecaster teacher, then a lightweight student whose latent is "
                    "aligned with the teacher's in low and high frequency bands. With no --data, a small "
                    "Navier-Stokes set is generated and cached ($KDMOBILE_CACHE or ~/.cache/kdmobile).")
    s.add_argument("--data", help="sequences file: .npy/.npz (N,T,H,W) or an FNO .mat (v5 or v7.3)")
    s.add_argument("--n", type=int, help="trajectories to generate when no --data (default 40)")
    s.add_argument("--res", type=int, help="grid size to generate when no --data (default 32)")
    s.add_argument("--teachers", type=int, help="number of teachers (weighted like AMMKD's; default 1)")
    s.add_argument("--teacher-epochs", type=int, help="teacher epochs")
    s.add_argument("--student", choices=["sdkd_resnet", "sdkd_unet"], help="student architecture")
    s.add_argument("--kd", choices=["none", "output", "spectral", "spectral-low", "spectral-high"],
                   help="distillation terms (default spectral: output + both frequency bands)")
    s.add_argument("--weighting", help="teacher weighting with several teachers: adaptive, equal, single:NAME")
    _add_common_train(s)
    s.set_defaults(func=_train_sdkd)


def _data_navier_stokes(args: argparse.Namespace) -> int:
    from kdmobile.data.navier_stokes import generate_to_file

    info: dict[str, Any] = {}
    path = generate_to_file(args.out, n=args.n, res=args.res, visc=args.visc, t_final=args.t_final, seed=args.seed,
                            batch_size=args.batch_size, device=args.device, dt=args.dt, forcing=args.forcing,
                            dt_record=args.record_every, dtype=args.dtype, cpu_threads=args.threads,
                            progress=not args.no_progress, restart=args.restart, info=info)
    threads = f"{info['threads']} thread{'s' if info['threads'] > 1 else ''}"
    where = f"cpu, {threads}" if info["device"] == "cpu" else info["device"]
    print(f"wrote {path} ({args.n} trajectories; this run {info['seconds']:.1f} s on {where})")
    return 0


def _add_data(sub: Any) -> None:
    data = sub.add_parser("data", help="generate datasets (navier-stokes)",
                          description="Generate training data the toolkit can make itself.")
    kinds = data.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)
    ns = kinds.add_parser(
        "navier-stokes", help="2-D Navier-Stokes vorticity trajectories (FNO-paper generator)",
        description="Pseudo-spectral solver of 2-D incompressible Navier-Stokes on the unit torus, as in the FNO "
                    "paper: Gaussian random field initial vorticity, forcing 0.1(sin 2pi(x+y) + cos 2pi(x+y)), "
                    "Crank-Nicolson viscosity, one snapshot per unit time. Writes .npz (u: N,T,H,W plus a, t, "
                    "meta), .npy (u only) or .mat (MATLAB v7.3, FNO's layout u: N,H,W,T, a: N,H,W, t). "
                    "Saved chunk by chunk in OUT.parts/: rerunning an interrupted command resumes it.")
    ns.add_argument("--out", required=True, help="output file (.npz, .npy or .mat); written atomically at the end")
    ns.add_argument("--n", type=int, default=20, help="number of trajectories (default 20)")
    ns.add_argument("--res", type=int, default=64, help="grid size (default 64)")
    ns.add_argument("--visc", type=float, default=1e-3, help="viscosity nu (default 1e-3)")
    ns.add_argument("--t-final", type=float, default=20.0, help="simulated time (default 20)")
    ns.add_argument("--record-every", type=float, default=1.0, help="time between snapshots (default 1)")
    ns.add_argument("--dt", type=float, default=None, help="time step (default: adaptive, at most 1e-3)")
    ns.add_argument("--forcing", choices=["fno", "none"], default="fno", help="forcing term (default fno)")
    ns.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="solver and file precision (default float32)")
    ns.add_argument("--seed", type=int, default=0, help="seed of the initial conditions (default 0)")
    ns.add_argument("--batch-size", type=int, default=32,
                    help="trajectories per chunk: one batch on CUDA, split over the threads on CPU (default 32)")
    ns.add_argument("--threads", type=int, default=None, help="CPU worker threads (default: all CPUs)")
    ns.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")
    ns.add_argument("--restart", action="store_true",
                    help="discard an unfinished generation in OUT.parts/ instead of resuming it")
    ns.add_argument("--no-progress", action="store_true", help="no progress bar")
    ns.set_defaults(func=_data_navier_stokes)


# ----------------------------------------------------------------------------------------------- doctor
def _extras_status() -> list[list[str]]:
    """Per extra of this installation ([runtime], [train], [export]): installed or not, and what is missing.

    Read from kdmobile's own package metadata (pyproject.toml's extras), without importing anything."""
    import re
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        reqs = requires("kdmobile") or []
    except PackageNotFoundError:  # running from a source tree that was never installed
        return []
    extras: dict[str, list[str]] = {}
    for req in reqs:
        name, _, marker = req.partition(";")
        found = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if found:
            extras.setdefault(found.group(1), []).append(name.strip())

    def missing(extra: str, seen: set[str]) -> list[str]:
        """What of an extra is not installed: its packages, and "[other]" for an included extra that is incomplete."""
        out: list[str] = []
        for req in extras.get(extra, []):
            m = re.match(r"([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", req)
            if m is None:
                continue
            if m.group(1).lower() == "kdmobile":  # an extra that includes other extras
                for sub in (x.strip() for x in (m.group(2) or "").split(",")):
                    if sub and sub not in seen:
                        seen.add(sub)
                        if missing(sub, seen):
                            out.append(f"[{sub}]")
                continue
            try:
                version(m.group(1))
            except PackageNotFoundError:
                if m.group(1) not in out:
                    out.append(m.group(1))
        return out

    rows = []
    for extra in ("runtime", "train", "export"):
        if extra not in extras:  # an installation older than these extras
            continue
        lacking = missing(extra, {extra})
        rows.append([f"[{extra}]", "no" if lacking else "yes", ", ".join(lacking)])
    return rows


def _doctor(args: argparse.Namespace) -> int:
    import importlib.util
    import platform

    from kdmobile.runtime.backends import available_backends
    from kdmobile.table import format_table

    rows = [[module, "yes" if v else "no", v or ""] for module, v in available_backends().items()]
    cuda = "no (torch missing)"
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            cuda = f"yes ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "no"
        except Exception as exc:  # noqa: BLE001 - a broken torch install means "no CUDA here"
            cuda = f"no ({type(exc).__name__})"
    rows.append(["CUDA", cuda, ""])
    print(f"kdmobile {__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(format_table(["backend", "available", "version"], rows))
    extras = _extras_status()
    if extras:
        print()
        print(format_table(["extra", "installed", "missing"], extras))
    return 0


# ------------------------------------------------------------------------------------------------- main
# Verbs defined next to their stage: (name, module with register(sub), extra it needs, one-line help for `--help`).
# A module is imported only when its verb runs (or by build_parser() for the whole tree); until then, and when its
# extra is missing, a stub stands in that lists the verb and, when run, names the extra to install.
_LAZY_VERBS: tuple[tuple[str, str, str, str], ...] = (
    ("export", "kdmobile.export.cli", "export", "export a run to verified ONNX / TFLite / CoreML bundles"),
    ("predict", "kdmobile.runtime.cli", "runtime",
     "run a bundle on images (retrieval) or frame arrays (forecast); no torch"),
    ("bench", "kdmobile.bench.cli", "runtime",
     "latency, memory, size and metric of bundles vs teachers, with CI gates"),
)

# Top-level modules of each extra (what a ModuleNotFoundError names), to turn one into "install the [extra]".
_EXTRA_MODULES: dict[str, frozenset[str]] = {
    "runtime": frozenset({"onnxruntime", "ai_edge_litert", "psutil"}),
    "plot": frozenset({"matplotlib"}),  # also in [train], which `kdmobile train` names instead
    "train": frozenset({"torch", "torchvision", "timm", "open_clip", "sklearn", "scipy", "h5py", "yaml",
                        "safetensors"}),
    "export": frozenset({"onnx", "onnxscript", "onnx_ir", "litert_torch", "ai_edge_quantizer", "coremltools"}),
}
_VERB_EXTRA = {"train": "train", "data": "train", "export": "export"}  # predict and bench: what the module needs

# Further verbs registered by plugins or tests: each a register(sub) function.
_EXTRA_VERBS: list[Callable[[Any], None]] = []


def _extra_of(module: str | None) -> str | None:
    """The extra that provides a top-level module (None: not one of kdmobile's optional dependencies)."""
    top = (module or "").split(".")[0]
    return next((extra for extra, mods in _EXTRA_MODULES.items() if top in mods), None)


def missing_extra_message(verb: str, err: ModuleNotFoundError) -> str | None:
    """'kdmobile VERB needs the [EXTRA] extra ...' for a missing optional dependency; None for anything else."""
    extra = _extra_of(err.name)
    if extra is None:
        return None
    extra = _VERB_EXTRA.get(verb, extra)
    return (f"kdmobile {verb} needs the [{extra}] extra ({err.name.split('.')[0]} is not installed): "
            f"pip install 'kdmobile[{extra}]'")


def _add_stub(sub: Any, name: str, extra: str, help_text: str, missing: ModuleNotFoundError | None) -> None:
    """A verb whose module is not loaded: listed in `--help`; when run, it names the extra to install."""
    def stub(args: argparse.Namespace) -> int:
        if missing is not None:
            raise missing
        raise KDError(f"kdmobile {name} was not loaded by this parser (build it with build_parser(load={name!r}))")

    p = sub.add_parser(name, help=help_text, add_help=False,
                       description=f"{help_text} (needs the [{extra}] extra: pip install 'kdmobile[{extra}]')")
    p.set_defaults(func=stub, _stub=True)


def _add_lazy_verbs(sub: Any, load: str | None) -> None:
    """Register each stage's verb: for real when `load` names it (or is "*"), else a stub (also when its extra is
    missing and its module cannot be imported)."""
    import importlib

    for name, module, extra, help_text in _LAZY_VERBS:
        missing = None
        if load in ("*", name):
            try:
                importlib.import_module(module).register(sub)
                continue
            except ModuleNotFoundError as err:
                if _extra_of(err.name) is None:
                    raise
                missing = err
        _add_stub(sub, name, extra, help_text, missing)


def build_parser(load: str | None = "*") -> argparse.ArgumentParser:
    """The argument parser; `load` names the one stage verb whose module is imported ("*": all, for the docs and
    tests; None: none, for `kdmobile --help`)."""
    parser = _Parser(prog="kdmobile", description="From large teachers to a small quantized model on a phone.")
    parser.add_argument("--version", action="version", version=f"kdmobile {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    _add_train(sub)
    _add_data(sub)
    _add_lazy_verbs(sub, load)
    for register in _EXTRA_VERBS:
        register(sub)
    d = sub.add_parser("doctor", help="show which backends and extras are installed")
    d.set_defaults(func=_doctor)
    return parser


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb on a command line: the first argument that is not an option (the top level takes no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(load=_verb_of(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "_stub", False):  # a stub's flags are the real verb's: not checked here
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as err:
        message = missing_extra_message(args.verb, err)
        if message is None:
            raise
        print(f"kdmobile: error: {message}", file=sys.stderr)
        return 1
    except KDError as err:
        print(f"kdmobile: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # the environment failed: disk full, read-only or vanished folder, permissions
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"kdmobile: error: {where}{err.strerror or err} (exit 1: environment failure)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kdmobile: interrupted; only complete files were kept (train: rerun with --resume; data: rerun the "
              "same command to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
