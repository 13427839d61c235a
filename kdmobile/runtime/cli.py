"""The `kdmobile predict` verb: run a bundle on images or frame arrays with the torch-free runtime.

Lives in runtime/ so a phone- or server-side user with only onnxruntime or LiteRT installed can use it; nothing
here (or in what it imports) needs torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from kdmobile.argparsing import add_command, add_trust_flag
from kdmobile.errors import KDError, UserError

_DESCRIPTION = """\
Run an exported bundle (from `kdmobile export`) with the torch-free runtime: the same code a phone-side user runs.

retrieval bundles: INPUT... are image files (PNG, JPEG, anything Pillow reads); prints the top-k class labels
  with softmax probabilities for each image (logit scale x cosine similarity to the bundled class vectors).
forecast bundles: INPUT... are .npy arrays of frames in physical units, (T_in, H, W) or (N, T_in, H, W); writes
  the forecast (T_out, H, W) or (N, T_out, H, W) to --out (default: INPUT's stem + .forecast.npy, beside it).
  --steps N rolls the forecast out autoregressively to N x T_out frames.

The bundle's schema version and checksums are checked first; a changed file is refused.
"""

_EPILOG = """\
examples:
  kdmobile predict bundles/demo-onnx-fp32 cat.png dog.jpg --top-k 3
  kdmobile predict bundles/demo-tflite-int8 photos/*.png --json > predictions.json
  kdmobile predict bundles/ns-onnx-fp32 frames.npy --steps 4 --out rollout.npy

exit codes: 0 ok, 2 bad input (missing or changed bundle, unreadable image, wrong array shape; one line)
"""


def register(sub: Any) -> None:
    """Add the `predict` sub-command to the `kdmobile` parser's sub-parsers."""
    p = add_command(sub, "predict", "run a bundle on images (retrieval) or frame arrays (forecast); no torch", _DESCRIPTION, _EPILOG)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory written by `kdmobile export`")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (retrieval bundles) or .npy frame arrays (forecast bundles)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="retrieval: number of labels per image (default 5; capped at the number of classes)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="inference threads (default 1)")
    add_trust_flag(p)
    p.add_argument("--out", metavar="FILE.npy",
                   help="forecast: where to write the forecast (one INPUT only; default INPUT stem + .forecast.npy)")
    p.add_argument("--steps", type=int, default=1, metavar="N",
                   help="forecast: autoregressive roll-out steps, each adding T_out frames (default 1)")
    p.set_defaults(func=handler)


MAX_THREADS = 256     # inference threads; more than any phone or server core count
MAX_STEPS = 10_000    # autoregressive forecast steps (each feeds the next; the output grows with every step)


def _same_file(a: str, b: str) -> bool:
    """True when two paths name the same file (or would: a path compared after resolving links and `..`)."""
    import os

    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b) or \
            os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def _check_retrieval_args(args: argparse.Namespace) -> None:
    """One-line errors for values and flags that do not fit a retrieval bundle."""
    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.out is not None or args.steps != 1:
        flag = "--out" if args.out is not None else "--steps"
        raise UserError(f"{flag} applies to forecast bundles; this is a retrieval bundle")


def _check_forecast_args(args: argparse.Namespace) -> None:
    """One-line errors for values and flags that do not fit a forecast bundle."""
    if not 1 <= args.steps <= MAX_STEPS:
        raise UserError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}")
    if args.out is not None and len(args.inputs) != 1:
        raise UserError(f"--out names one output file but {len(args.inputs)} inputs were given")
    if args.out is not None and any(_same_file(args.out, i) for i in [*args.inputs, args.bundle]):
        raise UserError(f"--out {args.out}: that is an input of this command; the forecast would replace it")


def _softmax_rows(z: Any) -> Any:
    """Row-wise softmax in float64."""
    import numpy as np

    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict_images(bundle: Any, paths: Sequence[str], k: int, threads: int) -> list[dict[str, Any]]:
    """Top-k (rank, label, class index, probability) per image file, best first."""
    import numpy as np

    from kdmobile.runtime.predictors import RetrievalPredictor, load_image

    images = [load_image(p) for p in paths]  # every file checked before the model is loaded
    predictor = RetrievalPredictor(bundle, threads=threads)
    probs = _softmax_rows(predictor.scores(images))
    k = min(int(k), probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [{"input": str(path),
             "top_k": [{"rank": r + 1, "label": predictor.labels[j], "index": int(j), "probability": float(p[j])}
                       for r, j in enumerate(row)]}
            for path, p, row in zip(paths, probs, order)]


def load_frames(path: str | Path) -> Any:
    """A numeric array from a .npy file (or an .npz holding exactly one array); one-line KDError otherwise."""
    import numpy as np

    from kdmobile.untrusted import check_array_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        raise UserError(f"{p}: not a .npy array (a forecast bundle takes NumPy .npy frame arrays)")
    check_array_file(p)
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if len(loaded.files) != 1:
                    raise UserError(f"{p}: an .npz must hold exactly one array, found {len(loaded.files)}")
                loaded = loaded[loaded.files[0]]
    except KDError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, EOF and format errors all mean "unreadable"
        raise UserError(f"{p}: unreadable .npy array ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(loaded, np.ndarray):  # an .npz member that is not a .npy comes back as raw bytes
        raise UserError(f"{p}: not a .npy array")
    if loaded.dtype.kind not in "fiub":
        raise UserError(f"{p}: frames must be numeric, got dtype {loaded.dtype}")
    return loaded


def default_output(path: str | Path) -> Path:
    """Where a forecast of INPUT goes by default: INPUT's directory, stem + .forecast.npy."""
    p = Path(path)
    return p.with_name(f"{p.stem}.forecast.npy")


def predict_frames(bundle: Any, paths: Sequence[str], out: str | None, steps: int,
                   threads: int) -> list[dict[str, Any]]:
    """Forecast each frame array and write it (atomically) as .npy; returns what was written."""
    import numpy as np

    from kdmobile.fileio import atomic_path, check_writable
    from kdmobile.runtime.predictors import ForecastPredictor

    arrays = [load_frames(p) for p in paths]
    dests = [Path(out) if out is not None else default_output(path) for path in paths]
    for dest in dests:  # every output checked before the first model call
        if dest.is_dir():
            raise UserError(f"--out {dest}: is a directory (give a file name ending in .npy)")
        check_writable(dest.parent, "--out" if out is not None else "output folder", min_free=1 << 20)
    predictor = ForecastPredictor(bundle, threads=threads)
    results = []
    for path, frames, dest in zip(paths, arrays, dests):
        y = predictor.predict(frames) if steps == 1 else predictor.rollout(frames, steps)
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.save would otherwise append .npy to the temp name
                np.save(f, np.asarray(y, dtype=np.float32))
        results.append({"input": str(path), "output": str(dest), "input_shape": list(np.shape(frames)),
                        "output_shape": list(y.shape), "steps": int(steps),
                        "frames_in": predictor.frames_in, "frames_out": predictor.frames_out})
    return results


def _show_retrieval(r: dict[str, Any]) -> None:
    """One image's top-k; labels and file names printed with control characters escaped."""
    from kdmobile.untrusted import printable

    print(printable(r["input"]))
    for t in r["top_k"]:
        print(f"  {t['rank']:>2}. {printable(t['label'])}  {t['probability']:.4f}")


def _show_forecast(r: dict[str, Any]) -> None:
    from kdmobile.untrusted import printable

    print(f"{printable(r['input'])} {tuple(r['input_shape'])} -> {printable(r['output'])} {tuple(r['output_shape'])}"
          + (f" ({r['steps']} roll-out steps)" if r["steps"] > 1 else ""))


@dataclass(frozen=True)
class _HeadCLI:
    """What `predict` does for one bundle head: check the flags, run the inputs, print one result."""

    check: Callable[[argparse.Namespace], None]
    run: Callable[[Any, argparse.Namespace], list[dict[str, Any]]]
    show: Callable[[dict[str, Any]], None]


HEADS: dict[str, _HeadCLI] = {
    "retrieval": _HeadCLI(_check_retrieval_args, lambda b, a: predict_images(b, a.inputs, a.top_k, a.threads),
                          _show_retrieval),
    "forecast": _HeadCLI(_check_forecast_args,
                         lambda b, a: predict_frames(b, a.inputs, a.out, a.steps, a.threads), _show_forecast),
}


def handler(args: argparse.Namespace) -> int:
    """Run `kdmobile predict`; KDError -> one line and exit 2 via kdmobile.cli.main."""
    from kdmobile.bundle import load_bundle
    from kdmobile.signing import trust_from

    bundle = load_bundle(args.bundle, trust_from(args.trust))
    if not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads must be between 1 and {MAX_THREADS}, got {args.threads}")
    head = HEADS.get(bundle.head)
    if head is None:
        raise UserError(f"bundle {bundle.path}: predict has no way to run a {bundle.head!r} bundle")
    head.check(args)
    results = head.run(bundle, args)
    if args.json:
        doc = {"bundle": str(bundle.path), "head": bundle.head, "task": bundle.task, "target": bundle.target,
               "precision": bundle.precision, "results": results}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{bundle.path} ({bundle.task}, {bundle.target} {bundle.precision})")
        for r in results:
            head.show(r)
    return 0
