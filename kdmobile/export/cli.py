"""The `kdmobile export` verb: parser and handler (heavy imports happen inside the handler)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from kdmobile.argparsing import add_command, add_settings_flags, add_trust_flag
from kdmobile.config import load_config
from kdmobile.errors import UserError
from kdmobile.methods import get_method
from kdmobile.signing import trust_from
from kdmobile.export.options import TFLITE_RECIPES, ExportOptions, Thresholds, default  # light: no torch
from kdmobile.export.int8_choice import PRESETS
from kdmobile.export.quantize import INT8_FORMATS
from kdmobile.targets import PRECISIONS, target_names

_DESCRIPTION = """\
Export a run directory (from `kdmobile train`) to bundles: OUT/RUNNAME-TARGET-PRECISION/ holding the model file,
manifest.json (schema, checksums, preprocessing, quantization, verification) and, for retrieval, the class
vectors and labels. Before converting, the model's operators are checked against what each target can take.
Every bundle is verified at export with the same runtime code a phone-side user runs: tensor parity against the
fp32 PyTorch student (max |Δ|, cosine) and the task metric on the run's held-out split (top-1/top-5, Recall@K or
MSE). An artifact whose metric drops past a threshold is written but flagged; --strict turns flags into exit 1.
"""

_EPILOG = """\
examples:
  kdmobile export runs/demo                                   ONNX fp32 (recorded in runs/demo/exports.json)
  kdmobile export runs/demo --target all --precision all      every target x precision
  kdmobile export runs/demo --precision int8 --int8-format u8s8 --calibration-samples 256
  kdmobile export runs/demo --classes my_classes.txt          new class names, encoded by the run's teachers
  kdmobile export --verify bundles/demo-onnx-int8 --strict    re-check an existing bundle against itself
  kdmobile export --verify bundles/demo-onnx-int8 --run runs/demo    ... and against the run's held-out data

exit codes: 0 ok, 1 an artifact failed (or was flagged, with --strict) or the environment failed (disk full,
            read-only --out, a converter crash; the cause on stderr), 2 bad input (one line), 130 interrupted
"""


HELP = "export a run to verified ONNX / TFLite / CoreML / ExecuTorch bundles"


def register(sub: Any) -> None:
    """Add the `export` sub-command to the `kdmobile` parser's sub-parsers."""
    p = add_command(sub, "export", HELP, _DESCRIPTION, _EPILOG)
    p.add_argument("run", nargs="?", metavar="RUN", help="run directory written by `kdmobile train` (e.g. runs/demo)")
    p.add_argument("--verify", metavar="BUNDLE",
                   help="re-verify an existing bundle instead of exporting: its seal and checksums, then a run on "
                        "random inputs (the run directory its manifest names is never opened; see --run)")
    p.add_argument("--run", metavar="DIR", dest="verify_run",
                   help="with --verify: also compare the bundle with this run directory's student on its "
                        "held-out data (parity and metric)")
    p.add_argument("--target", metavar="T",
                   help=f"{_choices(target_names(), default('targets'))}, all, or a comma list such as onnx,tflite")
    p.add_argument("--precision", metavar="P",
                   help=f"{_choices(PRECISIONS, default('precisions'))}, all, or a comma list; int8 is calibrated "
                        "on the run's training images/windows where the format needs it")
    p.add_argument("--calibration-samples", type=int, metavar="N",
                   help="calibration samples for static int8, taken from heldout.npz (default "
                        f"{default('calibration_samples')}, at most what the run stored); must be >= 1 with int8")
    p.add_argument("--classes", metavar="FILE",
                   help="retrieval runs: a text file with one class name per line; the run's teachers encode them "
                        "with the run's prompt templates and the student fuses them into the bundle's class "
                        "vectors (metric verification is then n/a: parity only)")
    p.add_argument("--out", metavar="DIR", help=f"parent directory of the bundles (default: {default('out')})")
    p.add_argument("--model", metavar="NAME",
                   help="what to export: the student (default) or, for forecast (sdkd) runs, a teacher (teacher, "
                        "teacher1, ...), so that `kdmobile bench` times both in the same runtime")
    p.add_argument("--wide", action="store_true",
                   help="print every cell in full (default: the table fits 120 columns; long statuses are shortened)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any artifact is flagged by the thresholds (for CI gates)")
    p.add_argument("--int8-format", choices=INT8_FORMATS, metavar="FMT",
                   help=f"ONNX int8 format: {default('int8_format')} (default: every candidate is built and timed "
                        "against fp32 on this machine, 1 thread, batch 1, and the fastest whose outputs stay within "
                        "cosine 0.99 of fp32 is kept; timings and ISA go into the manifest), s8s8 (static QDQ, int8 "
                        "activations), u8s8 (static QDQ, uint8 activations), dynamic (activations quantized per "
                        "call), w8a32 (weight-only int8: ~3.5x smaller, fp32 speed)")
    p.add_argument("--int8-for", choices=list(PRESETS), metavar="CPU",
                   help="with --int8-format auto, exporting for another machine: a preset instead of a measurement "
                        f"here ({', '.join(PRESETS)}); measuring on the target machine is better")
    p.add_argument("--tflite-recipe", choices=TFLITE_RECIPES, metavar="R",
                   help=f"TFLite int8 recipe for ai-edge-quantizer: {default('tflite_recipe')} (default), dynamic "
                        "(int8 weights, dynamic-range activations) or static (full int8, calibrated)")
    p.add_argument("--threshold-top1", type=float, metavar="POINTS",
                   help="flag an artifact whose top-1 (R@1 for captions) is more than POINTS below the fp32 "
                        f"PyTorch student (default {default('top1', Thresholds)})")
    p.add_argument("--threshold-mse", type=float, metavar="REL",
                   help="flag a forecast artifact whose MSE is more than REL above the student's, relative "
                        f"(default {default('mse', Thresholds)} = {default('mse', Thresholds):.0%}%)")
    p.add_argument("--android-assets", metavar="DIR",
                   help="also copy each exported ONNX bundle into the Android demo's assets "
                        "(e.g. android_demo/app/assets) and update its bundles/index.json")
    p.add_argument("--sign", metavar="KEY",
                   help="sign each bundle with this PEM private key (`kdmobile keygen`): bundle.sig, an ECDSA P-256 "
                        "signature of bundle.sha256 that predict/bench/export --verify check with --trust PUBKEY")
    add_trust_flag(p, "with --verify: ")
    add_settings_flags(p, "thresholds.top1=0.5")
    p.set_defaults(func=handler)


def _choices(choices: Sequence[str], chosen: Sequence[str]) -> str:
    """'onnx (default), tflite, coreml' for a help text."""
    return ", ".join(f"{c} (default)" if list(chosen) == [c] else c for c in choices)


def _expand(value: str | None, choices: Sequence[str], flag: str) -> list[str] | None:
    """'all' / a comma list -> validated, de-duplicated list in the given order (None when the flag is not given)."""
    if value is None:
        return None
    items = [t.strip().lower() for t in value.split(",") if t.strip()]
    if not items:
        raise UserError(f"{flag}: empty value (choose {', '.join(choices)} or all)")
    out: list[str] = []
    for t in items:
        for v in (choices if t == "all" else [t]):
            if v not in choices:
                raise UserError(f"{flag}: unknown {flag.lstrip('-')} {v!r} (choose {', '.join(choices)} or all)")
            if v not in out:
                out.append(v)
    return out


def _given(**values: Any) -> dict[str, Any]:
    """The settings whose flag was given (None = not given: the model's default applies)."""
    return {k: v for k, v in values.items() if v is not None}


def _check_verify_args(args: argparse.Namespace) -> None:
    """--verify re-checks a bundle: export-only flags are refused in one line."""
    if args.run:
        raise UserError(f"--verify checks an existing bundle; give its run directory as --run {args.run}")
    given = [flag for flag, v in (("--target", args.target), ("--precision", args.precision),
                                  ("--classes", args.classes), ("--out", args.out),
                                  ("--calibration-samples", args.calibration_samples),
                                  ("--int8-format", args.int8_format), ("--int8-for", args.int8_for),
                                  ("--tflite-recipe", args.tflite_recipe),
                                  ("--android-assets", args.android_assets), ("--config", args.config),
                                  ("--sign", args.sign),
                                  ("--set", args.set or None))
             if v is not None]
    if given:
        raise UserError(f"--verify re-checks an existing bundle and takes no {', '.join(given)}")


def _record(run: str, bundles: list[Path]) -> None:
    """Note in RUN/exports.json where the bundles went, so `kdmobile bench RUN` finds them with no flag."""
    from kdmobile.rundir import record_bundles

    if not bundles:
        return
    try:
        record_bundles(run, bundles)
    except OSError as exc:  # a read-only run directory: the bundles are fine, bench just needs --bundles
        print(f"kdmobile: note: could not record the bundles in {run}/exports.json ({exc}); "
              f"bench it with --bundles {Path(bundles[0]).parent}", file=sys.stderr)


def handler(args: argparse.Namespace) -> int:
    """Run `kdmobile export`; returns the exit code (KDError -> 2 via kdmobile.cli.main)."""
    if args.verify:
        _check_verify_args(args)
        from kdmobile.export.exporter import verify_existing

        th = Thresholds(**_given(top1=args.threshold_top1, mse=args.threshold_mse))
        report = verify_existing(args.verify, th, args.verify_run, trust_from(args.trust))
        strict = bool(args.strict)
    else:
        if args.verify_run is not None:
            raise UserError("--run DIR goes with --verify BUNDLE; to export, give the run directory as RUN")
        if not args.run:
            raise UserError("give a run directory to export (kdmobile export RUN) or --verify BUNDLE")
        if args.trust:
            raise UserError("--trust checks an existing bundle's signature: use it with --verify BUNDLE")
        from kdmobile.export.exporter import export_run
        from kdmobile.rundir import read_method

        given = {"targets": _expand(args.target, target_names(), "--target"),  # None: not given, the default stays
                 "precisions": _expand(args.precision, PRECISIONS, "--precision"), "out": args.out or None,
                 "calibration_samples": args.calibration_samples, "classes_file": args.classes or None,
                 "int8_format": args.int8_format, "int8_for": args.int8_for, "tflite_recipe": args.tflite_recipe,
                 "model": args.model, "sign": args.sign, "strict": True if args.strict else None, "thresholds.top1": args.threshold_top1,
                 "thresholds.mse": args.threshold_mse}
        opts = load_config(ExportOptions, args.config, given, args.set)  # defaults <- --config <- --set <- flags
        if opts.classes_file is not None and not get_method(read_method(args.run), str(args.run)).takes_class_files:
            raise UserError(f"--classes applies to retrieval (ammkd) runs; {args.run} is a "
                            f"{read_method(args.run)} run")
        strict = opts.strict  # the loaded setting: --config and --set may turn it on, not only the flag
        report = export_run(args.run, opts)
        _record(args.run, [a.bundle for a in report.artifacts if a.bundle is not None and a.error is None])
    print(report.render(wide=args.wide))
    if getattr(args, "android_assets", None):
        from kdmobile.export.android import copy_to_assets

        for a in report.artifacts:
            if a.bundle is not None and a.error is None and a.target == "onnx":
                print(f"android assets: {copy_to_assets(a.bundle, args.android_assets)}")
    failed, flagged = report.failed, report.flagged
    if failed and len(failed) == len(report.artifacts) and all(a.error_is_user for a in failed):
        raise UserError(failed[0].error or "export failed")
    for a in flagged:
        print(f"kdmobile: flagged: {a.target} {a.precision}: {a.verification.get('status')}", file=sys.stderr)
    if failed:
        causes = "; ".join(f"{a.target} {a.precision}: {a.error}" for a in failed)
        print(f"kdmobile: error: {len(failed)} of {len(report.artifacts)} artifact(s) failed: {causes}",
              file=sys.stderr)
        return 1
    if flagged and strict:
        return 1
    return 0
