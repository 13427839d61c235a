"""SDKD on 2-D Navier-Stokes (FNO generator), 64x64, 10 -> 10 frames, per viscosity.

Trains the teacher, a student without KD, a student with output KD and the SDKD student (output + spectral
latent distillation) on the same windows; reports MSE/MAE and their reduction relative to the no-KD student,
parameters, FLOPs, training seconds per epoch and peak training memory (CUDA) of student vs teacher.
Writes benchmarks/results/sdkd_navier_stokes.{json,md}.

  python benchmarks/sdkd_navier_stokes.py --n 64 --visc 1e-3            # CPU-sized
  python benchmarks/sdkd_navier_stokes.py --n 400 --visc 1e-3 1e-4      # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from kdmobile.config import SDKDConfig, load_config
from kdmobile.table import format_table
from kdmobile.train.sdkd import run_sdkd

RESULTS = Path(__file__).parent / "results"


def _stage_stats(run: Path) -> dict[str, dict[str, float]]:
    """Mean seconds per epoch and peak GPU memory per training stage, from the run's log."""
    stats: dict[str, dict[str, list[float]]] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") != "epoch":
            continue
        s = stats.setdefault(rec["stage"].split("/")[-1], {"seconds": [], "peak_gpu_mb": []})
        s["seconds"].append(rec["seconds"])
        if "peak_gpu_mb" in rec:
            s["peak_gpu_mb"].append(rec["peak_gpu_mb"])
    return {k: {"sec_per_epoch": float(np.median(v["seconds"])),
                "peak_gpu_mb": max(v["peak_gpu_mb"]) if v["peak_gpu_mb"] else None} for k, v in stats.items()}


def run_visc(visc: float, args: argparse.Namespace) -> dict:
    """All four models for one viscosity."""
    base = {"data.n": args.n, "data.res": args.res, "data.visc": visc, "data.t_final": args.t_final,
            "data.stride": args.stride, "out": args.runs, "seed": args.seed, "train.epochs": args.epochs,
            "teacher_train.epochs": args.teacher_epochs, "train.device": args.device,
            "teacher_train.device": args.device, "train.batch_size": args.batch_size,
            "teacher_train.batch_size": args.batch_size}
    tag = f"v{visc:g}"
    t0 = time.perf_counter()
    run_a, ma = run_sdkd(load_config(SDKDConfig, None, {**base, "name": f"{tag}-sdkd", "kd": "spectral"}, args.set),
                         progress=args.progress)
    cfg_b = load_config(SDKDConfig, None, {**base, "name": f"{tag}-output", "kd": "output", "baseline": False,
                                           "teacher_files": [str(run_a / "teachers" / "teacher.safetensors")]}, args.set)
    run_b, mb = run_sdkd(cfg_b, progress=args.progress)
    stages = {**_stage_stats(run_a), **{"student_output": _stage_stats(run_b)["student"]}}
    stages["student_sdkd"] = stages.pop("student")
    models = {"teacher": ma["models"]["teacher"], "student (no KD)": ma["models"]["student_nokd"],
              "student (output KD)": mb["models"]["student"], "student (SDKD)": ma["models"]["student"]}
    stage_of = {"teacher": "teacher", "student (no KD)": "student_nokd", "student (output KD)": "student_output",
                "student (SDKD)": "student_sdkd"}
    base_m = models["student (no KD)"]
    rows = {}
    for name, m in models.items():
        st = stages[stage_of[name]]
        rows[name] = {k: m[k] for k in ("mse", "mae", "rel_l2", "ssim", "params", "flops", "cpu_latency_ms")}
        rows[name].update(st)
        rows[name]["mse_reduction_vs_nokd_pct"] = 100 * (1 - m["mse"] / base_m["mse"])
        rows[name]["mae_reduction_vs_nokd_pct"] = 100 * (1 - m["mae"] / base_m["mae"])
    t, s = stages["teacher"], stages["student_sdkd"]
    return {"visc": visc, "windows": ma["split_windows"], "minutes": (time.perf_counter() - t0) / 60,
            "student_vs_teacher": {"train_time_ratio": s["sec_per_epoch"] / t["sec_per_epoch"],
                                   "peak_memory_ratio": (s["peak_gpu_mb"] / t["peak_gpu_mb"]) if t["peak_gpu_mb"]
                                   else None},
            "models": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--visc", type=float, nargs="+", default=[1e-3])
    p.add_argument("--n", type=int, default=64, help="trajectories to generate")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--t-final", type=float, default=30.0)
    p.add_argument("--stride", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default="runs/sdkd-bench")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--progress", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the result files")
    args = p.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" \
        else f"CPU ({platform.processor() or platform.machine()})"
    results = [run_visc(v, args) for v in args.visc]
    out = {"benchmark": "sdkd_navier_stokes", "device": device, "trajectories": args.n, "res": args.res,
           "t_final": args.t_final, "frames": "10 -> 10", "epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
           "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"sdkd_navier_stokes{args.tag}"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"# SDKD on Navier-Stokes\n\nDevice: {device}; {args.n} trajectories at {args.res}x{args.res}, T={args.t_final:g}, "
          f"10 -> 10 frames; {args.teacher_epochs} teacher / {args.epochs} student epochs.\n"]
    for r in results:
        rows = [[n, m["mse"], m["mae"], f"{m['mse_reduction_vs_nokd_pct']:+.1f}%", f"{m['mae_reduction_vs_nokd_pct']:+.1f}%",
                 m["params"], m["flops"] / 1e6, m["sec_per_epoch"], m["peak_gpu_mb"]] for n, m in r["models"].items()]
        md.append(f"## nu = {r['visc']:g} ({r['windows']['train']} train / {r['windows']['test']} test windows)\n")
        md.append(format_table(["model", "MSE", "MAE", "MSE red. vs no-KD", "MAE red. vs no-KD", "params", "MFLOPs",
                                "s/epoch", "peak GPU MB"], rows, markdown=True))
        ratio = r["student_vs_teacher"]
        md.append(f"\nSDKD student vs teacher: training time per epoch x{ratio['train_time_ratio']:.2f}, "
                  f"peak training memory x{ratio['peak_memory_ratio'] if ratio['peak_memory_ratio'] is None else round(ratio['peak_memory_ratio'], 2)}.\n")
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
