"""The demo-size headline (32 px, default runs): distilled students (ONNX / TFLite, fp32 / int8) against their
teachers, on this CPU. The README's headline is the 224-px one (`student_zoo.py --headline`, results/headline_224.md);
the last headline.{json,md} this script wrote is archived (results/archive/) as stale, so rerun it before citing it.

Trains (or, with --reuse, reuses) a default AMMKD run and a default SDKD run under RUNS/bench-{ammkd,sdkd} with
`kdmobile train`, exports each to ONNX and TFLite in fp32 and int8 (verified bundles under BUNDLES/), benchmarks
every bundle and the runs' teachers with `kdmobile bench` (host and ISA recorded; per-run reports in
RUNS/bench-*/bench/), and writes
benchmarks/results/headline.{json,md}: metric, p50 latency at batch 1, size and speed-up vs the teacher (PyTorch,
same CPU and threads). Where benchmarks/results/gpu_teachers.json exists, its teacher-on-GPU rows are added to the
Markdown as a separate table, with the card they were recorded on.

  python benchmarks/run_all.py                  # full: default runs (long on a small CPU)
  python benchmarks/run_all.py --reuse          # re-export and re-bench existing runs/bench-* runs
  python benchmarks/run_all.py --quick          # smoke test: tiny runs (runs/bench-quick-*), few timed runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from kdmobile.bench import report as rep
from kdmobile.bench.settings import DEVICES, Settings
from kdmobile.fileio import atomic_path, write_json
from kdmobile.rundir import METRICS_FILE, STUDENT_FILE
from kdmobile.table import format_table
from kdmobile.untrusted import read_json

RESULTS = Path(__file__).parent / "results"
METHODS = ("ammkd", "sdkd")
TITLES = {"ammkd": "AMMKD: image-text retrieval student vs CLIP teachers",
          "sdkd": "SDKD: Navier-Stokes forecasting student vs conv+Transformer teacher"}
QUICK = {  # the tiny configurations of the test suite: minutes on 2 cores
    "ammkd": ({"teachers": ["kd-vit-tiny", "kd-rn-tiny"], "teacher_train.epochs": 1, "train.epochs": 1,
               "data.max_train": 96, "data.max_test": 40},
              ["embed_dim=16", "student=mobilenetv3_small_050"]),
    "sdkd": ({"data.n": 6, "data.res": 16, "teacher_train.epochs": 1, "train.epochs": 1},
             ["data.t_final=21", "teacher.width=16", "teacher.heads=2", "student_kwargs={width: 8, blocks: 1}"]),
}
QUICK_TIMING = {"runs": 20, "warmup": 3}  # --quick: few timed runs (a smoke test, not a measurement)


def _kdmobile(args: list[Any], ok: tuple[int, ...] = (0,)) -> int:
    """One `kdmobile` verb through its CLI (the same settings loader, checks and reports a user gets); an exit code
    outside `ok` stops the benchmark."""
    from kdmobile.cli import main as kdmobile

    rc = kdmobile([str(a) for a in args])
    if rc not in ok:
        raise SystemExit(f"run_all: `kdmobile {' '.join(map(str, args[:2]))}` exited {rc}")
    return rc


def _sets(values: dict[str, Any]) -> list[str]:
    """--set KEY=VALUE arguments (JSON values are YAML)."""
    return [a for k, v in values.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def train(method: str, runs: Path, name: str, quick: bool, reuse: bool, force: bool, progress: bool) -> Path:
    """The run directory of `method`: reused, or trained by `kdmobile train METHOD` with its default config (tiny
    with --quick)."""
    run = runs / name
    if (run / METRICS_FILE).is_file() and (run / STUDENT_FILE).is_file() and reuse:
        print(f"[{method}] reusing {run}", flush=True)
        return run
    if run.exists():
        if not force:
            raise SystemExit(f"run_all: {run} exists: pass --reuse to use it or --force to retrain it")
        shutil.rmtree(run)
    overrides, sets = QUICK[method] if quick else ({}, [])
    print(f"[{method}] training {run}{' (quick)' if quick else ''}", flush=True)
    _kdmobile(["train", method, "--name", name, "--out", runs, *([] if progress else ["--no-progress"]),
               *_sets(overrides), *[a for s in sets for a in ("--set", s)]])
    return run


def export(run: Path, bundles: Path) -> list[str]:
    """ONNX and TFLite, fp32 and int8 bundles of the run (the package's export API, whose report lists what failed or
    was flagged); returns notes on those artifacts."""
    from kdmobile.export.exporter import export_run
    from kdmobile.export.options import ExportOptions

    print(f"[{run.name}] exporting to {bundles}", flush=True)
    report = export_run(run, ExportOptions(targets=["onnx", "tflite"], precisions=["fp32", "int8"], out=bundles))
    print(report.table, flush=True)
    notes = [f"{run.name} {a.target} {a.precision}: export failed ({a.error})" for a in report.failed]
    notes += [f"{run.name} {a.target} {a.precision}: {a.verification.get('status')}" for a in report.flagged]
    return notes


def bench(run: Path, bundles: Path, settings: Settings) -> dict[str, Any]:
    """`kdmobile bench RUN` (bundles + teachers); its report is written to RUN/bench/ and read back."""
    print(f"[{run.name}] benchmarking", flush=True)
    report = run / "bench" / "report.json"
    report.unlink(missing_ok=True)  # an earlier run's report must not stand in for this one
    _kdmobile(["bench", run, "--bundles", bundles, "--out", run / "bench",
               *_sets({**settings.as_dict(), "progress": settings.progress})])
    if not report.is_file():
        raise SystemExit(f"run_all: `kdmobile bench {run}` wrote no {report}")
    return read_json(report)


def _headline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Batch-1 rows: the teachers (CPU first) then the students, ONNX before TFLite, fp32 before int8."""
    rows = [r for r in report["rows"] if r["batch"] == 1]
    order = {"onnxruntime": 0, "litert": 1, "coreml": 2, "torch eager": 3}
    precision = {"fp32": 0, "fp16": 1, "int8": 2}
    return [r for _, r in sorted(enumerate(rows), key=lambda ir: (
        ir[1]["role"] != "teacher", ir[1]["device"] != "cpu",
        0 if ir[1]["role"] == "teacher" else order.get(ir[1]["backend"], 9),
        0 if ir[1]["role"] == "teacher" else precision.get(ir[1]["precision"], 9), ir[0]))]


def _gpu_table(path: Path) -> tuple[str | None, dict[str, Any] | None]:
    """The teacher rows of gpu_teachers.json as Markdown, with the card they were recorded on."""
    if not path.is_file():
        return None, None
    doc = json.loads(path.read_text())
    rows = [r for r in doc.get("rows", []) if "teacher" in r["model"]]
    if not rows:
        return None, None
    table = format_table(["model", "input", "batch", "precision", "p50 ms", "p90 ms", "params"],
                         [[r["model"], r["input"], r["batch"], r["precision"], rep.fmt_ms(r["p50_ms"]),
                           rep.fmt_ms(r["p90_ms"]), r["params"]] for r in rows], markdown=True)
    head = (f"## Teachers on a GPU (recorded on {doc.get('device')}, torch {doc.get('torch')}; "
            f"`benchmarks/gpu_teachers.py`, random weights, per call of `batch` inputs)")
    return f"{head}\n\n{table}\n", {"device": doc.get("device"), "torch": doc.get("torch"), "rows": rows}


def headline_md(doc: dict[str, Any], gpu_md: str | None) -> str:
    """headline.md: host, one table per method, notes and the GPU teachers table."""
    s = doc["settings"]
    parts = ["# Headline: distilled students vs their teachers", "",
             rep.host_line(doc["host"]), "",
             f"Batch 1, {s['threads']} thread(s), p50 of {s['runs']} timed runs after {s['warmup']} warm-up runs. "
             "Students are the exported bundles run by onnxruntime / LiteRT (what a phone-side app runs); teachers "
             "run in PyTorch eager on the same CPU. Speed-up = teacher p50 / student p50 (reference: the first "
             "teacher). Metric on the run's held-out split; teachers' from the run's metrics.json (same split)."
             + (" **Quick smoke-test configuration: the numbers are not meaningful.**" if doc["quick"] else ""), ""]
    for method, m in doc["methods"].items():
        parts += [f"## {TITLES[method]}", "", f"run: `{m['run']}` ({m['metric_desc']})", ""]
        cells = [[r["model"], r["backend"] if r["device"] == "cpu" else f"{r['backend']} ({r['device']})",
                  rep.fmt_precision(r), rep.fmt_metric(r["metric_name"], r["metric"]), rep.fmt_ms(r["p50_ms"]),
                  rep.fmt_size(r["size_bytes"]), r["params"], rep.fmt_memory(r),
                  "teacher" if r["role"] == "teacher" else
                  ("-" if r["speedup_vs_teacher"] is None else f"{r['speedup_vs_teacher']:.1f}x")]
                 for r in m["rows"]]
        parts += [format_table(["model", "backend", "precision", "metric", "p50 ms", "size", "params", "memory",
                                "speed-up vs teacher"], cells, markdown=True), ""]
        refs = sorted({r["speedup_reference"] for r in m["rows"] if r.get("speedup_reference")})
        if refs:
            parts += [f"speed-up reference: {'; '.join(refs)}", ""]
    if doc["notes"]:
        parts += ["Notes:", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    if gpu_md:
        parts += [gpu_md]
    return "\n".join(parts).rstrip() + "\n"


def _metric_desc(report: dict[str, Any]) -> str:
    names = {r["metric_name"] for r in report["rows"] if r.get("metric_name")}
    return {"top1": "top-1 % on held-out images", "R@1": "mean image/text Recall@1 %",
            "mse": "MSE in physical units on held-out windows"}.get(next(iter(names), ""), "metric")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny runs (bench-quick-*) and few timed runs: a smoke test")
    p.add_argument("--reuse", action="store_true", help="reuse existing runs instead of training")
    p.add_argument("--force", action="store_true", help="retrain (delete) existing runs of the same name")
    p.add_argument("--runs-dir", default="runs", help="parent of the run directories (default runs)")
    p.add_argument("--bundles", default="bundles", help="parent of the bundles (default bundles)")
    p.add_argument("--results", default=str(RESULTS), help="where headline.{json,md} go (default benchmarks/results)")
    d = Settings.default  # the bench's own defaults; --quick has its own, smaller ones (QUICK_TIMING)
    p.add_argument("--runs", type=int,
                   help=f"timed runs per measurement (default {d('runs')}; {QUICK_TIMING['runs']} with --quick)")
    p.add_argument("--warmup", type=int,
                   help=f"warm-up runs (default {d('warmup')}; {QUICK_TIMING['warmup']} with --quick)")
    p.add_argument("--threads", type=int, default=d("threads"), help=f"inference threads (default {d('threads')})")
    p.add_argument("--device", default=d("device"), choices=DEVICES, help="where teachers run")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    timing = QUICK_TIMING if args.quick else {k: d(k) for k in QUICK_TIMING}
    settings = Settings(runs=args.runs or timing["runs"], warmup=args.warmup or timing["warmup"], batches=[1],
                        threads=args.threads, device=args.device, teachers=True, progress=args.progress)
    runs_dir, bundles = Path(args.runs_dir), Path(args.bundles)
    prefix = "bench-quick" if args.quick else "bench"
    methods: dict[str, Any] = {}
    notes: list[str] = []
    host: dict[str, Any] = {}
    for method in args.methods:
        run = train(method, runs_dir, f"{prefix}-{method}", args.quick, args.reuse, args.force, args.progress)
        notes += export(run, bundles)
        report = bench(run, bundles, settings)
        host = report["host"]
        notes += [f"{run.name}: {n}" for n in report["notes"]]
        methods[method] = {"run": str(run), "metric_desc": _metric_desc(report), "rows": _headline_rows(report),
                           "report": str(run / "bench" / "report.json")}
    gpu_md, gpu = _gpu_table(RESULTS / "gpu_teachers.json")
    doc = {"benchmark": "headline", "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "quick": args.quick, "host": host, "settings": settings.as_dict(), "methods": methods,
           "gpu_teachers": gpu, "notes": notes}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "headline.json", doc)
    md = headline_md(doc, gpu_md)
    with atomic_path(out / "headline.md") as tmp:
        tmp.write_text(md)
    print(md)
    print(f"wrote {out / 'headline.json'} and {out / 'headline.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
