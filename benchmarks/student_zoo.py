"""Student zoo: which timm backbone makes the best AMMKD student at the size users deploy (224 px).

For each backbone:
  accuracy  CIFAR-10 top-1 at 64 px after the same short distillation (the ablation's fixed split and teacher pair,
            offline views, today's loss and weighting), over `--seed` 0 and 1 (one child process per training,
            recorded as it finishes); the tables show the mean;
  latency   the trained student (seed 0) at 224 px in onnxruntime (1 thread, batch 1): its ONNX fp32 file and every
            int8 format export builds (w8a32, u8s8, s8s8, dynamic), all timed interleaved in one process with the
            ViT-B/32 and RN50 image towers; a backbone's int8 is its fastest int8 file whose output cosine vs fp32
            is >= 0.99 (export's rule). Reparameterisable backbones (RepViT, MobileOne, FastViT) are fused first.
Then the Pareto front of (p50 of the faster of fp32 and int8, top-1), the Pareto models also built for TFLite
(fp32, dynamic and static int8, XNNPACK) and ExecuTorch (XNNPACK fp32 and int8) and timed beside their ONNX files,
and the default rule (kdmobile.student_choice.choose_default). The default's int8 top-1 is checked against its fp32
by exporting its run. Tables and plots: benchmarks/zoo_report.py.

  python benchmarks/student_zoo.py --teachers-from R --seed 0 --train-only   # and --seed 1
  python benchmarks/student_zoo.py --teachers-from R                          # files, timing, report
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

    from kdmobile.ammkd.evaluate import normalise
    from kdmobile.contracts.heldout import read_heldout

    imgs = torch.from_numpy(np.ascontiguousarray(read_heldout(run).images_calib[:n])).permute(0, 3, 1, 2)
    x = F.interpolate(normalise(imgs), size=(DEPLOY_PX, DEPLOY_PX), mode="bilinear", align_corners=False)
    return x.numpy().astype(np.float32)


def _deployed(run: Path) -> tuple[Any, np.ndarray]:
    """The run's student as export ships it (fused) and its calibration inputs at DEPLOY_PX."""
    from kdmobile.models.registry import fuse_for_inference, load_model

    return fuse_for_inference(load_model(run / STUDENT_FILE)[0]).eval(), _deploy_inputs(run)


def _cached(out_dir: Path, build: Any) -> dict[str, Any]:
    """out_dir/info.json if a finished build left it, else build() and write it last (so an interrupted build is
    redone, and this step can run while another process trains and writes the records file)."""
    info = out_dir / "info.json"
    if info.is_file():
        return json.loads(info.read_text())
    facts = build()
    write_json(info, facts)
    return facts


def onnx_files(run: Path, out_dir: Path) -> dict[str, Any]:
    """fp32 and every int8 format's ONNX file of the trained student at DEPLOY_PX (no timing here: time_all times
    them together), with each int8 file's output cosine vs fp32 on the calibration inputs."""
    import torch

    from kdmobile.export.int8_choice import CANDIDATES, _cosine, one_thread_session
    from kdmobile.export.onnx import convert_onnx
    from kdmobile.models.profile import count_flops

    def build() -> dict[str, Any]:
        model, calib = _deployed(run)
        example = torch.zeros(1, 3, DEPLOY_PX, DEPLOY_PX)
        out_dir.mkdir(parents=True, exist_ok=True)
        convert_onnx(model, example, out_dir / "fp32.onnx", "fp32", None)
        outs = {}
        for fmt in ("fp32", *CANDIDATES):
            if fmt != "fp32":
                convert_onnx(model, example, out_dir / f"{fmt}.onnx", "int8", calib, fmt)
            s = one_thread_session(out_dir / f"{fmt}.onnx")
            outs[fmt] = np.concatenate([s.run(None, {s.get_inputs()[0].name: c[None]})[0] for c in calib])
        return {"flops": count_flops(model, example), "files": {
            f: {"bytes": (out_dir / f"{f}.onnx").stat().st_size, "cosine_vs_fp32": _cosine(outs[f], outs["fp32"])}
            for f in outs}}

    return _cached(out_dir, build)


def runtime_files(run: Path, out_dir: Path) -> dict[str, Any]:
    """The TFLite and ExecuTorch files of one (Pareto) model at DEPLOY_PX (zoo_runtimes.BUILDS)."""
    from zoo_runtimes import build_files

    def build() -> dict[str, Any]:
        model, calib = _deployed(run)
        return build_files(model, DEPLOY_PX, calib, out_dir)

    return _cached(out_dir, build)


def time_all(args: argparse.Namespace, records: Records) -> dict[str, Any]:
    """The reference towers and every zoo model's ONNX files, timed interleaved in one process (so a busy moment
    hits all alike); p50 ms per "model|format", FLOPs, the core's peak and the load around it."""
    import onnxruntime as ort

    from kdmobile.bench.reference import peak_gflops, reference_file
    from kdmobile.export.int8_choice import one_thread_session as session
    from kdmobile.export.int8_choice import time_side_by_side

    sessions, flops = {}, {}
    for name in REFERENCES:
        path, info = reference_file(name, DEPLOY_PX)
        sessions[f"{name}|fp32"], flops[name] = session(path), info["flops"]
    for b in ZOO:
        if rec := records.get(f"onnx/{b}"):
            flops[b] = rec["flops"]
            for fmt in rec["files"]:
                sessions[f"{b}|{fmt}"] = session(Path(args.runs) / "zoo-onnx" / b / f"{fmt}.onnx")
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


def default_int8_check(args: argparse.Namespace, records: Records, default: str, fmt: str) -> dict[str, Any]:
    """Export the default's run to ONNX fp32 and int8 (its fastest int8 format at 224 px) and read the verified
    top-1 of both on the held-out test split (2,000 images at the trained size)."""
    from kdmobile.export.exporter import export_run
    from kdmobile.export.options import ExportOptions

    run = Path(records.get(train_key(default, 0))["run"])
    report = export_run(run, ExportOptions(targets=["onnx"], precisions=["fp32", "int8"], int8_format=fmt,
                                           out=Path(args.runs) / "zoo-bundles"), log=lambda s: None)
    top1 = {a.precision: ((a.verification.get("metric") or {}).get("all") or {}).get("top1") for a in report.artifacts}
    return {"int8_format": fmt, "top1_fp32": top1.get("fp32"), "top1_int8": top1.get("int8"),
            "samples": [a.verification.get("samples") for a in report.artifacts],
            "at": f"{TRAIN_PX} px (the trained size), held-out test images, ONNX bundles verified by kdmobile "
                  "export"}


def measure(args: argparse.Namespace, records: Records) -> None:
    """Everything after training: ONNX files, their timing, the Pareto models' phone-runtime files and timing, and
    the default's int8 check; each step recorded, skipped when recorded (--retime times again)."""
    from zoo_report import points
    from zoo_runtimes import time_runtimes

    from kdmobile.bench.reference import reference_file

    for b in ZOO:
        if (tr := records.get(train_key(b, 0))) and not records.get(f"onnx/{b}"):
            print(f"{b}: ONNX fp32 + int8 files at {DEPLOY_PX} px", flush=True)
            records.put(f"onnx/{b}", onnx_files(Path(tr["run"]), Path(args.runs) / "zoo-onnx" / b))
    if args.retime or not records.get("timing"):
        records.put("timing", time_all(args, records))
    pts, front, default, _, _ = points(records)
    built = {}
    for b in front:
        if not records.get(f"runtimes/{b}"):
            print(f"{b}: TFLite and ExecuTorch files at {DEPLOY_PX} px", flush=True)
            records.put(f"runtimes/{b}", runtime_files(Path(records.get(train_key(b, 0))["run"]),
                                                       Path(args.runs) / "zoo-rt" / b))
        built[b] = records.get(f"runtimes/{b}")
    if built and (args.retime or not records.get("runtime_timing")):
        onnx = {f"{b}|onnx|{k}": Path(args.runs) / "zoo-onnx" / b / f"{fmt}.onnx"
                for b in built for k, fmt in (("fp32", "fp32"), ("int8", pts[b].int8_format)) if fmt}
        records.put("runtime_timing", time_runtimes(built, onnx, reference_file(REFERENCES[0], DEPLOY_PX)[0],
                                                    DEPLOY_PX, args.rounds, args.calls))
    if default in pts and pts[default].int8_format and not records.get(f"int8check/{default}"):
        records.put(f"int8check/{default}", default_int8_check(args, records, default, pts[default].int8_format))


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
    p.add_argument("--runs", default="runs/zoo", help="where the run directories and model files go")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, each in its own process")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each training process")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    p.add_argument("--calls", type=int, default=15, help="timed calls per model and round")
    p.add_argument("--retime", action="store_true", help="time again (on a quieter machine) even if recorded")
    p.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE (training)")
    p.add_argument("--report-only", action="store_true", help="write the tables from the records and stop")
    p.add_argument("--records", default=str(RESULTS / "student_zoo_records.json"))
    p.add_argument("--seed", type=int, default=0, help="training seed (split fixed); run 0 and 1")
    p.add_argument("--train-only", action="store_true",
                   help="train (and record) the missing backbones, then stop: no files, timing or report")
    p.add_argument("--files-only", action="store_true",
                   help="build the ONNX files of the trained models (cached in --runs, not recorded), then stop: "
                        "safe to run while another process trains")
    p.add_argument("--only-train", help=argparse.SUPPRESS)  # child process: train this backbone
    p.add_argument("--shard", help=argparse.SUPPRESS)
    args = p.parse_args()
    records = Records(Path(args.records))
    if args.only_train:
        write_json(args.shard, train_one(args, args.only_train, teacher_files(args.teachers_from)))
        return 0
    if args.files_only:
        for b in args.backbones:
            if tr := records.get(train_key(b, 0)):
                print(f"{b}: ONNX files", flush=True)
                onnx_files(Path(tr["run"]), Path(args.runs) / "zoo-onnx" / b)
        return 0
    if not args.report_only:
        if not args.data_root or not (Path(args.data_root) / "cifar10" / "cifar10_test.npz").is_file():
            print("student_zoo: shared data not found; set --data-root or KDMOBILE_SHARED_DATA", file=sys.stderr)
            return 2
        teacher_files(args.teachers_from)
        records.data["training"] = (f"CIFAR-10 8000/2000 (split seed 0), {args.epochs} epochs at {TRAIN_PX} px, "
                                    "offline views, the ablation's teacher pair, default loss (ce + 10 kl) and "
                                    "weighting; top-1 on the 2,000 test images")
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
        measure(args, records)
    from zoo_report import report

    report(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
