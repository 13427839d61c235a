"""SDKD on 2-D Navier-Stokes (the FNO setting). Configurations (sdkd_configs.py): `cpu` (this 2-core machine, about
an hour) and `standard` (FNO's scale, 64x64, 1,000 train / 200 test trajectories, nu = 1e-3, T = 50: for a GPU) in
the smooth regime; `cpu-turbulent` (nu = 1e-5, T = 20, 800 trajectories stored 32² from a 64² RK3 solve) and
`standard-turbulent` (FNO's nu = 1e-5 set: 64² from 256², 1,000 / 200; for a GPU) in the chaotic one.

One fixed data set and split (data seed 0). The teachers (the conv + Transformer teacher and the SimVP v2-style
teacher) are trained ONCE on it; every student of every seed distils from those files, so the seeds measure the
students' variance. Rows: each teacher, no KD, output KD, SDKD (the paper's loss: task MSE + lambda (high band +
alpha low band) over latent FFT bands), SDKD low band only, SDKD high band only. The turbulent configs run these as
phase 2 (each continues the seed's no-KD student for a few epochs) beside `none-continued` (the same epochs without
KD: the equal-budget control), and add label-scarce rows: `labels-F` (the student on F % of the training
trajectories alone) and `labels-F+teacher` (a SimVP teacher trained on those F % pseudo-labels the rest; the student
learns from both). Metrics on the test trajectories in physical units: MSE, relative L2 (FNO's metric), MAE, SSIM.
Training cost: seconds per epoch and the peak memory of each training (a fresh process's peak RSS on CPU;
max_memory_allocated on CUDA). The turbulent configs first run the generator's physics check at their settings.

Resumable: each run (teacher, variant x seed) is recorded as it finishes in results/sdkd_navier_stokes_<config>_
records.json and skipped when the script is run again. Writes results/sdkd_navier_stokes.json (all configs),
results/sdkd_navier_stokes_<config>.md and a PNG of truth vs teachers vs students.

  python benchmarks/sdkd_navier_stokes.py --config cpu
  python benchmarks/sdkd_navier_stokes.py --config cpu-turbulent --search   # + the settings tried around SDKD
  python benchmarks/sdkd_navier_stokes.py --config standard-turbulent --device cuda --jobs 6
  python benchmarks/sdkd_navier_stokes.py --config cpu --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from resumable import Records, cpu_name, device_name, peak_rss_mb, run_children, without_set_keys

from sdkd_configs import (CONFIGS, CONTROL, LABEL_SEARCH, PHASE2, SEARCH, TEACHERS, TURBULENT_VARIANTS, scaled,
                          search_control,
                          search_setting, searches, teacher_jobs, variant, variants)

from kdmobile.config import SDKDConfig, load_config
from kdmobile.fileio import write_json
from kdmobile.rundir import STUDENT_FILE, read_log, teacher_file
from kdmobile.table import format_table

RESULTS = Path(__file__).parent / "results"
def _config(args: argparse.Namespace, name: str, over: dict[str, Any]) -> SDKDConfig:
    """The SDKD config of one run of this benchmark."""
    base = {**CONFIGS[args.config], "data.seed": 0, "out": args.runs, "name": f"{args.config}-{name}",
            "train.device": args.device, "teacher_train.device": args.device}
    return load_config(SDKDConfig, None, without_set_keys({**base, **over}, args.set), args.set)


def _epoch_stats(run: Path, stage: str) -> dict[str, float | None]:
    """Median seconds per epoch and peak CUDA memory of one stage, from the run's log."""
    secs, gpu = [], []
    for rec in read_log(run):
        if rec.get("event") == "epoch" and rec.get("stage") == stage:
            secs.append(rec["seconds"])
            gpu.extend([rec["peak_gpu_mb"]] if "peak_gpu_mb" in rec else [])
    return {"train_s_per_epoch": float(np.median(secs)) if secs else None, "peak_gpu_mb": max(gpu) if gpu else None}


def _row(metrics: dict[str, Any], run: Path, stage: str, started: float, base_mb: float) -> dict[str, Any]:
    """One finished training's record: test metrics, cost (s/epoch, memory), the load it ran under."""
    keep = ("mse", "rel_l2", "mae", "ssim", "params", "flops", "per_step_rel_l2")
    return {**{k: metrics[k] for k in keep}, **_epoch_stats(run, stage), "peak_rss_mb": round(peak_rss_mb(), 1),
            "train_rss_mb": round(peak_rss_mb() - base_mb, 1), "load_avg_1m": round(os.getloadavg()[0], 2),
            "seconds": round(time.perf_counter() - started, 1), "run": str(run)}


def child(args: argparse.Namespace, records: Records) -> dict[str, Any]:
    """One training in this (fresh) process: a teacher, or one student variant x seed."""
    import torch  # noqa: F401  (the framework's own memory is the baseline the training's growth is measured from)

    from kdmobile.sdkd.train import run_sdkd

    base_mb = peak_rss_mb()
    started = time.perf_counter()
    kind, name, seed = args.only
    if kind == "teacher":
        arch, _, labels = name.partition("@labels-")
        over = {"data.label_fraction": int(labels) / 100, "teacher_train.epochs": scaled(
            CONFIGS[args.config]["teacher_train.epochs"], int(labels))} if labels else {}
        cfg = _config(args, f"teacher-{name.replace('@', '-')}", {"teacher_models": [arch], "kd": "none",
                                                                  "baseline": False, "train.epochs": 0, "seed": 0,
                                                                  **over})
        run, metrics = run_sdkd(cfg, progress=args.progress)
        return {**_row(metrics["models"]["teacher"], run, "teacher/teacher", started, base_mb),
                "file": str(teacher_file(run, "teacher"))}
    files = [records.get(f"teacher:{t}")["file"] for t in TEACHERS]
    setting = (search_setting(args.config, records, name, int(seed)) if kind == "search"
               else variant(args.config, records, name, int(seed)))
    if "teacher_files" in setting:
        files = setting.pop("teacher_files")
    cfg = _config(args, f"{'search-' if kind == 'search' else ''}{name}-s{seed}",
                  {"teacher_files": files, "baseline": False, "seed": int(seed), **setting})
    run, metrics = run_sdkd(cfg, progress=args.progress)
    return _row(metrics["models"]["student"], run, "student", started, base_mb)


def report(args: argparse.Namespace, records: Records) -> dict[str, Any]:
    """Rows (mean over the seeds recorded so far) into sdkd_navier_stokes.json, the Markdown table and the PNG."""
    rows, table = [], []
    base = [r["mse"] for k, r in records.data["runs"].items() if k.startswith("none/")]
    base_mse = float(np.mean(base)) if base else None
    for name in [*(f"teacher:{t}" for t in teacher_jobs(args.config, search=True)), *variants(args.config)]:
        found = sorted((int(k.split("/")[1]) if "/" in k else 0, r) for k, r in records.data["runs"].items()
                       if k.split("/")[0] == name)
        if not found:
            continue
        runs = [r for _, r in found]
        mse = np.array([r["mse"] for r in runs])
        row = {"variant": name, "seeds": [s for s, _ in found], "mse_per_seed": mse.tolist(),
               "mse_mean": float(mse.mean()), "mse_std": float(mse.std(ddof=1)) if len(mse) > 1 else 0.0,
               "rel_l2_mean": float(np.mean([r["rel_l2"] for r in runs])),
               "mae_mean": float(np.mean([r["mae"] for r in runs])),
               "ssim_mean": float(np.mean([r["ssim"] for r in runs])),
               "mse_vs_nokd": float(mse.mean() / base_mse) if base_mse else None,
               **_against_control(name, found, records),
               "params": runs[0]["params"], "mflops": runs[0]["flops"] / 1e6,
               "train_s_per_epoch": float(np.mean([r["train_s_per_epoch"] for r in runs])),
               "peak_train_mem_mb": float(np.mean([r["peak_gpu_mb"] or r["peak_rss_mb"] for r in runs])),
               "train_mem_above_framework_mb": float(np.mean([r.get("train_rss_mb", np.nan) for r in runs])),
               "memory_kind": "CUDA max_memory_allocated" if runs[0]["peak_gpu_mb"] else "peak RSS of the process",
               "load_avg_1m": [r.get("load_avg_1m") for r in runs]}
        rows.append(row)
        table.append([name, f"{row['mse_mean']:.3g} ± {row['mse_std']:.2g}", f"{row['rel_l2_mean']:.4f}",
                      f"{row['mae_mean']:.4f}", f"{row['ssim_mean']:.4f}",
                      "" if row["mse_vs_nokd"] is None else f"{row['mse_vs_nokd']:.3f}",
                      f"{row['mse_vs_control']:.3f} ({row['control']})" if "control" in row else "", len(mse),
                      row["params"],
                      f"{row['train_s_per_epoch']:.2f}", f"{row['peak_train_mem_mb']:.0f}",
                      f"{row['train_mem_above_framework_mb']:.0f}"])
    settings = {**CONFIGS[args.config], "overrides": args.set, "device": records.data.get("device", args.device),
                "host": f"{platform.machine()} {cpu_name()}", "data_seconds": records.data.get("data_seconds"),
                "physics_check": records.data.get("physics")}
    path = args.results / "sdkd_navier_stokes.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    everything = everything if "configs" in everything else {"benchmark": "sdkd_navier_stokes", "configs": {}}
    everything["configs"][args.config] = {"settings": settings, "notes": records.data.get("notes", []), "rows": rows,
                                          "latency": records.data.get("latency")}
    write_json(path, everything)
    md = format_table(["variant", "MSE (mean ± std)", "rel L2", "MAE", "SSIM", "MSE / no-KD", "MSE / control", "seeds",
                       "params",
                       "s/epoch", "peak train MB", "above torch MB"], table, markdown=True)
    search = _search_rows(args, records)
    if search:
        everything["configs"][args.config]["search"] = search
        write_json(path, everything)
        md += ("\n\nSearch around the SDKD loss (`--search`; one seed each, MSE against the same seed's "
               + ("no-KD continuation, phase 2 as the rows above" if args.config in PHASE2 else "no-KD student")
               + "; label-scarce settings against labels-10):\n\n"
               + format_table(["setting", "overrides", "MSE", "MSE / control"], [
                   [r["setting"], json.dumps(r["overrides"]), f"{r['mse']:.4g}",
                    f"{r['mse_vs_control']:.3f} ({r['control']})"]
                   for r in search], markdown=True))
    png = _figure(args, records)
    lat = records.data.get("latency")
    if lat:
        md += (f"\n\nDeployment latency (onnxruntime, 1 thread, batch 1, {lat['host']}, load {lat['load_avg_1m']:.2f}):"
               f" SDKD student int8 {lat['student_int8_p50_ms']:.3f} ms p50; teachers "
               + ", ".join(f"{k} {v:.3f} ms" for k, v in lat["teacher_rows"].items())
               + f"; student / fastest teacher = {lat['student_over_fastest_teacher']:.3f}.")
    text = (f"# SDKD on Navier-Stokes: `{args.config}` config\n\nSettings: {json.dumps(settings)}.\n\n"
            "Teachers trained once on the fixed split (data seed 0); students over the seeds listed. MSE, MAE in "
            "vorticity units on the test trajectories; rel L2 = mean over windows of ||pred - truth|| / ||truth||. "
            "Peak train MB: " + (rows[0]["memory_kind"] if rows else "") + " of each training (the process "
            "includes PyTorch, the data and, for a KD student, the teachers it runs); above torch MB: that peak "
            "less the process's memory once PyTorch is imported. The 1-minute load average at the end of each "
            "training is in the JSON (2 cores here: s/epoch is only comparable under similar load).\n\n"
            + "".join(f"Note: {n}\n\n" for n in records.data.get("notes", [])) + md
            + (f"\n\n![truth vs models]({png.name})\n" if png else "\n"))
    (args.results / f"sdkd_navier_stokes_{args.config}.md").write_text(text)
    print(md)
    return everything


def latency(args: argparse.Namespace, records: Records) -> None:
    """Export the seed-0 SDKD student (int8) and each teacher (fp32, int8) of its run to ONNX and time them side by
    side with `kdmobile bench` (1 thread, batch 1): the deployment cost of student vs teacher in one runtime."""
    rec = records.get("spectral/0")
    if rec is None:
        return
    run, out = Path(rec["run"]), args.results / f"sdkd_navier_stokes_{args.config}_bench"
    bundles = Path(args.runs) / "bundles"
    kd = [str(Path(sys.executable).parent / "kdmobile")]
    steps = [[*kd, "export", str(run), "--precision", "int8", "--out", str(bundles)]]
    steps += [[*kd, "export", str(run), "--model", f"teacher{i + 1}", "--precision", "fp32,int8", "--out",
               str(bundles)] for i in range(len(TEACHERS))]
    steps.append([*kd, "bench", str(run), "--threads", "1", "--runs", "300", "--no-progress", "--out", str(out)])
    for cmd in steps:
        if subprocess.run(cmd, check=False).returncode != 0:
            print(f"latency step failed: {' '.join(cmd[1:])}", file=sys.stderr)
            return
    rows = [r for r in json.loads((out / "report.json").read_text())["rows"] if r["batch"] == 1]
    onnx = [r for r in rows if r["backend"] == "onnxruntime" and r.get("p50_ms")]
    student = next((r for r in onnx if r["role"] == "student" and r["precision"] == "int8"), None)
    teachers = [r for r in onnx if r["role"] == "teacher"]
    if student and teachers:
        fastest = min(teachers, key=lambda r: r["p50_ms"])
        records.data["latency"] = {
            "student_int8_p50_ms": student["p50_ms"], "teacher_rows": {r["model"]: r["p50_ms"] for r in teachers},
            "fastest_teacher": fastest["model"], "student_over_fastest_teacher": student["p50_ms"] / fastest["p50_ms"],
            "runtime": "onnxruntime, 1 thread, batch 1", "host": cpu_name(), "load_avg_1m": os.getloadavg()[0],
            "report": str(out / "report.json")}
        write_json(records.path, records.data)


def _against_control(variant: str, found: list[tuple[int, dict[str, Any]]], records: Records) -> dict[str, Any]:
    """The row's control (CONTROL) and its MSE over the control's on the same seeds (mean of both)."""
    control = CONTROL.get(variant)
    pairs = [(r["mse"], records.get(f"{control}/{s}")) for s, r in found] if control else []
    pairs = [(m, c["mse"]) for m, c in pairs if c]
    if not pairs:
        return {}
    mine, theirs = np.mean([m for m, _ in pairs]), np.mean([c for _, c in pairs])
    return {"control": control, "mse_vs_control": float(mine / theirs), "control_seeds": len(pairs)}


def _search_rows(args: argparse.Namespace, records: Records) -> list[dict[str, Any]]:
    """The --search runs recorded so far, each against its seed's no-KD student (turbulent configs: the no-KD
    continuation, the equal-budget control of phase 2)."""
    rows = []
    for key, rec in records.data["runs"].items():
        if not key.startswith("search:"):
            continue
        name, seed = key[len("search:"):].rsplit("/", 1)
        if name not in searches(args.config):
            continue
        control = search_control(args.config, name)
        base = records.get(f"{control}/{seed}")
        over = SEARCH[name] if name in SEARCH else {**LABEL_SEARCH[name][0], "teachers": LABEL_SEARCH[name][1]}
        if base:
            rows.append({"setting": name, "seed": int(seed), "overrides": over, "mse": rec["mse"],
                         "rel_l2": rec["rel_l2"], "control": control, "mse_vs_control": rec["mse"] / base["mse"],
                         **({"mse_vs_nokd": rec["mse"] / base["mse"]} if control == "none" else {})})
    return rows


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    """A model's normalised forecast for normalised windows (CPU, no grad)."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).float().numpy()


def _figure(args: argparse.Namespace, records: Records) -> Path | None:
    """Truth vs each teacher vs each seed-0 student on one test window (when their run directories exist here)."""
    from kdmobile.models import load_model
    from kdmobile.data.sequences import SequenceSpec, load_splits
    from kdmobile.sdkd.train import cached_navier_stokes_path, forecast_figure

    keys = [*(f"teacher:{t}" for t in TEACHERS), *(f"{v}/0" for v in variants(args.config)
                                                   if not v.startswith("labels-"))]
    found = {k: records.get(k) for k in keys if records.get(k)}
    models = {}
    for key, rec in found.items():
        path = Path(rec["file"]) if key.startswith("teacher:") else Path(rec["run"]) / STUDENT_FILE
        if not path.is_file():
            return None
        models[key.split("/")[0]] = load_model(path)[0].eval()
    if not models:
        return None
    cfg = _config(args, "figure", {})
    d = cfg.data
    splits = load_splits(cached_navier_stokes_path(cfg), SequenceSpec(
        frames_in=d.frames_in, frames_out=d.frames_out, val_frac=d.val_frac, test_frac=d.test_frac,
        seed=cfg.data_seed, stride=d.stride))  # the benchmark's fixed split, read without creating a run
    out = args.results / f"sdkd_navier_stokes_{args.config}.png"
    forecast_figure(out, splits, {n: _predict(m, splits.test_x[:1])[0] for n, m in models.items()})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=TURBULENT_VARIANTS,
                   help="only these student variants (default: all of the config's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda (default cpu)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, each in its own process (default 1)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each training process")
    p.add_argument("--runs", default="runs/sdkd-bench", help="where the run directories go")
    p.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE (all runs)")
    p.add_argument("--latency", action="store_true",
                   help="then export the seed-0 SDKD student and the teachers to ONNX and time them (kdmobile bench)")
    p.add_argument("--search", action="store_true",
                   help="also train the settings of SEARCH around the SDKD loss (first seed only)")
    p.add_argument("--note", help="a sentence kept with the records and printed above the table")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--report-only", action="store_true", help="write the tables from the records and stop")
    p.add_argument("--records", help="the records file (default: RESULTS/sdkd_navier_stokes_<config>_records.json)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the tables go (default: benchmarks/results)")
    p.add_argument("--only", nargs=3, help=argparse.SUPPRESS)  # child: teacher NAME 0 | student|search NAME SEED
    p.add_argument("--shard", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    default_records = args.results / f"sdkd_navier_stokes_{args.config}_records.json"
    records = Records(Path(args.records) if args.records else default_records)
    if args.only:
        write_json(args.shard, child(args, records))
        return 0
    if args.note and args.note not in records.data.setdefault("notes", []):
        records.data["notes"].append(args.note)
    if not args.report_only:
        records.data["device"] = device_name(args.device)
        _make_data(args, records)
        common = ["--config", args.config, "--device", args.device, "--runs", args.runs, "--records", str(records.path),
                  *(x for s in args.set for x in ("--set", s)), *(["--progress"] if args.progress else [])]
        jobs = [["--only", "teacher", t, "0"] for t in teacher_jobs(args.config, args.search)
                if not records.get(f"teacher:{t}")]
        for job, out in run_children(__file__, common, records, jobs, args.jobs, args.threads):
            if not out:
                return 1
            records.put(f"teacher:{job[2]}", out)
            print(f"teacher {job[2]}: MSE {out['mse']:.4g}, rel L2 {out['rel_l2']:.4f}", flush=True)
        jobs = [["--only", "student", v, str(s)] for s in args.seeds for v in (args.variants or variants(args.config))
                if not records.get(f"{v}/{s}")]  # in order: a seed's phase-2 rows start from its `none` run
        jobs += [["--only", "search", name, str(args.seeds[0])] for name in (searches(args.config) if args.search else [])
                 if not records.get(f"search:{name}/{args.seeds[0]}")]
        failed = 0
        for job, out in run_children(__file__, common, records, jobs, args.jobs, args.threads):
            key = f"{'search:' if job[1] == 'search' else ''}{job[2]}/{job[3]}"
            if out:
                records.put(key, out)
                print(f"{key}: MSE {out['mse']:.4g}, rel L2 {out['rel_l2']:.4f} ({out['seconds']:.0f} s)", flush=True)
            failed += not out
        if failed:
            print(f"{failed} runs failed (see above); the others are recorded", file=sys.stderr)
        if args.latency:
            latency(args, records)
    write_json(records.path, records.data)
    report(args, records)
    return 0


def _make_data(args: argparse.Namespace, records: Records) -> None:
    """Generate (or find in the cache) the config's data set once, recording how long generation took."""
    from kdmobile.sdkd.train import cached_navier_stokes, cached_navier_stokes_path

    cfg = _config(args, "data", {})
    d = cfg.data
    if args.config in PHASE2 and "physics" not in records.data:  # the generator's physics at these settings
        from kdmobile.data.ns_physics import physics_check

        records.data["physics"] = physics_check(d.visc, d.res, d.solve_res, d.scheme)
        write_json(records.path, records.data)
        print(f"physics check: {'passed' if records.data['physics']['passed'] else 'FAILED'} "
              f"{records.data['physics']['checks']}", flush=True)
    if cached_navier_stokes_path(cfg).is_file():
        return
    started = time.perf_counter()
    cached_navier_stokes(cfg, progress=True)
    records.data["data_seconds"] = {"seconds": round(time.perf_counter() - started, 1),
                                    "device": device_name(args.device), "host": cpu_name()}
    write_json(records.path, records.data)


if __name__ == "__main__":
    sys.exit(main())
