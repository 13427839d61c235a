"""Copy verified bundles into the Android demo's assets (android_demo/app/assets) with the page's bundle index."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.bundle import MANIFEST, load_bundle
from kdmobile.errors import KDError, UserError
from kdmobile.fileio import atomic_path

INDEX = "index.json"  # bundles/index.json: what the page offers, [{name, head, task, target, precision, sample}]


def forecast_sample(bundle_dir: str | os.PathLike) -> dict[str, Any] | None:
    """One held-out Navier-Stokes window in physical units (input frames and truth) from the bundle's run, if kept."""
    b = load_bundle(bundle_dir)
    fc = b.manifest.get("forecast")
    if fc is None:  # not a forecast bundle
        return None
    from kdmobile.contracts.heldout import FILE, read_heldout

    run_dir = (b.manifest.get("source") or {}).get("run_dir")
    held = Path(run_dir) / FILE if run_dir else None
    if held is None or not held.is_file():
        return None
    h = read_heldout(run_dir)  # under the size limits of any file kdmobile reads; one-line error when damaged
    if h.x_test is None or h.y_test is None:
        return None
    mean, std = np.float32(fc["mean"]), np.float32(fc["std"])
    x = h.x_test[0].astype(np.float32) * std + mean
    y = h.y_test[0].astype(np.float32) * std + mean
    return {"frames_in": int(x.shape[0]), "frames_out": int(y.shape[0]), "height": int(x.shape[1]),
            "width": int(x.shape[2]), "x": [float(v) for v in x.ravel()], "truth": [float(v) for v in y.ravel()],
            "source": f"{held} x_test[0], y_test[0] (physical units)"}


def _entry(name: str, bundle_dir: Path, sample: str | None) -> dict[str, Any]:
    """The page's index entry for one bundle."""
    m = json.loads((bundle_dir / MANIFEST).read_text())
    return {"name": name, "head": m.get("head"), "task": m.get("task"), "target": m.get("target"),
            "precision": m.get("precision"), "sample": sample}


def write_index(bundles_dir: Path) -> list[dict[str, Any]]:
    """Rewrite bundles/index.json from the ONNX bundles present (the page's runtime reads ONNX only)."""
    entries = []
    for d in sorted(p for p in bundles_dir.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()):
        sample = bundles_dir.parent / "samples" / f"{d.name}.json"
        entries.append(_entry(d.name, d, f"samples/{d.name}.json" if sample.is_file() else None))
    with atomic_path(bundles_dir / INDEX) as tmp:
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
    return entries


def copy_to_assets(bundle_dir: str | os.PathLike, assets_dir: str | os.PathLike) -> Path:
    """Checksum-verify an ONNX bundle, copy it to ASSETS/bundles/NAME (plus a forecast sample) and update the index."""
    b = load_bundle(bundle_dir)  # refuses a changed or incomplete bundle
    if b.target != "onnx":
        raise UserError(f"bundle {b.path}: the Android demo runs ONNX bundles (ONNX Runtime Web); this is {b.target}")
    assets = Path(assets_dir)
    dest = assets / "bundles" / b.path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        shutil.copytree(b.path, tmp)
    sample = forecast_sample(b.path)
    if sample is not None:
        (assets / "samples").mkdir(parents=True, exist_ok=True)
        with atomic_path(assets / "samples" / f"{b.path.name}.json") as tmp:
            tmp.write_text(json.dumps(sample) + "\n")
    write_index(dest.parent)
    return dest


def main(argv: list[str] | None = None) -> int:
    """python -m kdmobile.export.android ASSETS_DIR BUNDLE...: copy existing bundles into the app's assets."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m kdmobile.export.android ASSETS_DIR BUNDLE...", file=sys.stderr)
        return 2
    try:
        for b in args[1:]:
            print(f"android assets: {copy_to_assets(b, args[0])}")
    except KDError as e:
        print(f"kdmobile: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
