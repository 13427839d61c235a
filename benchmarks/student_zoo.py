"""Student zoo: which timm backbone makes the best AMMKD student at the size users deploy (224 px).

For each backbone:
  accuracy  CIFAR-10 top-1 at 64 px after the same short distillation (the ablation's fixed split and teacher pair,
            offline views, the default weighting), one child process per backbone, recorded as it finishes;
  latency   the trained student at 224 px in onnxruntime (1 thread, batch 1): its ONNX graph in fp32 and every int8
            candidate that `kdmobile export --int8-format auto` builds (w8a32, u8s8, s8s8, dynamic), timed side by
            side by the same code export uses, with the format auto keeps. Reparameterisable backbones (RepViT,
            MobileOne) are fused first, as export does.
Then the Pareto front of (p50 of the faster of fp32 and auto's int8, top-1), plotted, and the default rule: the most
accurate front model at least 100x faster than the ViT-B/32 image tower in the same runtime (else the fastest).
`--headline` times the ViT-B/32 and RN50 towers (random weights, latency only) and every zoo model's fp32 and int8
bundle interleaved in one process, and checks the default's int8 top-1 against its fp32 by exporting its run.

  python benchmarks/student_zoo.py --teachers-from benchmarks/results/ammkd_ablation_cifar10_records.json
  python benchmarks/student_zoo.py --report-only
Measure latency on a quiet machine: the script prints the load average it ran under and records it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from resumable import Records, cpu_name, run_children, without_set_keys

from kdmobile.config import AMMKDConfig, load_config
from kdmobile.data import shared_data_dir
from kdmobile.fileio import write_json
from kdmobile.rundir import STUDENT_FILE, epoch_seconds
from kdmobile.student_choice import choose_student, pareto
from kdmobile.table import format_table

RESULTS = Path(__file__).parent / "results"
ZOO = ["mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100", "mobilenetv2_050",
       "mobilenetv2_100", "efficientvit_m0", "repvit_m0_9", "mobileone_s0", "resnet18",
       # zoo v2 (issue 23): backbones made for int8 and phones (ReLU, no squeeze-excite where named), timm 1.0
       "mobilenetv4_conv_small_035", "mobilenetv4_conv_small_050", "mobilenetv4_conv_small", "lcnet_035", "lcnet_050",
       "tf_mobilenetv3_small_minimal_100", "ghostnetv3_050", "fastvit_mci0"]
DEPLOY_PX, TRAIN_PX = 224, 64
REFERENCES = ["ViT-B-32", "RN50"]


# ------------------------------------------------------------------------------------------------ accuracy
def train_key(backbone: str, seed: int) -> str:
    """The records key of one training: seed 0 keeps the first zoo's key."""
    return f"train/{backbone}" if seed == 0 else f"train/{backbone}@s{seed}"


def train_one(args: argparse.Namespace, backbone: str, teachers: list[str]) -> dict[str, Any]:
    """Child process: the short distillation of one backbone at TRAIN_PX; returns its record."""
    from kdmobile.ammkd.train import run_ammkd

    over = {"data.spec": f"cifar10:{args.data_root}/cifar10/cifar10_test.npz", "data.val_frac": 0.0,
            "data.test_frac": 0.2, "data.max_train": 8000, "data.max_test": 2000, "data.split_seed": 0,
            "data.image_size": TRAIN_PX, "data.views": args.epochs,
            "data.view_cache": str(Path(args.runs) / f"cifar10-{TRAIN_PX}px-views-{args.epochs}"),
            "seed": args.seed, "out": args.runs, "name": f"zoo-{backbone}" + (f"-s{args.seed}" if args.seed else ""), "baseline": False, "health.drop_weak": False,
            "student": backbone, "teachers": teachers, "teacher_train.epochs": 0, "train.epochs": args.epochs,
            "train.batch_size": 64}
    cfg = load_config(AMMKDConfig, None, without_set_keys(over, args.set), args.set)
    started = time.perf_counter()
    run, metrics = run_ammkd(cfg, progress=False)
    epochs = epoch_seconds(run, "student")
    s = metrics["models"]["student"]
    return {"run": str(run), "top1": s["top1"], "params": s["image_params"], "seconds": round(time.perf_counter()
            - started, 1), "train_s_per_epoch": float(np.median(epochs)) if epochs else None,
            "weighting": metrics["weighting"], "load_average": os.getloadavg()[0]}


def teacher_files(path: str) -> list[str]:
    """The teacher pair of the ablation's records file (the fixed CIFAR-10 split)."""
    try:
        rec = json.loads(Path(path).read_text())["runs"].get("teachers")
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise SystemExit(f"student_zoo: {path}: not a readable ablation records file ({type(e).__name__})") from None
    if not rec or not all(Path(f).is_file() for f in rec["files"]):
        raise SystemExit(f"student_zoo: {path} names no existing teacher files; run benchmarks/ammkd_ablation.py "
                         "first (it trains the pair once for the split)")
    return rec["files"]


# ------------------------------------------------------------------------------------------------- latency
def _deploy_inputs(run: Path, n: int = 32) -> np.ndarray:
    """Calibration / parity inputs at DEPLOY_PX: the run's stored calibration images, resized and normalised."""
    import torch
    import torch.nn.functional as F

    from kdmobile.contracts.heldout import read_heldout
    from kdmobile.ammkd.evaluate import normalise

    imgs = torch.from_numpy(np.ascontiguousarray(read_heldout(run).images_calib[:n])).permute(0, 3, 1, 2)
    x = F.interpolate(normalise(imgs), size=(DEPLOY_PX, DEPLOY_PX), mode="bilinear", align_corners=False)
    return x.numpy().astype(np.float32)


def latency_one(backbone: str, run: Path, out_dir: Path) -> dict[str, Any]:
    """fp32 and auto-int8 ONNX of the trained student at DEPLOY_PX, timed by export's own measurement."""
    import torch

    from kdmobile.export.onnx import convert_onnx
    from kdmobile.models.profile import count_flops
    from kdmobile.models.registry import fuse_for_inference, load_model

    model = fuse_for_inference(load_model(run / STUDENT_FILE)[0])
    example = torch.zeros(1, 3, DEPLOY_PX, DEPLOY_PX)
    calib = _deploy_inputs(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    convert_onnx(model, example, out_dir / "fp32.onnx", "fp32", None)
    info = convert_onnx(model, example, out_dir / "int8.onnx", "int8", calib, "auto")["quantization"]
    return {"flops": count_flops(model, example), "fp32_p50_ms": info["fp32_p50_ms"], "auto_chose": info["format"],
            "candidates": info["candidates"], "isa": info["isa"], "load_average": info["load_average_1min"]}


# ------------------------------------------------------------------------------------------------ headline
def time_all(args: argparse.Namespace, records: Records) -> dict[str, Any]:
    """The reference towers and every zoo model's fp32 and auto-int8 ONNX, timed interleaved in one process (so a
    busy moment hits all alike); p50 ms per "model|precision", FLOPs, the core's peak and the load around it."""
    import onnxruntime as ort

    from kdmobile.bench.reference import peak_gflops, reference_file
    from kdmobile.export.int8_choice import one_thread_session as session
    from kdmobile.export.int8_choice import time_side_by_side

    sessions, flops = {}, {}
    for name in REFERENCES:
        path, info = reference_file(name, DEPLOY_PX)
        sessions[f"{name}|fp32"], flops[name] = session(path), info["flops"]
    for b in ZOO:
        if rec := records.get(f"latency/{b}"):
            flops[b] = rec["flops"]
            for prec in ("fp32", "int8"):
                sessions[f"{b}|{prec}"] = session(Path(args.runs) / "zoo-onnx" / b / f"{prec}.onnx")
    x = np.zeros((1, 3, DEPLOY_PX, DEPLOY_PX), np.float32)
    runners = {k: (lambda v, s=s: s.run(None, {s.get_inputs()[0].name: v})[0]) for k, s in sessions.items()}
    load = os.getloadavg()[0]
    print(f"timing {len(runners)} models interleaved ({args.rounds} rounds x {args.calls} calls; load {load:.2f})",
          flush=True)
    p50 = time_side_by_side(runners, x, rounds=args.rounds, calls=args.calls)
    peak, peak_source = peak_gflops(1)
    return {"p50_ms": p50, "flops": flops, "peak_gflops": peak, "peak_source": peak_source,
            "runtime": f"onnxruntime {ort.__version__}, 1 thread, batch 1", "load_average_before": load,
            "load_average_after": os.getloadavg()[0], "host": cpu_name(),
            "timing": f"{args.rounds} interleaved rounds x {args.calls} calls per model, p50 over all"}


def default_int8_check(args: argparse.Namespace, records: Records, default: str) -> dict[str, Any]:
    """Export the default's run to ONNX fp32 and int8 (the format auto chose at 224 px) and read the verified top-1
    of both on the held-out test split (2,000 images at the trained size)."""
    from kdmobile.export.exporter import export_run
    from kdmobile.export.options import ExportOptions

    fmt = records.get(f"latency/{default}")["auto_chose"]
    run = Path(records.get(f"train/{default}")["run"])
    report = export_run(run, ExportOptions(targets=["onnx"], precisions=["fp32", "int8"], int8_format=fmt,
                                           out=Path(args.runs) / "zoo-bundles"), log=lambda s: None)
    top1 = {a.precision: ((a.verification.get("metric") or {}).get("all") or {}).get("top1") for a in report.artifacts}
    return {"int8_format": fmt, "top1_fp32": top1.get("fp32"), "top1_int8": top1.get("int8"),
            "samples": [a.verification.get("samples") for a in report.artifacts],
            "at": f"{TRAIN_PX} px (the trained size), held-out test images, ONNX bundles verified by kdmobile "
                  "export"}


# -------------------------------------------------------------------------------------------------- report
def zoo_points(records: Records) -> dict[str, tuple[float, float, str]]:
    """backbone -> (p50 ms of its faster bundle in the interleaved timing, top-1, which bundle)."""
    p50 = (records.get("timing") or {}).get("p50_ms", {})
    out = {}
    for b in ZOO:
        tr, lat = records.get(f"train/{b}"), records.get(f"latency/{b}")
        if tr and lat and f"{b}|fp32" in p50:
            prec = "fp32" if p50[f"{b}|fp32"] <= p50[f"{b}|int8"] else "int8"
            out[b] = (p50[f"{b}|{prec}"], tr["top1"], prec)
    return out


def report(records: Records) -> None:
    """student_zoo.json/.md/.png and headline_224.json/.md from the records."""
    timing = records.get("timing")
    pts = zoo_points(records)
    if not timing or not pts:
        print("student_zoo: nothing timed yet")
        return
    p50, ref = timing["p50_ms"], timing["p50_ms"][f"{REFERENCES[0]}|fp32"]
    points = {b: (ms, acc) for b, (ms, acc, _) in pts.items()}
    front = pareto(points)
    default, why = choose_student(points, ref)
    rows = []
    for b, (ms, acc, prec) in pts.items():
        tr, lat = records.get(f"train/{b}"), records.get(f"latency/{b}")
        rows.append({"backbone": b, "top1_64px": acc, "params": tr["params"], "gflops_224": lat["flops"] / 1e9,
                     "fp32_p50_ms": p50[f"{b}|fp32"], "int8_p50_ms": p50[f"{b}|int8"], "auto_chose": lat["auto_chose"],
                     "export_int8_speedups": {k: round(v["speedup_vs_fp32"], 3) for k, v in lat["candidates"].items()},
                     "best_bundle": prec, "best_p50_ms": ms, "speedup_vs_vit_b32": ref / ms,
                     "pareto": b in front, "train_s_per_epoch_64px": tr["train_s_per_epoch"]})
    zoo = {"benchmark": "student_zoo", "host": timing["host"], "deploy_px": DEPLOY_PX, "train_px": TRAIN_PX,
           "training": records.data.get("training"), "latency": f"{timing['runtime']}, {timing['timing']}",
           "rows": rows, "pareto": front, "default": default, "default_rule": why}
    write_json(RESULTS / "student_zoo.json", zoo)
    table = [[r["backbone"], f"{r['top1_64px']:.2f}", f"{r['params'] / 1e6:.2f}", f"{r['gflops_224']:.3f}",
              f"{r['fp32_p50_ms']:.2f}", f"{r['int8_p50_ms']:.2f} ({r['auto_chose']})",
              " ".join(f"{k} {v:.2f}x" for k, v in r["export_int8_speedups"].items()),
              f"{r['speedup_vs_vit_b32']:.0f}x", "yes" if r["pareto"] else ""] for r in rows]
    md = format_table(["backbone", "top-1 % @64 px", "M params", "GFLOPs @224", "fp32 ms", "int8 ms (auto)",
                       "export's int8 / fp32 speed", "best vs ViT-B/32", "Pareto"], table, markdown=True)
    _plot(points, front, default)
    (RESULTS / "student_zoo.md").write_text(
        f"# Student zoo at {DEPLOY_PX} px\n\nHost: {zoo['host']}. Accuracy: {zoo['training']}. Latency: "
        f"{zoo['latency']}; load average {timing['load_average_before']:.2f} before, "
        f"{timing['load_average_after']:.2f} after.\n\n{md}\n\n![Pareto front](student_zoo.png)\n\n"
        f"Default by rule ({why}): **{default}**.\n")
    print(md)
    print(f"default: {default} ({why})")
    headline_224(records, timing, default)


def headline_224(records: Records, timing: dict[str, Any], default: str) -> None:
    """headline_224.json/.md: every timed model's row in the issue's shape, the default named with its int8 check."""
    p50, peak = timing["p50_ms"], timing["peak_gflops"]
    ref = p50[f"{REFERENCES[0]}|fp32"]
    rows = []
    for key, ms in p50.items():
        model, prec = key.split("|")
        lat = records.get(f"latency/{model}") or {}
        gflops = timing["flops"][model] / (ms / 1e3) / 1e9
        rows.append({"model": model if model in ZOO else f"{model} image tower (latency only, random weights)",
                     "runtime": timing["runtime"],
                     "precision": prec if prec == "fp32" else f"int8 {lat.get('auto_chose')} (chosen by auto)",
                     "p50_ms": ms, "speedup_vs_reference": ref / ms,
                     "int8_speedup_vs_fp32": p50[f"{model}|fp32"] / ms if prec == "int8" else None,
                     "gflops_per_s": gflops, "frac_peak": gflops / peak if peak else None})
    out = {"benchmark": "headline_224", "input_px": DEPLOY_PX, "host": timing["host"],
           "reference": f"{REFERENCES[0]} image tower, ONNX fp32", "timing": timing["timing"],
           "load_average": [timing["load_average_before"], timing["load_average_after"]],
           "peak_gflops": peak, "peak_source": timing["peak_source"], "default_student": default,
           "default_int8_check": records.get(f"int8check/{default}"), "rows": rows}
    write_json(RESULTS / "headline_224.json", out)
    table = [[r["model"], r["precision"], f"{r['p50_ms']:.3f}", f"{r['speedup_vs_reference']:.1f}x",
              f"{r['int8_speedup_vs_fp32']:.2f}x" if r["int8_speedup_vs_fp32"] else "",
              f"{r['gflops_per_s']:.1f}", f"{r['frac_peak']:.0%}" if r["frac_peak"] else "-"] for r in rows]
    md = format_table(["model", "precision", "p50 ms", "vs ViT-B/32", "int8 vs own fp32", "GFLOP/s", "of peak"],
                      table, markdown=True)
    check = out["default_int8_check"] or {}
    (RESULTS / "headline_224.md").write_text(
        f"# Headline at {DEPLOY_PX} px\n\nHost: {out['host']}; {timing['runtime']}; {out['timing']}; load average "
        f"{out['load_average'][0]:.2f} / {out['load_average'][1]:.2f}; peak fp32 GEMM {peak:.1f} GFLOP/s "
        f"({out['peak_source']}).\n\n{md}\n\nDefault student: **{default}**; its int8 ({check.get('int8_format')}) "
        f"top-1 {check.get('top1_int8')} vs fp32 {check.get('top1_fp32')} ({check.get('at')}).\n")
    print(md)


def _plot(points: dict[str, tuple[float, float]], front: list[str], default: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, (ms, acc) in points.items():
        ax.scatter(ms, acc, color="tab:red" if n == default else "tab:blue" if n in front else "tab:gray")
        ax.annotate(n, (ms, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([points[n][0] for n in front], [points[n][1] for n in front], "--", color="tab:blue", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 ms at {DEPLOY_PX} px, faster bundle (onnxruntime, 1 thread, batch 1)")
    ax.set_ylabel(f"CIFAR-10 top-1 % (trained and tested at {TRAIN_PX} px)")
    ax.set_title("Student zoo: Pareto front (dashed), default (red)")
    fig.tight_layout()
    fig.savefig(RESULTS / "student_zoo.png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = shared_data_dir()
    p.add_argument("--data-root", default=str(root) if root else None,
                   help="folder holding cifar10/ (default: $KDMOBILE_SHARED_DATA or ../shared/data)")
    p.add_argument("--teachers-from", default=str(RESULTS / "ammkd_ablation_cifar10_records.json"),
                   help="the ablation records naming the CIFAR-10 teacher pair (default: the CPU ablation's)")
    p.add_argument("--backbones", nargs="+", default=ZOO, choices=ZOO, help="train only these (default: all)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the short distillation (and views)")
    p.add_argument("--runs", default="runs/zoo", help="where the run directories and ONNX files go")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, each in its own process")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each training process")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    p.add_argument("--calls", type=int, default=20, help="timed calls per model and round")
    p.add_argument("--retime", action="store_true", help="time again (on a quieter machine) even if recorded")
    p.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE (training)")
    p.add_argument("--report-only", action="store_true", help="write the tables from the records and stop")
    p.add_argument("--records", default=str(RESULTS / "student_zoo_records.json"))
    p.add_argument("--seed", type=int, default=0, help="training seed (split fixed); seed 0 is the first zoo's")
    p.add_argument("--train-only", action="store_true",
                   help="train (and record) the missing backbones, then stop: no timing, no report")
    p.add_argument("--only-train", help=argparse.SUPPRESS)  # child process: train this backbone
    p.add_argument("--shard", help=argparse.SUPPRESS)
    args = p.parse_args()
    records = Records(Path(args.records))
    if args.only_train:
        write_json(args.shard, train_one(args, args.only_train, teacher_files(args.teachers_from)))
        return 0
    if not args.report_only:
        if not args.data_root or not (Path(args.data_root) / "cifar10" / "cifar10_test.npz").is_file():
            print("student_zoo: shared data not found; set --data-root or KDMOBILE_SHARED_DATA", file=sys.stderr)
            return 2
        teacher_files(args.teachers_from)
        records.data["training"] = (f"CIFAR-10 8000/2000 (split seed 0), {args.epochs} epochs at {TRAIN_PX} px, "
                                    "offline views, the ablation's teacher pair, default weighting; top-1 on the "
                                    "2,000 test images")
        common = ["--teachers-from", args.teachers_from, "--epochs", str(args.epochs), "--runs", args.runs,
                  "--seed", str(args.seed),
                  "--records", args.records, *(["--data-root", args.data_root]),
                  *[x for item in args.set for x in ("--set", item)]]
        todo = [b for b in args.backbones if not records.get(train_key(b, args.seed))]
        batches = [todo[:1], todo[1:]] if args.jobs > 1 else [todo]  # the first builds the shared view cache
        for batch in batches:
            for job, out in run_children(__file__, common, records, [["--only-train", b] for b in batch],
                                         args.jobs, args.threads):
                if out:
                    records.put(train_key(job[1], args.seed), out)
                    print(f"{job[1]}: top-1 {out['top1']:.2f} ({out['seconds']:.0f} s)", flush=True)
        if args.train_only:
            return 0
        for b in ZOO:
            if (tr := records.get(f"train/{b}")) and not records.get(f"latency/{b}"):
                print(f"{b}: ONNX fp32 + int8 candidates at {DEPLOY_PX} px", flush=True)
                records.put(f"latency/{b}", latency_one(b, Path(tr["run"]), Path(args.runs) / "zoo-onnx" / b))
        if args.retime or not records.get("timing"):
            records.put("timing", time_all(args, records))
        pts = zoo_points(records)
        if pts:
            ref = records.get("timing")["p50_ms"][f"{REFERENCES[0]}|fp32"]
            default, _ = choose_student({b: (ms, acc) for b, (ms, acc, _) in pts.items()}, ref)
            if not records.get(f"int8check/{default}"):
                records.put(f"int8check/{default}", default_int8_check(args, records, default))
    report(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
