"""AMMKD ablation on real CIFAR-10 (8,000 train / 2,000 test from ../shared/data/cifar10), over seeds.

Both teachers are pre-trained once (seed 0, in its `adaptive` run); every other student, of every seed, reuses those
teacher files (teacher epochs 0), so all variants distil from the same teachers and the seeds measure the
students' variance (initialisation, data order, augmentation):
  student without KD | single-teacher KD (each teacher) | equal weights | adaptive (AE-KD) weights.
Writes benchmarks/results/ammkd_ablation.{json,md}: mean +- std of top-1 over seeds, and parameters.

  python benchmarks/ammkd_ablation.py --seeds 0 1 2             # all seeds in this process
  python benchmarks/ammkd_ablation.py --seeds 1 --no-merge &    # one seed per process (e.g. on a GPU) ...
  python benchmarks/ammkd_ablation.py --merge-only              # ... then merge the per-seed files
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from kdmobile.config import AMMKDConfig, load_config
from kdmobile.data import shared_data_dir
from kdmobile.table import format_table
from kdmobile.train.ammkd import run_ammkd

RESULTS = Path(__file__).parent / "results"
TEACHERS = ["kd-vit-s", "kd-rn-s"]
VARIANTS = [("no KD", "none"), ("KD kd-vit-s only", "single:kd-vit-s"), ("KD kd-rn-s only", "single:kd-rn-s"),
            ("KD equal weights", "equal"), ("KD adaptive (AE-KD)", "adaptive")]


def run_seed(seed: int, args: argparse.Namespace, teacher_files: list[str]) -> dict:
    """The five students of one seed (training the shared teachers first if `teacher_files` is empty)."""
    base = {"data.spec": f"cifar10:{args.data}", "data.val_frac": 0.0, "data.test_frac": 0.2,
            "data.max_train": args.max_train, "data.max_test": args.max_test, "data.augment": "crop-flip", "data.split_seed": 0,
            "seed": seed, "out": args.runs, "teacher_train.epochs": args.teacher_epochs,
            "teacher_train.batch_size": args.batch_size, "train.batch_size": args.batch_size,
            "train.epochs": args.epochs, "train.device": args.device, "teacher_train.device": args.device,
            "teacher_train.lr": args.teacher_lr}
    sets = list(args.set)
    results: dict = {"seed": seed, "students": {}}
    order = [VARIANTS[-1]] + VARIANTS[:-1]  # adaptive first: without teacher files it trains them
    for label, weighting in order:
        over = {**base, "name": f"s{seed}-{weighting.replace(':', '-')}", "weighting": weighting}
        if teacher_files:
            over.update({"teachers": teacher_files, "teacher_train.epochs": 0})
        cfg = load_config(AMMKDConfig, None, over, sets)
        started = time.perf_counter()
        run, metrics = run_ammkd(cfg, progress=args.progress)
        print(f"seed {seed} {label}: top-1 {metrics['models']['student']['top1']:.2f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        if not teacher_files:
            teacher_files.extend(str(run / "teachers" / f"{t}.safetensors") for t in TEACHERS)
        results.setdefault("teachers", {k: v for k, v in metrics["models"].items() if v["role"] == "teacher"})
        results["students"][label] = metrics["models"]["student"]
        results["split_sizes"] = metrics["split_sizes"]
    return results


def merge(files: list[Path], args: argparse.Namespace) -> dict:
    """Aggregate per-seed results into mean +- std tables (JSON and Markdown)."""
    seeds = [json.loads(f.read_text()) for f in files]
    rows, table = [], []
    names = [f"teacher:{t}" for t in TEACHERS] + [label for label, _ in VARIANTS]
    for name in names:
        models = [s["teachers"][name] if name.startswith("teacher:") else s["students"][name] for s in seeds]
        top1 = np.array([m["top1"] for m in models])
        row = {"model": name, "top1_mean": float(top1.mean()), "top1_std": float(top1.std(ddof=1)) if len(top1) > 1
               else 0.0, "top1_per_seed": top1.tolist(), "params": models[0]["params"],
               "image_params": models[0]["image_params"], "mflops": models[0]["flops"] / 1e6}
        rows.append(row)
        table.append([name, f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f}", row["params"], row["image_params"],
                      row["mflops"]])
    out = {"benchmark": "ammkd_ablation", "dataset": "CIFAR-10 test split (../shared/data/cifar10), "
           f"{seeds[0]['split_sizes']['train']} train / {seeds[0]['split_sizes']['test']} test",
           "seeds": [s["seed"] for s in seeds], "settings": seeds[0].get("settings", {}),
           "device": seeds[0].get("device"), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ammkd_ablation.json").write_text(json.dumps(out, indent=2) + "\n")
    md = format_table(["model", "top-1 % (mean ± std)", "params", "image params", "MFLOPs/img"], table,
                      markdown=True)
    (RESULTS / "ammkd_ablation.md").write_text(
        f"# AMMKD ablation on CIFAR-10\n\n{out['dataset']}; seeds {out['seeds']}; device {out['device']}; "
        f"settings {json.dumps(out['settings'])}.\n\n{md}\n")
    print(md)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = shared_data_dir()
    p.add_argument("--data", default=str(default / "cifar10" / "cifar10_test.npz") if default else None,
                   help="CIFAR-10 npz (default: $KDMOBILE_SHARED_DATA or ../shared/data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--teacher-lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-train", type=int, default=8000)
    p.add_argument("--max-test", type=int, default=2000)
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher-files", nargs=2, help="reuse these two trained teacher files instead of training")
    p.add_argument("--runs", default="runs/ablation", help="where the per-variant run directories go")
    p.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--no-merge", action="store_true", help="only write the per-seed file(s)")
    p.add_argument("--merge-only", action="store_true", help="merge existing per-seed files")
    args = p.parse_args()
    if not args.merge_only:
        if not args.data or not Path(args.data).is_file():
            print("ammkd_ablation: CIFAR-10 npz not found; set --data or KDMOBILE_SHARED_DATA", file=sys.stderr)
            return 2
        import torch

        teacher_files = list(args.teacher_files or [])
        for seed in args.seeds:
            result = run_seed(seed, args, teacher_files)
            result["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" \
                else f"CPU ({platform.processor() or platform.machine()})"
            result["settings"] = {k: getattr(args, k) for k in ("teacher_epochs", "teacher_lr", "epochs", "batch_size")}
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"ammkd_ablation_seed{seed}.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_merge:
        merge(sorted(RESULTS.glob("ammkd_ablation_seed*.json")), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
