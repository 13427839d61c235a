"""224 px end to end on an image folder, as a user runs it: train -> export every target -> bench against ViT-B/32.

The image folder is written from the CIFAR-10 split in ../shared/data (one subfolder per class, PNG; the photos are
32 px, so at 224 px this times and sizes the pipeline, it does not claim photo accuracy). The teachers are the CIFAR-10
ablation's pair (trained at 32 px; they see each view resized to their size). Each step runs the real CLI in its own
process; its wall time and peak resident memory are recorded with the student's train time per epoch at 224 px, in
results/e2e_224.json.

  python benchmarks/e2e_224.py --images 1000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from resumable import cpu_name
from student_zoo import teacher_files

from kdmobile.data import shared_data_dir
from kdmobile.fileio import write_json
from kdmobile.rundir import epoch_seconds

RESULTS = Path(__file__).parent / "results"


def write_folder(npz: Path, out: Path, n: int) -> Path:
    """n images of the CIFAR-10 file (a seeded random choice: the file is sorted by class) as OUT/<class>/<i>.png;
    skipped when already there."""
    from PIL import Image

    if out.is_dir() and sum(1 for _ in out.rglob("*.png")) == n:
        return out
    with np.load(npz, allow_pickle=False) as d:
        pick = np.sort(np.random.default_rng(0).permutation(len(d["labels"]))[:n])
        images, labels, classes = d["images"][pick], d["labels"][pick], [str(c) for c in d["classes"]]
    for i, (img, y) in zip(pick, zip(images, labels)):
        folder = out / classes[int(y)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    return out


def step(name: str, argv: list[str], log: Path) -> dict[str, Any]:
    """Run one kdmobile command; wall seconds, the child's peak RSS and exit code."""
    started = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n$ kdmobile {' '.join(argv)}\n")
        f.flush()
        child = subprocess.Popen([sys.executable, "-m", "kdmobile.cli", *argv], stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        child.returncode = rc = os.waitstatus_to_exitcode(status)
    out = {"step": name, "argv": argv, "exit": rc, "seconds": round(time.perf_counter() - started, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    print(f"{name}: exit {rc}, {out['seconds']:.0f} s, peak RSS {out['peak_rss_mb']} MB", flush=True)
    if rc != 0:
        raise SystemExit(f"e2e_224: {name} failed (exit {rc}); see {log}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = shared_data_dir()
    p.add_argument("--data-root", default=str(root) if root else None)
    p.add_argument("--teachers-from", default=str(RESULTS / "ammkd_ablation_cifar10_records.json"))
    p.add_argument("--teachers", help="comma list of teacher files instead of the ablation's pair")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--work", default="runs/e2e224")
    args = p.parse_args()
    if not args.data_root:
        print("e2e_224: shared data not found; set --data-root or KDMOBILE_SHARED_DATA", file=sys.stderr)
        return 2
    teachers = args.teachers.split(",") if args.teachers else teacher_files(args.teachers_from)
    missing = [t for t in teachers if not Path(t).is_file()]
    if missing:
        print(f"e2e_224: no such teacher file: {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = write_folder(Path(args.data_root) / "cifar10" / "cifar10_test.npz", work / "images", args.images)
    log, run = work / "log.txt", work / "runs" / "e2e-224"
    load = os.getloadavg()[0]
    steps = [
        step("train", ["train", "ammkd", "--data", f"imagefolder:{folder}", "--image-size", "224", "--teachers",
                       ",".join(teachers), "--teacher-epochs", "0", "--epochs", str(args.epochs), "--set",
                       f"data.views={args.epochs}", "--out", str(run.parent), "--name", run.name, "--no-progress"],
             log),
        step("export", ["export", str(run), "--target", "all", "--precision", "fp32,int8", "--out",
                        str(work / "bundles")], log),
        step("bench", ["bench", str(run), "--reference", "ViT-B-32,RN50", "--runs", "50", "--out",
                       str(work / "bench"), "--no-progress"], log),
    ]
    epochs = {s: epoch_seconds(run, s) for s in ("student_nokd", "student")}
    bench = json.loads((work / "bench" / "report.json").read_text())
    out = {"benchmark": "e2e_224", "host": cpu_name(), "load_average_before": load, "images": args.images,
           "teachers": teachers, "load_average_after": os.getloadavg()[0],
           "data": "imagefolder written from ../shared/data/cifar10 (32 px PNGs, resized to 224 px)",
           "steps": steps, "train_s_per_epoch_224px": {k: v for k, v in epochs.items() if v},
           "threads": os.environ.get("OMP_NUM_THREADS", "torch default"),
           "bench_rows": [{k: r.get(k) for k in ("model", "role", "backend", "precision", "p50_ms", "metric",
                                                   "metric_name", "speedup_vs_reference", "size_bytes",
                                                   "peak_rss_mb")} for r in bench["rows"]]}
    write_json(RESULTS / "e2e_224.json", out)
    print(json.dumps(out["train_s_per_epoch_224px"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
