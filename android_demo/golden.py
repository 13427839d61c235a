"""Cross-language golden checks: the page (headless Chromium) and the Java core against `kdmobile predict`.

As a script, for the lead: check the page against `kdmobile predict` on a run's held-out images (retrieval
bundles) and against the Python forecast on the run's first held-out window (forecast bundles):
  python android_demo/golden.py runs/demo-ammkd bundles/demo-ammkd-onnx-fp32 bundles/demo-ammkd-onnx-int8
  python android_demo/golden.py RUN_SDKD bundles/NAME-onnx-fp32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from browser import run_page  # noqa: E402
from serve import DemoServer  # noqa: E402

TOL = 1e-4


def write_pngs(images: np.ndarray, out: Path, prefix: str = "heldout") -> list[Path]:
    """Save uint8 (N, H, W, 3) images as PNGs (lossless, no colour profile: every decoder reads the same pixels)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(out / f"{prefix}{i:02d}.png")
        Image.fromarray(np.asarray(im, dtype=np.uint8)).save(paths[-1])
    return paths


def resize_cases(image: np.ndarray, out: Path) -> list[Path]:
    """Images whose size differs from the model's, so the resize path (up, down, anisotropic) is exercised."""
    rng = np.random.default_rng(0)
    big = np.asarray(Image.fromarray(image).resize((77, 51), Image.NEAREST))
    noisy = np.clip(np.kron(image, np.ones((3, 3, 1))) + rng.integers(-40, 40, (96, 96, 3)), 0, 255)
    small = np.asarray(Image.fromarray(image).resize((20, 13), Image.NEAREST))
    paths = []
    for name, a in (("resize_77x51", big), ("resize_96x96", noisy), ("resize_20x13", small)):
        paths.append(out / f"{name}.png")
        Image.fromarray(a.astype(np.uint8)).save(paths[-1])
    return paths


def predict_reference(bundle: Path, paths: Sequence[Path], k: int) -> list[dict[str, Any]]:
    """What `kdmobile predict BUNDLE PATHS --top-k K --json` reports per image."""
    from kdmobile.bundle import load_bundle
    from kdmobile.runtime.cli import predict_images

    return predict_images(load_bundle(bundle), [str(p) for p in paths], k, threads=1)


def compare_topk(page: list[dict[str, Any]], ref: list[dict[str, Any]], k: int = 5, tol: float = TOL) -> list[str]:
    """Problems (empty when equal): same top-k classes in the same order (up to exact ties) and scores within tol."""
    problems = []
    for i, (p, r) in enumerate(zip(page, ref)):
        ref_p = {t["index"]: t["probability"] for t in r["top_k"]}
        for rank, (a, b) in enumerate(zip(p["top_k"][:k], r["top_k"][:k])):
            if abs(a["probability"] - b["probability"]) > tol:
                problems.append(f"image {i} rank {rank + 1}: page {a['probability']:.6f} vs {b['probability']:.6f}")
            tie = a["index"] in ref_p and abs(ref_p[a["index"]] - b["probability"]) < 1e-6
            if a["index"] != b["index"] and not tie:
                problems.append(f"image {i} rank {rank + 1}: page {a['label']} vs predict {b['label']}")
    if len(page) != len(ref):
        problems.append(f"page returned {len(page)} results for {len(ref)} images")
    return problems


def forecast_problems(bundle: Path, sample: dict[str, Any], page: list[float], tol: float = TOL) -> list[str]:
    """Problems (empty when equal): the page's forecast against ForecastPredictor.predict within tol."""
    from kdmobile.bundle import load_bundle
    from kdmobile.runtime.predictors import ForecastPredictor

    x = np.asarray(sample["x"], np.float32).reshape(sample["frames_in"], sample["height"], sample["width"])
    want = ForecastPredictor(load_bundle(bundle)).predict(x).ravel()
    got = np.asarray(page, np.float32)
    if got.shape != want.shape:
        return [f"page forecast has {got.size} values, Python {want.size}"]
    worst = float(np.max(np.abs(got - want)))
    return [] if worst <= tol else [f"max |page - python| forecast = {worst:.3g} > {tol}"]


def check_bundles(run_dir: Path, bundles: Sequence[Path], n: int = 20, work: Path | None = None) -> dict[str, Any]:
    """Page vs Python for each bundle (top-5 on n held-out images, or the forecast); returns a summary."""
    import tempfile

    from kdmobile.bundle import load_bundle

    work = Path(work or tempfile.mkdtemp(prefix="kdm-golden-"))
    fx = work / "fixtures"
    fx.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    out: dict[str, Any] = {}
    with DemoServer({b.name: b for b in bundles}, fixtures=fx) as srv:
        for b in bundles:
            t0 = time.monotonic()
            head = load_bundle(b).head
            if head == "retrieval" and not pngs:
                with np.load(run_dir / "heldout.npz") as z:
                    pngs = write_pngs(z["images_test"][:n], fx)
                (fx / "cases.json").write_text(json.dumps({"images": [f"/fixtures/{p.name}" for p in pngs], "k": 10}))
            cases = fx / f"{b.name}.cases.json"
            cases.write_text((fx / "cases.json").read_text() if head == "retrieval"
                             else json.dumps({"sample": f"/samples/{b.name}.json"}))
            report = run_page(srv, f"/bundles/{b.name}/", f"/fixtures/{cases.name}")
            if not report.get("ok"):
                out[b.name] = {"ok": False, "problems": [report.get("error")]}
                continue
            if head == "retrieval":
                problems = compare_topk(report["results"], predict_reference(b, pngs, 10))
            else:
                problems = forecast_problems(b, srv.samples[b.name], report["forecast"])
            out[b.name] = {"ok": not problems, "problems": problems, "head": head,
                           "images": len(pngs) if head == "retrieval" else 0,
                           "latency": report["latency"], "seconds": round(time.monotonic() - t0, 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the run directory (its heldout.npz provides the images)")
    ap.add_argument("bundles", type=Path, nargs="+", help="ONNX retrieval bundles exported from that run")
    ap.add_argument("-n", type=int, default=20, help="held-out images (default 20)")
    args = ap.parse_args(argv)
    summary = check_bundles(args.run, args.bundles, args.n)
    print(json.dumps(summary, indent=1))
    return 0 if all(v["ok"] for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
