"""Photo folders larger than RAM: memory must not grow with the folder, and decoding must keep up with timm's loader.

1. A synthetic folder of 100,000 JPEGs (10 classes, sizes around 256x192 with varied aspect ratios, generated once
   into a cache) and a 10,000-image subset of it (hard links).
2. The same short training run on each, in a child process: kdmobile's loader (scan -> split -> timm transforms in
   DataLoader workers, default worker count) feeding the default student at 224 px for a fixed number of steps. The
   peak memory of the whole process tree (main + workers, summed PSS, so shared library pages count once) and the
   main process's peak RSS are recorded.
3. Throughput at 224 px of kdmobile's training loader against timm's own (`create_dataset` + `create_loader`, the
   same crop/flip transform and worker count), interleaved in one process, with the load average.

    python benchmarks/data_scale.py                 # generates the folder once (~1.2 GB, a few minutes here)
    python benchmarks/data_scale.py --images 20000  # a smaller folder for a quick look

Results: benchmarks/results/data_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from resumable import cpu_name

from kdmobile.fileio import cache_dir, write_json

RESULTS = Path(__file__).parent / "results"
CLASSES = [f"class{i:02d}" for i in range(10)]


# ------------------------------------------------------------------ the synthetic folder
def _make_chunk(args: tuple[Path, int, int]) -> int:
    """Write images [start, stop) of the folder: smooth gradients and a few shapes, so JPEGs are photo-sized."""
    from PIL import Image, ImageDraw

    root, start, stop = args
    for i in range(start, stop):
        path = root / CLASSES[i % len(CLASSES)] / f"{i:07d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        w, h = int(rng.integers(192, 321)), int(rng.integers(144, 257))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.6, 0.6, (3, 2))
        img = np.stack([base[c] + slope[c, 0] * xx + slope[c, 1] * yy for c in range(3)], -1)
        img += rng.normal(0, 6, img.shape)
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            draw.ellipse((x0, y0, x0 + int(rng.integers(10, 80)), y0 + int(rng.integers(10, 80))),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        tmp = path.with_suffix(".tmp")
        im.save(tmp, "JPEG", quality=85)
        os.replace(tmp, path)  # a killed generator leaves no half-written photo
    return stop - start


def make_folder(root: Path, n: int) -> Path:
    """root/CLASS/NNNNNNN.jpg for n images (resumable: existing files are kept)."""
    from tqdm import tqdm

    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    chunks = [(root, s, min(s + 1000, n)) for s in range(0, n, 1000)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for done in tqdm(pool.map(_make_chunk, chunks), total=len(chunks), desc=f"photos in {root.name}"):
            pass
    return root


def make_subset(full: Path, sub: Path, n: int) -> Path:
    """The first n images of `full` as hard links under `sub` (same files, no extra disk)."""
    for i in range(n):
        src = full / CLASSES[i % len(CLASSES)] / f"{i:07d}.jpg"
        dst = sub / src.parent.name / src.name
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    return sub


# ------------------------------------------------------------------ one short training run (child process)
class TreeMemory:
    """Samples the summed PSS of this process and its children (DataLoader workers) every 0.2 s; keeps the peak."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(0.2)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def short_run(folder: Path, steps: int, size: int, batch: int) -> dict[str, Any]:
    """Scan, split and train the default student for `steps` steps on the streaming loader (default workers)."""
    import resource

    import torch
    import torch.nn.functional as F

    from kdmobile.config import DEFAULT_STUDENT, TrainConfig
    from kdmobile.data import load_dataset, split_dataset
    from kdmobile.models import create_model
    from kdmobile.ammkd.evaluate import normalise
    from kdmobile.train.image_stream import FileImages, train_transform
    from kdmobile.train.loop import Trainer

    torch.manual_seed(0)
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        data = load_dataset(f"imagefolder:{folder}")
        train, _, _ = split_dataset(data, 0, 0.1, 0.2)
        scan_s = time.perf_counter() - t0
        student = create_model("ammkd_student", backbone=DEFAULT_STUDENT, embed_dim=128, teacher_dims=[256, 256],
                               image_size=size)
        vectors = [F.normalize(torch.randn(len(data.classes), 256), dim=-1)] * 2
        trainer = Trainer("student", student, TrainConfig(epochs=1, batch_size=batch), Path("/nonexistent"), None, 0,
                          progress=False)
        dataset = FileImages(train, torch.from_numpy(train.labels), train_transform(size, "strong"))
        loader = trainer._loader(dataset, 0)  # noqa: SLF001 - exactly the loader a training stage builds
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
        t1 = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            logits = student.scale() * student(normalise(x)) @ student.fuse_text(vectors).T
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i + 1 == steps:
                break
        train_s = time.perf_counter() - t1
        del loader
    return {"images": len(data), "train_images": len(train), "workers": trainer.workers(dataset),
            "scan_split_s": round(scan_s, 2), "steps": steps, "batch": batch, "s_per_step": round(train_s / steps, 3),
            "peak_tree_pss_mb": round(mem.peak_mb, 1),
            "peak_main_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "file_list_mb": round((train.files.nbytes + train.labels.nbytes) / 2**20, 2)}


# ------------------------------------------------------------------ loader throughput, kdmobile vs timm
def throughput(folder: Path, size: int, batch: int, batches: int, rounds: int) -> dict[str, Any]:
    """Images/s of kdmobile's training loader and timm's, same transform (crop + flip) and workers, interleaved."""
    import torch
    from timm.data import create_dataset, create_loader

    from kdmobile.data import load_dataset
    from kdmobile.train.image_stream import FileImages, default_workers, train_transform

    workers = default_workers()
    data = load_dataset(f"imagefolder:{folder}")
    ours = FileImages(data, torch.from_numpy(data.labels), train_transform(size, "crop-flip"))
    ours_strong = FileImages(data, torch.from_numpy(data.labels), train_transform(size, "strong"))
    timm_ds = create_dataset("", root=str(folder))
    timm_loader = create_loader(timm_ds, input_size=(3, size, size), batch_size=batch, is_training=True,
                                scale=(0.35, 1.0), hflip=0.5, color_jitter=0.0, interpolation="bilinear",
                                num_workers=workers, use_prefetcher=True, device=torch.device("cpu"),
                                persistent_workers=False)

    def ours_loader(ds: Any) -> Any:
        gen = torch.Generator().manual_seed(0)
        return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=torch.utils.data.RandomSampler(ds, generator=gen),
                                           num_workers=workers, drop_last=True)

    def rate(loader: Any) -> float:
        it = iter(loader)
        next(it)  # worker start-up is not throughput
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - t)

    # timm's loader as its train script uses it (the prefetcher normalises each batch to float in the main process)
    # and its inner DataLoader alone (uint8 batches, as kdmobile's are: the decode pipeline compared like for like)
    out: dict[str, list[float]] = {"kdmobile": [], "timm": [], "timm_inner": [], "kdmobile_strong": []}
    for _ in range(rounds):
        out["kdmobile"].append(rate(ours_loader(ours)))
        out["timm"].append(rate(timm_loader))
        out["timm_inner"].append(rate(timm_loader.loader))
        out["kdmobile_strong"].append(rate(ours_loader(ours_strong)))
    med = {k: float(np.median(v)) for k, v in out.items()}
    return {"workers": workers, "batch": batch, "batches": batches, "rounds": rounds,
            "images_per_s": {k: [round(x, 1) for x in v] for k, v in out.items()},
            "median_images_per_s": {k: round(v, 1) for k, v in med.items()},
            "kdmobile_vs_timm": round(med["kdmobile"] / med["timm"], 3),
            "kdmobile_vs_timm_inner": round(med["kdmobile"] / med["timm_inner"], 3)}


def _child(args: list[str]) -> dict[str, Any]:
    import json

    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"data_scale: child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--subset", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cache", type=Path, default=None, help="where the folder is generated (default: kdmobile's cache)")
    ap.add_argument("--child", choices=["run", "throughput"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "run":
        print(json.dumps(short_run(a.folder, a.steps, a.size, a.batch)))
        return 0
    if a.child == "throughput":
        print(json.dumps(throughput(a.folder, a.size, a.batch, batches=15, rounds=3)))
        return 0
    base = a.cache or cache_dir() / "data_scale"
    full = make_folder(base / f"photos{a.images}", a.images)
    sub = make_subset(full, base / f"photos{a.images}_first{a.subset}", a.subset)
    load_before = os.getloadavg()
    common = ["--size", str(a.size), "--steps", str(a.steps), "--batch", str(a.batch)]
    runs = {name: _child(["--child", "run", "--folder", str(folder), *common])
            for name, folder in ((f"{a.subset}", sub), (f"{a.images}", full))}
    speed = _child(["--child", "throughput", "--folder", str(full), *common])
    small, big = runs[str(a.subset)], runs[str(a.images)]
    result = {"benchmark": "data_scale", "host": cpu_name(), "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "image_size": a.size, "runs": runs,
              "throughput": speed,
              "memory_ratio_big_vs_small": round(big["peak_tree_pss_mb"] / small["peak_tree_pss_mb"], 3),
              "disk_mb": round(sum(f.stat().st_size for f in full.rglob("*.jpg")) / 2**20, 1)}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "data_scale.json", result)
    (RESULTS / "data_scale.md").write_text(render(result))
    print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    """The markdown table of a result."""
    lines = [f"# Photo folders larger than RAM ({r['host']})", "",
             f"load average before {r['load_average_before']}, after {r['load_average_after']}; "
             f"{r['image_size']} px; the folder takes {r['disk_mb']:,.0f} MB on disk", "",
             "| folder | images | workers | scan + split s | s/step | peak PSS, process tree | peak RSS, main | file list |",
             "|---|---|---|---|---|---|---|---|"]
    for name, x in r["runs"].items():
        lines.append(f"| {name} | {x['images']:,} | {x['workers']} | {x['scan_split_s']} | {x['s_per_step']} | "
                     f"{x['peak_tree_pss_mb']:,.0f} MB | {x['peak_main_rss_mb']:,.0f} MB | {x['file_list_mb']} MB |")
    t = r["throughput"]
    med = t["median_images_per_s"]
    lines += ["", f"Peak memory, big / small folder: {r['memory_ratio_big_vs_small']}x.", "",
              f"Training loader throughput ({t['workers']} workers, batch {t['batch']}, {t['batches']} batches x "
              f"{t['rounds']} interleaved rounds, median images/s): kdmobile {med['kdmobile']:,.0f}, timm "
              f"{med['timm']:,.0f} (same random-resized crop + flip; its prefetcher normalises to float in the main "
              f"process): **{t['kdmobile_vs_timm']}x**; timm's inner DataLoader alone (uint8 batches, like for like) "
              f"{med['timm_inner']:,.0f}: **{t['kdmobile_vs_timm_inner']}x**; kdmobile with its default `strong` "
              f"policy (+ TrivialAugmentWide) {med['kdmobile_strong']:,.0f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
