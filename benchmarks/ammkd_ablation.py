"""AMMKD ablation on real data from ../shared/data: CIFAR-10 (top-1) or the Flickr8k caption subset (Recall@K).

One fixed data split (split seed 0). The two teachers are trained ONCE for that split (a teacher-only run) and every
student of every seed distils from those same files, so the seeds measure the students' variance (initialisation,
data order, augmentation). Variants: each teacher; no KD; KD from each single teacher; equal; adaptive (AE-KD);
confidence (CA-MKD); reliable (min-norm x confidence); and the best weighting with the CLIP-KD feature terms.
`--search` adds the settings tried around the KD loss (KL weight, temperature; confidence weighting, the first two
seeds), each against the no-KD student of its seed.

Resumable: every finished variant x seed is recorded at once in results/ammkd_ablation_<dataset>_records.json and
skipped when the script is run again, so a long run can be interrupted and continued.

  python benchmarks/ammkd_ablation.py --dataset cifar10 --seeds 0 1 2 3 4
  python benchmarks/ammkd_ablation.py --dataset flickr8k --seeds 0 1 2 --teacher-epochs 60
  python benchmarks/ammkd_ablation.py --dataset cifar10 --report-only      # tables from the records so far
  python benchmarks/ammkd_ablation.py --dataset cifar10 --search --seeds 0 1 --variants none
  python benchmarks/ammkd_ablation.py --dataset digits --teachers-from runs/demo-ammkd --seeds 0 1 2
  python benchmarks/ammkd_ablation.py --dataset cifar10 --device cuda --tag gpu --jobs 12 --teacher-epochs 100

--jobs N runs N trainings at once as separate processes (each teacher, then each variant x seed), which is how one
GPU is kept busy with models this small; every process writes its own shard file and the parent merges it into the
records, so no two processes write one file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from resumable import Records, cpu_name, device_name, run_children, without_set_keys

from kdmobile.config import AMMKDConfig, load_config
from kdmobile.data import shared_data_dir
from kdmobile.fileio import write_json
from kdmobile.experiments import SEARCH, SEARCH_WEIGHTING, search_rows, search_table
from kdmobile.rundir import read_metrics, teacher_file
from kdmobile.table import format_table
from kdmobile.ammkd.train import run_ammkd

RESULTS = Path(__file__).parent / "results"
TEACHERS = ["kd-vit-s", "kd-rn-s"]
WEIGHTINGS = ["none", *(f"single:{t}" for t in TEACHERS), "equal", "adaptive", "confidence", "reliable"]
FEATURE_TERMS = {"fd": 1.0, "icl": 1.0}
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"spec": "digits", "max_train": None, "max_test": None, "metrics": ["top1"], "image_size": 32,
               "val_frac": 0.1},  # the demo's split, so `--teachers-from runs/demo-ammkd` reuses its teachers
    "cifar10": {"spec": "cifar10:{root}/cifar10/cifar10_test.npz", "max_train": 8000, "max_test": 2000,
                "metrics": ["top1"], "image_size": 32},
    "flickr8k": {"spec": "captions:{root}/flickr8k/flickr8k_1000_64.npz", "max_train": None, "max_test": 200,
                 "metrics": ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"],
                 "image_size": 64},
}


def _base(args: argparse.Namespace, ds: dict[str, Any], seed: int) -> dict[str, Any]:
    """Config overrides every run of this ablation shares."""
    return {"data.spec": ds["spec"].format(root=args.data_root), "data.val_frac": ds.get("val_frac", 0.0),
            "data.test_frac": 0.2,
            "data.max_train": ds["max_train"], "data.max_test": ds["max_test"], "data.split_seed": 0,
            "data.image_size": ds["image_size"], "seed": seed, "out": args.runs, "baseline": False,
            "health.drop_weak": False, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
            "train.device": args.device, "teacher_train.device": args.device,
            "teacher_train.epochs": args.teacher_epochs, "teacher_train.batch_size": args.teacher_batch_size,
            "data.views": args.views, "data.view_cache": str(_views_file(args))}


def _views_file(args: argparse.Namespace) -> Path:
    """The cached views + teacher embeddings every student of this ablation shares (rebuilt if the teachers change)."""
    return Path(args.runs) / f"{args.dataset}-views-{args.views}"


def train_teachers(args: argparse.Namespace, ds: dict[str, Any], records: Records) -> list[str]:
    """Train the teacher pair once for the fixed split (or reuse it); returns the teacher files."""
    rec = records.get("teachers")
    if args.teachers_from and rec is None:
        run = Path(args.teachers_from)
        source = read_metrics(run)  # size- and depth-limited, one-line error
        if source.get("dataset") != ds["spec"].format(root=args.data_root):
            raise SystemExit(f"--teachers-from {run}: trained on {source.get('dataset')}, not this dataset")
        rec = {"files": [str(teacher_file(run, t)) for t in TEACHERS], "source": str(run),
               "models": {k: v for k, v in source["models"].items() if v["role"] == "teacher"}}
        records.put("teachers", rec)
    if rec is None or not all(Path(f).is_file() for f in rec["files"]):
        stale = [k for k in records.data["runs"] if k != "teachers"]
        if stale:  # students of other teachers must not be mixed with the new pair in one table
            print(f"teacher files missing: retraining them, and dropping {len(stale)} student records made with "
                  "the old ones", flush=True)
            records.data["runs"] = {}
        started = time.perf_counter()
        parts = [out for _, out in _children(args, records, [["--only-teacher", t] for t in TEACHERS])]
        if not all(parts):
            raise SystemExit("ammkd_ablation: a teacher failed to train (see above)")
        rec = {"files": [], "models": {}, "seconds": round(time.perf_counter() - started, 1), "teacher_epochs": {}}
        for part in parts:
            for key in ("files",):
                rec[key] += part[key]
            for key in ("models", "teacher_epochs"):
                rec[key].update(part[key])
        records.put("teachers", rec)
    print("teachers (trained once for this split): " + ", ".join(
        f"{k} {v[ds['metrics'][0]]:.2f}" for k, v in rec["models"].items()), flush=True)
    return rec["files"]


def train_one_teacher(args: argparse.Namespace, ds: dict[str, Any], name: str) -> dict[str, Any]:
    """One teacher-only run (its own run directory, so the two teachers can train at once)."""
    over = {**_base(args, ds, 0), "name": f"{args.dataset}-teacher-{name}", "weighting": "none",
            "train.epochs": 0, "teachers": [name], "data.views": 0}
    cfg = load_config(AMMKDConfig, None, without_set_keys(over, args.set), args.set)
    run, metrics = run_ammkd(cfg, resume=(Path(args.runs) / over["name"]).is_dir(), progress=args.progress)
    return {"files": [str(teacher_file(run, name))], "teacher_epochs": {name: cfg.teacher_epochs(name)},
            "models": {k: v for k, v in metrics["models"].items() if v["role"] == "teacher"}}


def _children(args: argparse.Namespace, records: Records, jobs: list[list[str]]) -> Any:
    """Each job in its own process (this script again), --jobs at a time."""
    common = [*_passthrough(args), "--records", str(records.path)]
    return run_children(__file__, common, records, jobs, args.jobs, args.threads)


def _passthrough(args: argparse.Namespace) -> list[str]:
    """The settings every child process must share with the parent."""
    argv = ["--dataset", args.dataset, "--teacher-epochs", str(args.teacher_epochs), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--teacher-batch-size", str(args.teacher_batch_size),
            "--device", args.device, "--runs", args.runs, "--views", str(args.views)]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    for item in args.set:
        argv += ["--set", item]
    return argv + (["--progress"] if args.progress else [])


def best_weighting(records: Records, ds: dict[str, Any], seeds: list[int]) -> str | None:
    """The KD weighting with the best mean over the seeds finished by every candidate (None until one exists)."""
    metric = ds["metrics"][0]
    means = {}
    for w in WEIGHTINGS[1:]:
        vals = [r["student"][metric] for s in seeds if (r := records.get(f"{w}/{s}"))]
        if vals:
            means[w] = float(np.mean(vals))
    return max(means, key=means.get) if means else None


def student_run(args: argparse.Namespace, ds: dict[str, Any], files: list[str], variant: str, seed: int,
                weighting: str, terms: dict[str, float] | None = None) -> dict[str, Any]:
    """Train one student; returns its record."""
    over = {**_base(args, ds, seed), "name": f"{args.dataset}-{variant.replace(':', '-')}-s{seed}",
            "weighting": weighting, "teachers": files, "teacher_train.epochs": 0}
    if variant.startswith("search:"):
        over.update(SEARCH[variant[len("search:"):]])
    if terms:
        over["loss.terms"] = terms  # merged onto the default terms by load_config
    cfg = load_config(AMMKDConfig, None, without_set_keys(over, args.set), args.set)
    started = time.perf_counter()
    _, metrics = run_ammkd(cfg, progress=args.progress)
    student = metrics["models"]["student"]
    print(f"{variant}/{seed}: {ds['metrics'][0]} {student[ds['metrics'][0]]:.2f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return {"student": student, "seconds": round(time.perf_counter() - started, 1), "weighting": weighting,
            "terms": metrics["loss_terms"]}


def run_variants(args: argparse.Namespace, records: Records, todo: list[tuple[str, int, str]]) -> None:
    """Train the (variant, seed, weighting) students not yet recorded, --jobs at a time, recording each at once."""
    jobs = [["--only-student", v, str(s), w] for v, s, w in todo if not records.get(f"{v}/{s}")]
    failed = []
    # The first student builds the shared view cache alone; the others then load it instead of each building it.
    batches = [jobs[:1], jobs[1:]] if args.views and not (_views_file(args) / "cache.json").is_file() else [jobs]
    for batch in batches:
        for job, out in _children(args, records, batch):
            if out:
                records.put(f"{job[1]}/{job[2]}", out)
            else:
                failed.append(f"{job[1]}/{job[2]}")
    if failed:
        raise SystemExit(f"ammkd_ablation: {len(failed)} runs failed ({', '.join(failed)}); the rest are recorded")


def report(args: argparse.Namespace, ds: dict[str, Any], records: Records, stem: str) -> dict[str, Any]:
    """ammkd_ablation_<dataset>.json and .md from the records (mean +- std over the seeds recorded so far)."""
    rows, table = [], []
    teachers = (records.get("teachers") or {}).get("models", {})
    variants = [*(f"teacher:{t}" for t in TEACHERS), *WEIGHTINGS,
                *sorted({k.split("/")[0] for k in records.data["runs"] if k.startswith("features:")})]
    for variant in variants:
        for metric in ds["metrics"]:
            if variant.startswith("teacher:"):
                per_seed = [teachers[variant][metric]] if variant in teachers else []
                seeds: list[int] = [0] if per_seed else []
            else:
                found = sorted((int(k.split("/")[1]), r) for k, r in records.data["runs"].items()
                               if k.split("/")[0] == variant)
                seeds, per_seed = [s for s, _ in found], [r["student"][metric] for _, r in found]
            if not per_seed:
                continue
            arr = np.asarray(per_seed, dtype=float)
            row = {"variant": variant, "metric": metric, "seeds": seeds, "per_seed": arr.tolist(),
                   "mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}
            rows.append(row)
            table.append([variant, metric, f"{row['mean']:.2f} ± {row['std']:.2f}", len(arr)])
    source = (records.get("teachers") or {}).get("source")
    made = f"teachers reused from {source}" if source else "teachers trained once for it"
    if args.note and args.note not in records.data.setdefault("notes", []):
        records.data["notes"].append(args.note)
        write_json(records.path, records.data)
    views = (f"; students distil offline from {args.views} augmented views per training image drawn once for the "
             "split, with the teachers' embeddings of them computed once (each seed starts at another view; seeds vary "
             "initialisation, data order and view order)") if args.views else ""
    search = search_rows(records, ds["metrics"][0])
    out = {"benchmark": "ammkd_ablation", "dataset": args.dataset, "data": ds["spec"].format(root="../shared/data"),
           "split": f"fixed (split seed 0); {made}; students over the seeds listed per row{views}",
           "notes": records.data.get("notes", []),
           "settings": {k: getattr(args, k) for k in ("epochs", "teacher_epochs", "batch_size", "teacher_batch_size",
                                                       "views")}
           | {"image_size": ds["image_size"], "overrides": args.set},
           "host": f"{platform.machine()} {cpu_name()}", "device": records.data.get("device", args.device),
           "rows": rows, **({"search": search} if search else {})}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{stem}.json", out)
    md = format_table(["variant", "metric", "mean ± std", "seeds"], table, markdown=True)
    (RESULTS / f"{stem}.md").write_text(
        f"# AMMKD ablation: {args.dataset}\n\n{out['data']}; {out['split']}. Host: {out['host']}, device "
        f"{out['device']}. Settings: {json.dumps(out['settings'])}.\n\n"
        + "".join(f"Note: {n}\n\n" for n in out["notes"]) + f"{md}\n" + search_table(search))
    print(md)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = shared_data_dir()
    p.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    p.add_argument("--data-root", default=str(root) if root else None,
                   help="folder holding cifar10/ and flickr8k/ (default: $KDMOBILE_SHARED_DATA or ../shared/data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", help="only these (e.g. none adaptive features); default: all")
    p.add_argument("--teachers-from", help="reuse this run's teachers (its split must be this script's: seed 0)")
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--epochs", type=int, default=15, help="student epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--teacher-batch-size", type=int, default=64)
    p.add_argument("--views", type=int, default=15,
                   help="offline KD: augmented views per training image drawn once, with the teachers' embeddings of "
                        "them, shared by every student (0: fresh views and live teachers every step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", default="runs/ablation", help="where the run directories go")
    p.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE (all runs)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--search", action="store_true", help="also the KL weight / temperature settings in SEARCH "
                   f"({SEARCH_WEIGHTING} weighting, the first two seeds)")
    p.add_argument("--report-only", action="store_true", help="write the tables from the records and stop")
    p.add_argument("--note", help="a sentence kept with the records and printed above the table")
    p.add_argument("--tag", help="a name added to the result files (e.g. gpu: ammkd_ablation_cifar10_gpu.json)")
    p.add_argument("--records", help="the records file (default: results/ammkd_ablation_<dataset>[_<tag>]_records"
                   ".json)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, each in its own process (default 1)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each training process")
    p.add_argument("--only-teacher", help=argparse.SUPPRESS)  # child process: train this teacher
    p.add_argument("--only-student", nargs=3, help=argparse.SUPPRESS)  # child process: VARIANT SEED WEIGHTING
    p.add_argument("--shard", help=argparse.SUPPRESS)  # child process: where its result goes
    args = p.parse_args()
    ds = DATASETS[args.dataset]
    stem = f"ammkd_ablation_{args.dataset}" + (f"_{args.tag}" if args.tag else "")
    records = Records(Path(args.records) if args.records else RESULTS / f"{stem}_records.json")
    if args.only_teacher or args.only_student:
        return child(args, ds, records)
    if not args.report_only:
        data_file = ds["spec"].format(root=args.data_root).split(":", 1)[-1] if ":" in ds["spec"] else None
        if data_file is not None and (not args.data_root or not Path(data_file).is_file()):
            print("ammkd_ablation: shared data not found; set --data-root or KDMOBILE_SHARED_DATA", file=sys.stderr)
            return 2
        records.data["device"] = device_name(args.device)
        train_teachers(args, ds, records)
        wanted = set(args.variants or [*WEIGHTINGS, "features"])
        run_variants(args, records, [(w, s, w) for s in args.seeds for w in WEIGHTINGS if w in wanted])
        best = best_weighting(records, ds, args.seeds)
        if "features" in wanted and best is not None:
            run_variants(args, records, [(f"features:{best}", s, best) for s in args.seeds])
        if args.search:
            run_variants(args, records, [(f"search:{n}", s, SEARCH_WEIGHTING) for s in args.seeds[:2] for n in SEARCH])
    report(args, ds, records, stem)
    return 0


def child(args: argparse.Namespace, ds: dict[str, Any], records: Records) -> int:
    """A training process started by the parent: one teacher or one student, written to --shard."""
    if args.only_teacher:
        out = train_one_teacher(args, ds, args.only_teacher)
    else:
        variant, seed, weighting = args.only_student
        terms = FEATURE_TERMS if variant.startswith("features:") else None
        out = student_run(args, ds, records.get("teachers")["files"], variant, int(seed), weighting, terms)
    write_json(args.shard, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
