"""The `kdmobile bench` verb: parser and handler (measurement code is imported inside the handler)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from kdmobile.argparsing import add_command, add_settings_flags, add_trust_flag
from kdmobile.bench.settings import DEVICES, Settings
from kdmobile.config import load_config
from kdmobile.bench.timing import MIN_RUNS
from kdmobile.errors import UserError

_DESCRIPTION = """\
Benchmark bundles against their teachers: one table (model, backend, precision, size, metric, p50/p90/p99
latency, memory, speed-up vs teacher) that a CI can gate on.

RUN|BUNDLE... are bundles (from `kdmobile export`) or run directories (from `kdmobile train`). For a run, the bundles
`kdmobile export` recorded in RUN/exports.json are measured (else bundles/RUNNAME-TARGET-PRECISION, or those under
--bundles DIR); a run without bundles has its PyTorch student measured instead ("torch eager"), with a WARNING
title. The run's teachers run in PyTorch: on the CPU (same threads), plus CUDA when available.

Latency: p50/p90/p99/mean over --runs timed calls after --warmup calls, at batch 1 and each --batch (a model
whose batch dimension is fixed at 1 is looped). Memory: resident-memory growth while loading and running (GPU:
peak allocated). Metric on the run's held-out split: top-1 % (class data), mean image/text Recall@1 %
(captions) or MSE in physical units (forecast); teachers' metric comes from the run's metrics.json (same split).
Host (CPU, AVX2/AVX-512/VNNI/AMX, threads, library versions, GPU) is printed above the table and stored.

Writes OUT/report.json, OUT/report.md and OUT/latency_vs_accuracy.png (atomically).
"""

_EPILOG = """\
examples:
  kdmobile bench runs/demo                                   all bundles of the run + its teachers
  kdmobile bench runs/demo --wide                            every column (metric source, p90, ...)
  kdmobile bench bundles/demo-onnx-fp32 bundles/demo-tflite-int8 --batch 8 --threads 4
  kdmobile bench runs/demo --no-teachers --min-metric 90 --max-latency-ms 5     CI gate

exit codes: 0 ok, 1 a gate failed, a model could not run (named on stderr) or --out is not writable,
            2 bad input (one line: also a changed bundle, an unfinished run), 130 interrupted
"""


def register(sub: Any) -> None:
    """Add the `bench` sub-command to the `kdmobile` parser's sub-parsers."""
    p = add_command(sub, "bench", "latency, memory, size and metric of bundles vs teachers, with CI gates",
                    _DESCRIPTION, _EPILOG)
    p.add_argument("paths", nargs="+", metavar="RUN|BUNDLE", help="run directories and/or bundle directories")
    p.add_argument("--bundles", metavar="DIR",
                   help="look up a run's bundles as DIR/RUNNAME-TARGET-PRECISION (default: where `kdmobile export` "
                        "recorded them in RUN/exports.json, else bundles/)")
    d = Settings.default  # every default below is the settings model's own
    p.add_argument("--runs", type=int, metavar="N",
                   help=f"timed calls per measurement (default {d('runs')})")
    p.add_argument("--warmup", type=int, metavar="N",
                   help=f"untimed calls first (default {d('warmup')})")
    p.add_argument("--batch", type=int, nargs="+", default=[], metavar="B",
                   help="batch sizes measured besides batch 1, e.g. --batch 8 32")
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"inference threads for every backend, torch included (default {d('threads')})")
    p.add_argument("--device", choices=DEVICES,
                   help="where PyTorch models (teachers) run: auto = CPU, plus CUDA when available (default); "
                        "bundles always run on the CPU")
    p.add_argument("--no-teachers", action="store_true", help="do not measure the runs' teachers")
    p.add_argument("--reference", metavar="NAMES",
                   help="comma list of open_clip image towers (e.g. ViT-B-32,RN50) to time as latency-only rows: "
                        "random weights, exported to ONNX at the bundles' input size, same runtime, threads and "
                        "batch; speed-ups against them are within onnxruntime (built once, cached)")
    p.add_argument("--max-time", type=float, metavar="S",
                   help=f"time budget per measurement: slow models get fewer runs (at least {MIN_RUNS}; default "
                        f"{d('max_time_s'):g} s)")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default: bench/RUNNAME when every path belongs to one run, else "
                        "bench/latest)")
    p.add_argument("--min-metric", type=float, metavar="X",
                   help="gate: every student's top-1 / R@1 must be >= X (percent)")
    p.add_argument("--max-mse", type=float, metavar="X", help="gate: every forecast student's MSE must be <= X")
    p.add_argument("--max-latency-ms", type=float, metavar="Y",
                   help="gate: every student's p50 latency at batch 1 must be <= Y ms")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_trust_flag(p)
    p.add_argument("--wide", action="store_true",
                   help="print every column (default: a table that fits 120 columns; report.md has them all)")
    add_settings_flags(p, "runs=50")
    p.set_defaults(func=handler)


WIDTH = 120  # the default tables and lines fit a 120-column terminal


def _say(text: str, width: int | None, stream: Any = None) -> None:
    """Print, wrapped to `width` columns (continuation lines indented) unless width is None."""
    if width is not None:
        text = textwrap.fill(text, width, subsequent_indent="  ", break_long_words=True, break_on_hyphens=False)
    print(text, file=stream or sys.stdout)


def _default_out(runs: list[Any], subjects: list[Any]) -> Path:
    """bench/RUNNAME when everything measured belongs to one run, else bench/latest."""
    names = {getattr(s, "run_name", None) or (s.run.name if s.run else None) for s in subjects}
    names |= {r.name for r in runs}
    names.discard(None)
    return Path("bench") / (names.pop() if len(names) == 1 else "latest")


def handler(args: argparse.Namespace) -> int:
    """Run `kdmobile bench`; returns 1 when a gate fails (KDError -> 2 via kdmobile.cli.main)."""
    from kdmobile.bench.discover import plan
    from kdmobile.fileio import check_writable

    if args.max_latency_ms is not None and not args.max_latency_ms > 0:
        raise UserError(f"--max-latency-ms must be > 0, got {args.max_latency_ms}")
    given = {"runs": args.runs, "warmup": args.warmup, "threads": args.threads, "device": args.device,
             "max_time_s": args.max_time, "batches": list(dict.fromkeys([1, *args.batch])) if args.batch else None,
             "teachers": False if args.no_teachers else None, "progress": False if args.no_progress else None,
             "references": [n.strip() for n in args.reference.split(",") if n.strip()] if args.reference else None}
    settings = load_config(Settings, args.config, given, args.set)  # defaults <- --config <- --set <- flags
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    from kdmobile.signing import trust_from

    p = plan(args.paths, args.bundles, settings, trust_from(args.trust))
    out = out or _default_out(p.runs, p.subjects)
    created = not out.exists()
    check_writable(out, "--out")  # a read-only or full disk fails now, not after the measurements
    try:
        return _measure_and_report(args, settings, p, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no empty folder behind
        raise


def _measure_and_report(args: argparse.Namespace, settings: Settings, p: Any, out: Path) -> int:
    """Measure the planned subjects, write the report into `out`, print the table; returns the exit code."""
    from kdmobile.bench import report as rep
    from kdmobile.bench.measure import bench_host, measure
    from kdmobile.bench.reference import add_compute_fields, reference_notes
    from kdmobile.table import fit_table, format_table

    width = None if args.wide else WIDTH
    for note in p.notes:
        _say(f"note: {note}", width, sys.stderr)
    host = bench_host(settings)
    _say(rep.host_line(host), width)
    rows = measure(p.subjects, settings)
    add_compute_fields(rows, host.get("peak_fp32_gflops"))
    gates = rep.evaluate_gates(rows, args.min_metric, args.max_mse, args.max_latency_ms)
    settings_doc = {**settings.as_dict(), "inputs": [str(x) for x in args.paths], "bundles_dir": args.bundles}
    notes = [*p.notes, *reference_notes(rows, host.get("peak_fp32_gflops"))]
    report = rep.build_report(host, settings_doc, rows, gates, notes, torch_fallback=p.torch_fallback)
    paths = rep.write_report(out, report)
    _say(rep.title_line(report["rows"], p.torch_fallback), width)
    if args.wide:
        print(format_table(rep.MD_HEADERS, rep.table_rows(report["rows"])))
    else:
        print(fit_table(rep.COMPACT_HEADERS, rep.compact_rows(report["rows"]), WIDTH))
        for line in rep.compact_notes(report["rows"]):
            _say(line, width)
    for line in rep.render_markdown(report).splitlines():
        if line.startswith(("- speed-up", "- peak fp32 GEMM")) or " faster than reference:" in line:
            _say(line[2:], width)
    _say(f"wrote {paths['json']}, {paths['md'].name}" + (f", {paths['png'].name}" if "png" in paths else ""), width)
    if "png" not in paths:
        _say("note: no latency_vs_accuracy.png: matplotlib is not installed (pip install 'kdmobile[plot]')", width,
             sys.stderr)
    failed = [g for g in gates if not g["passed"]]
    for g in failed:
        for f in g["failures"]:
            print(f"kdmobile: gate --{g['gate']} {g['threshold']:g} failed: {f['model']}: {f['reason']}",
                  file=sys.stderr)
    broken = rep.failed_models(rows)
    if broken:
        print(f"kdmobile: {len(broken)} model(s) could not be measured: {', '.join(broken)}", file=sys.stderr)
    return 1 if failed or broken else 0
