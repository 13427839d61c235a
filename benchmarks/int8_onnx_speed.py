"""Is int8 ONNX faster than fp32 on this CPU? Times the student as fp32, fp16 and every int8 format side by side.

One process, onnxruntime through kdmobile's own OnnxBackend (batch 1, one thread), a warm-up, then interleaved
rounds (the order rotates every round) so that drift in the machine's speed hits every format alike. Prints one
table per image size with the host's ISA beside it and the format `--int8-format auto` keeps here (the fastest int8
format within cosine 0.99 of fp32, the rule export applies to its own shorter measurement), and writes
benchmarks/results/int8_onnx_speed.{json,md}.

    python benchmarks/int8_onnx_speed.py                      # default AMMKD student, random weights, 32 px
    python benchmarks/int8_onnx_speed.py runs/demo            # a trained run's student and calibration images
    python benchmarks/int8_onnx_speed.py --image-sizes 32,64,128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.export.onnx import convert_onnx
from kdmobile.export.int8_choice import CANDIDATE_MIN_COSINE
from kdmobile.export.quantize import quiet
from kdmobile.runtime.backends import OnnxBackend
from kdmobile.runtime.measure import host_info, latency_stats, time_callable
from kdmobile.models.profile import randomise_batchnorm
from kdmobile.table import format_table

FORMATS = ("fp32", "fp16", "w8a32", "u8s8", "s8s8", "dynamic")
RESULTS = Path(__file__).resolve().parent / "results"


def default_student(image_size: int) -> tuple[Any, np.ndarray]:
    """The default AMMKD student architecture with random weights, and normalised random calibration images."""
    import torch

    from kdmobile.data.transforms import normalise
    from kdmobile.models import create_model

    torch.manual_seed(0)
    model = create_model("ammkd_student", image_size=image_size).eval()
    randomise_batchnorm(model)
    images = np.random.default_rng(0).integers(0, 256, (64, image_size, image_size, 3), dtype=np.uint8)
    return model, normalise(images)


def run_student(run_dir: str, image_size: int | None) -> tuple[Any, np.ndarray]:
    """A trained run's student and its calibration images (resized when another size is asked for)."""
    from kdmobile.data.transforms import normalise, resize_images
    from kdmobile.export.run import load_run

    run = load_run(run_dir)
    if run.head != "retrieval":
        raise SystemExit(f"{run_dir}: this benchmark times retrieval students (got a {run.task} run)")
    images = run.need("images_calib")[:64]
    if image_size is not None:
        images = resize_images(images, image_size)
    return run.model, normalise(images, tuple(run.card.image_mean), tuple(run.card.image_std))


def export_all(model: Any, calibration: np.ndarray, workdir: Path, formats: list[str]) -> dict[str, Path]:
    """One .onnx per format, through the exporter's own convert_onnx."""
    import torch

    example = torch.from_numpy(calibration[:1])
    paths = {}
    for fmt in formats:
        precision = fmt if fmt in ("fp32", "fp16") else "int8"
        path = workdir / f"{fmt}.onnx"
        with quiet():
            convert_onnx(model, example, path, precision, calibration, fmt if precision == "int8" else "auto",
                         input_name="image", output_name="embedding")
        paths[fmt] = path
    return paths


def time_formats(paths: dict[str, Path], x: np.ndarray, runs: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Interleaved timing: every round runs each format `runs // rounds` times, in a rotated order."""
    backends = {k: OnnxBackend(p, threads=1) for k, p in paths.items()}
    feeds = {k: {"image": x} for k in backends}
    for k, b in backends.items():
        time_callable(lambda b=b, f=feeds[k]: b.run(f), warmup=warmup, runs=0)
    samples: dict[str, list[float]] = {k: [] for k in backends}
    keys = list(backends)
    per_round = -(-runs // rounds)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            b, f = backends[k], feeds[k]
            samples[k] += time_callable(lambda b=b, f=f: b.run(f), warmup=5, runs=per_round)
    return samples


def cosine_vs_fp32(paths: dict[str, Path], calibration: np.ndarray) -> dict[str, float]:
    """Mean cosine similarity of each format's embeddings with fp32's, on the calibration images."""
    outs = {k: OnnxBackend(p, threads=1).run({"image": calibration})[0] for k, p in paths.items()}
    ref = outs["fp32"]
    return {k: float(np.mean(np.sum(y * ref, 1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)))
            for k, y in outs.items()}


def bench_size(model: Any, calibration: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Export, time and summarise every format at one image size."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(model, calibration, Path(tmp), list(args.formats))
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        cos = cosine_vs_fp32(paths, calibration)
        samples = time_formats(paths, calibration[:1], args.runs, args.rounds, args.warmup)
    stats = {k: latency_stats(v) for k, v in samples.items()}
    base = stats["fp32"]["p50"]
    close = [k for k in paths if k not in ("fp32", "fp16") and cos[k] >= CANDIDATE_MIN_COSINE]
    auto = min(close, key=lambda k: stats[k]["p50"]) if close else None
    rows = {}
    for k in paths:
        rows[k] = {"p50_ms": stats[k]["p50"], "p90_ms": stats[k]["p90"], "mean_ms": stats[k]["mean"],
                   "runs": stats[k]["n"], "size_bytes": sizes[k], "speedup_vs_fp32": base / stats[k]["p50"],
                   "size_ratio_vs_fp32": sizes["fp32"] / sizes[k], "cosine_vs_fp32": cos[k], "auto": k == auto}
    int8 = {k: v for k, v in rows.items() if k not in ("fp32", "fp16")}
    fastest = min(int8, key=lambda k: int8[k]["p50_ms"]) if int8 else None
    return {"image_size": int(calibration.shape[-1]), "formats": rows, "fastest_int8": fastest,
            "auto": auto, "auto_not_slower_than_fp32": bool(auto in rows and rows[auto]["p50_ms"] <= base * 1.02)}


def render(result: dict[str, Any], markdown: bool) -> str:
    """One table per image size."""
    headers = ["format", "p50 ms", "p90 ms", "size KB", "speed-up vs fp32", "size ratio", "cosine vs fp32", "auto"]
    rows = [[k, f"{v['p50_ms']:.3f}", f"{v['p90_ms']:.3f}", f"{v['size_bytes'] / 1024:.0f}",
             f"{v['speedup_vs_fp32']:.2f}x", f"{v['size_ratio_vs_fp32']:.2f}x", f"{v['cosine_vs_fp32']:.5f}",
             "<- auto" if v["auto"] else ""] for k, v in result["formats"].items()]
    return format_table(headers, rows, markdown=markdown)


def isa_line(host: dict[str, Any]) -> str:
    flags = ", ".join(k for k, v in host["isa"].items() if v) or "none of " + ", ".join(host["isa"])
    return (f"host: {host['cpu']} ({host['machine']}), ISA: {flags}; onnxruntime {host['onnxruntime']}; "
            f"batch 1, 1 thread")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", help="a retrieval run directory (default: the default student, random weights)")
    p.add_argument("--image-sizes", default=None, help="comma list of input sizes (default: 32, or the run's)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma list from {', '.join(FORMATS)}")
    p.add_argument("--runs", type=int, default=360, help="timed runs per format (default 360)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds the runs are split into (default 6)")
    p.add_argument("--warmup", type=int, default=50, help="untimed warm-up runs per format (default 50)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where int8_onnx_speed.{json,md} go")
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if "fp32" not in args.formats:
        args.formats.insert(0, "fp32")
    sizes = [int(s) for s in args.image_sizes.split(",")] if args.image_sizes else [None]
    host = host_info()
    print(isa_line(host))
    results = []
    for size in sizes:
        if args.run:
            model, calib = run_student(args.run, size)
        else:
            model, calib = default_student(size or 32)
        res = bench_size(model, calib, args)
        results.append(res)
        print(f"\nimage size {res['image_size']} px, {args.runs} runs per format in {args.rounds} interleaved rounds")
        print(render(res, markdown=False))
        print(f"fastest int8 format here: {res['fastest_int8']}; auto keeps {res['auto']}, "
              f"{'is' if res['auto_not_slower_than_fp32'] else 'is NOT'} at least as fast as fp32 (2% tolerance)")
    payload = {"benchmark": "int8_onnx_speed", "model": args.run or "ammkd_student (default config, random weights, "
               "BatchNorm randomised)", "host": host,
               "settings": {"batch": 1, "threads": 1, "runs": args.runs, "rounds": args.rounds,
                            "warmup": args.warmup, "formats": args.formats}, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_onnx_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [f"# int8 ONNX speed\n\n{isa_line(host)}\n\n`--int8-format auto` keeps the fastest int8 format within cosine "
          f"{CANDIDATE_MIN_COSINE} of fp32, measured on the export host\n"]
    for res in results:
        md.append(f"\n## {res['image_size']} px\n\n{render(res, markdown=True)}\n\nfastest int8: "
                  f"{res['fastest_int8']}; auto keeps {res['auto']}; not slower than fp32: "
                  f"{res['auto_not_slower_than_fp32']}\n")
    (args.out / "int8_onnx_speed.md").write_text("".join(md))
    print(f"\nwrote {args.out / 'int8_onnx_speed.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
