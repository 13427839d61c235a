"""The `kdmobile train` verb (ammkd, sdkd): flags, config overrides and the run plan; the methods themselves (and
torch) are imported only when a training runs."""

from __future__ import annotations

import argparse
from typing import Any

from kdmobile.argparsing import add_command, add_group, add_settings_flags, csv_list
from kdmobile.config import DEFAULT_LOSS_TERMS, DEFAULT_STUDENT, KD_MODES
from kdmobile.errors import UserError


def _add_common_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="run name: outputs go to OUT/NAME (NAME2, NAME3... if taken)")
    p.add_argument("--out", help="parent directory of runs (default: runs)")
    p.add_argument("--seed", type=int, help="seed for splits, initialisation and data order")
    p.add_argument("--epochs", type=int, help="student epochs")
    p.add_argument("--batch-size", type=int, help="student batch size (per process under torchrun)")
    p.add_argument("--lr", type=float, help="student learning rate")
    p.add_argument("--device", help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, help="DataLoader processes that decode and augment images (default: one "
                                               "per core up to 8 for photo folders, 0 for in-memory data)")
    add_settings_flags(p, "teacher_train.epochs=2")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run OUT/NAME where it stopped")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (the plan, one line per epoch and log.jsonl remain)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the run plan (data, stages, device, teachers, estimated time) and exit; writes nothing")
    p.add_argument("--teachers-from", metavar="RUN",
                   help="reuse the trained teachers of an earlier run of this method (RUN/teachers/*.safetensors) without "
                        "training them again (teacher epochs default to 0)")


def _common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys set by the flags every method has (None = not given)."""
    return {"name": args.name, "out": args.out, "seed": args.seed, "teacher_train.epochs": args.teacher_epochs,
            "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
            "train.device": args.device, "teacher_train.device": args.device,
            "train.workers": args.workers, "teacher_train.workers": args.workers}


def _teachers_from(args: argparse.Namespace, method: str) -> list[str] | None:
    """Teacher files of --teachers-from RUN (None without it); teacher epochs then default to 0."""
    if not args.teachers_from:
        return None
    if args.teachers is not None:
        raise UserError("give --teachers or --teachers-from, not both")
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
        "teachers": reused or (csv_list(args.teachers) if args.teachers else None), "student": args.student,
        "student_init": args.student_init, "latency_budget_ms": args.latency_budget_ms,
        "student_int8": True if args.int8 else None,
        "student_runtime": args.runtime, "student_int8_for": args.int8_for, "fusion": args.fusion,
        "weighting": args.weighting, "temperature": args.temperature, "tolerance": args.tolerance,
        "loss.terms": _loss_terms(args.loss) if args.loss else None,
    }
    cfg = load_config(AMMKDConfig, args.config, overrides, args.set)
    from kdmobile.train import distributed as dist
    from kdmobile.ammkd.train import AMMKD, metrics_table
    from kdmobile.ammkd.plan import ammkd_plan, source_mismatch

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
    for item in csv_list(text):
        key, eq, value = item.partition("=")
        try:
            terms[key.strip()] = float(value)
        except ValueError:
            raise UserError(f"--loss {item}: expected TERM=WEIGHT, e.g. ce=1,kl=1,fd=1") from None
        if not eq:
            raise UserError(f"--loss {item}: expected TERM=WEIGHT, e.g. ce=1,kl=1,fd=1")
    return terms


def _train_sdkd(args: argparse.Namespace) -> int:
    from kdmobile.config import SDKDConfig, load_config

    reused = _teachers_from(args, "sdkd")
    overrides: dict[str, Any] = {
        **_common_overrides(args), "data.path": args.data, "data.n": args.n, "data.res": args.res,
        "teachers": args.teachers, "student": args.student, "kd": args.kd, "weighting": args.weighting,
        "teacher_files": reused, "student_init": args.student_init, "data.label_fraction": args.label_fraction,
    }
    cfg = load_config(SDKDConfig, args.config, overrides, args.set)
    from kdmobile.rundir import new_run_dir
    from kdmobile.train import distributed as dist
    from kdmobile.sdkd.plan import sdkd_plan
    from kdmobile.sdkd.train import SDKD, cached_navier_stokes_path, metrics_table

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
                                                          reuse runs/photos/teachers/*.safetensors: trains only a student
  kdmobile train ammkd --teachers ViT-B-32:openai,RN50:openai --teacher-epochs 2   (needs a network)
  kdmobile train ammkd --data imagefolder:photos/ --image-size 224 --student-init pretrained
      --teachers ViT-B-32:openai,RN50:openai --teacher-epochs 0 --set data.views=10
                                                          zero-shot CLIP teachers, pretrained student, cached views
"""

_SDKD_EXAMPLES = """\
examples:
  kdmobile train sdkd --dry-run                           the plan; generates and writes nothing
  kdmobile train sdkd --data ns_V1e-3_N5000_T50.mat --kd spectral-low --student sdkd_unet
  kdmobile train sdkd --teachers-from runs/sdkd --kd output --name sdkd-output   reuse the trained teacher
  kdmobile train sdkd --kd none --name phase1 && kdmobile train sdkd --teachers-from runs/phase1 \
      --student-init runs/phase1/student.safetensors --kd spectral    two-phase: continue the student with KD
  kdmobile train sdkd --label-fraction 0.1 --kd output     10 % labelled trajectories, teacher pseudo-labels
"""


def register(sub: Any) -> None:
    """Add `kdmobile train METHOD` for every registered method (kdmobile.methods) to the parser's sub-parsers."""
    from kdmobile.methods import METHODS
    from kdmobile.targets import resolve

    methods = add_group(sub, "train", f"distil a student from teachers ({', '.join(METHODS)})",
                        "Train teachers and distil a small student; outputs go to a run directory.", "method")
    for method in METHODS.values():
        resolve(method.register_cli)(methods, method)


def register_ammkd(methods: Any, method: Any) -> None:
    """`kdmobile train ammkd` and its flags."""
    a = add_command(methods, method.name, method.summary,
                    "AMMKD: pre-train two CLIP teachers on the data, encode class prompts once, and distil a timm "
                    "mobile student with feature fusion and multi-teacher KL weighting. A run plan (data, stages, "
                    "device, teachers, estimated time) is printed before training.", _AMMKD_EXAMPLES)
    a.add_argument("--data", help="digits (default, embedded), cifar10:PATH, cifar100:PATH, imagefolder:PATH "
                                  "(DIR/CLASS/* is split here; DIR/train/CLASS/* + DIR/val/... [+ test/] is used as "
                                  "given; photos stream from disk), captions:PATH")
    a.add_argument("--teachers", help="comma list of open_clip teachers: built-in kd-vit-s,kd-rn-s (default), "
                                      "NAME:TAG (e.g. ViT-B-32:openai, needs a network or open_clip's cache), "
                                      "NAME:/path/weights.safetensors, or RUN/teachers/NAME.safetensors")
    a.add_argument("--teacher-epochs", type=int, help="teacher pre-training epochs (0: use the weights as they are, "
                   "e.g. a pretrained CLIP's zero-shot class vectors); teachers that start from weights are "
                   "fine-tuned at teacher_finetune_lr (1e-5), teachers from scratch at teacher_train.lr (5e-4)")
    a.add_argument("--student", help=f"timm backbone of the student (default {DEFAULT_STUDENT}, chosen by "
                   "benchmarks/student_zoo.py at 224 px), or auto: the most accurate zoo backbone whose student runs "
                   "within --latency-budget-ms on this host")
    a.add_argument("--latency-budget-ms", type=float, metavar="MS",
                   help="with --student auto: the p50 (batch 1, one thread of --runtime, at the run's image size) the "
                        "student may take here; each candidate (student_candidates) is exported and timed once, "
                        "cached per host")
    a.add_argument("--int8", action="store_true",
                   help="with --student auto: time the int8 model export would ship (--int8-format auto), not fp32")
    a.add_argument("--runtime", choices=["onnx", "tflite", "executorch"],
                   help="with --student auto: the runtime the candidates are exported to and timed in (default onnx: "
                        "onnxruntime; tflite: LiteRT with XNNPACK; executorch: ExecuTorch with XNNPACK)")
    a.add_argument("--int8-for", choices=["arm64"],
                   help="with --student auto: do not time here; check the budget against published int8 latencies on "
                        "an ARM64 phone core at 224 px (MobileNetV4 paper, Pixel 6; not measured by kdmobile)")
    a.add_argument("--student-init", metavar="random|pretrained|FILE",
                   help="the student's starting weights: random (default), pretrained (timm's ImageNet weights; needs "
                        "a network or timm's cache) or FILE (a kdmobile student.safetensors, a timm .safetensors or a "
                        "weights-only .pth checkpoint)")
    a.add_argument("--fusion", choices=["full", "none"], help="feature fusion on (full) or off (ablation)")
    a.add_argument("--weighting", help="how the teachers are combined: confidence (CA-MKD per-sample, default), "
                                       "adaptive (AE-KD), reliable (min-norm x confidence), equal, none (no KD), "
                                       "single:TEACHER")
    a.add_argument("--temperature", type=float, help="KD temperature T (default 4)")
    a.add_argument("--loss", metavar="TERM=W,...", help="loss terms and weights: ce (labels), kl (AMMKD), fd (CLIP-KD "
                                                       "feature distillation), icl (interactive contrastive); terms not given keep their default "
                                                       "(give kl=0 to drop KD); default "
                                                       + ",".join(f"{k}={v:g}" for k, v in DEFAULT_LOSS_TERMS.items()
                                                                  if v))
    a.add_argument("--tolerance", type=float, help="AE-KD tolerance C in (0,1] (default 0.6; 1 = equal weights)")
    a.add_argument("--image-size", type=int, help="input size in pixels (default: from the data: 32 for digits and "
                                                  "CIFAR, the native size up to 96 for photos)")
    a.add_argument("--max-train", type=int, help="use at most N training images")
    a.add_argument("--max-test", type=int, help="use at most N test images")
    _add_common_train(a)
    a.set_defaults(func=_train_ammkd)


def register_sdkd(methods: Any, method: Any) -> None:
    """`kdmobile train sdkd` and its flags."""
    s = add_command(methods, method.name, method.summary,
                    "SDKD: train a conv+Transformer forecaster teacher, then a lightweight student whose latent is "
                    "aligned with the teacher's in low and high frequency bands. With no --data, a small "
                    "Navier-Stokes set is generated and cached ($KDMOBILE_CACHE or ~/.cache/kdmobile).",
                    _SDKD_EXAMPLES)
    s.add_argument("--data", help="sequences file: .npy/.npz (N,T,H,W) or an FNO .mat (v5 or v7.3)")
    s.add_argument("--n", type=int, help="trajectories to generate when no --data (default 40)")
    s.add_argument("--res", type=int, help="grid size to generate when no --data (default 32)")
    s.add_argument("--teachers", type=int, help="number of teachers (weighted like AMMKD's; default 1)")
    s.add_argument("--teacher-epochs", type=int, help="teacher epochs")
    s.add_argument("--student", choices=["sdkd_resnet", "sdkd_unet"], help="student architecture")
    s.add_argument("--kd", choices=KD_MODES, help="distillation terms (default spectral: output + both frequency bands)")
    s.add_argument("--weighting", help="teacher weighting with several teachers: adaptive, equal, single:NAME")
    s.add_argument("--student-init", metavar="FILE",
                   help="phase 2: continue the student(s) from a kdmobile student file (e.g. RUN/student.safetensors "
                        "of a --kd none run) instead of random weights")
    s.add_argument("--label-fraction", type=float, metavar="F",
                   help="keep the futures of only this fraction of the training trajectories (0 < F <= 1); with KD "
                        "the teachers, trained on that part, pseudo-label the rest for the student")
    _add_common_train(s)
    s.set_defaults(func=_train_sdkd)
