"""`kdmobile predict`: top-k and forecasts equal the PyTorch student's, --json schema, one-line errors, no torch."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdmobile.cli as kcli
from kdmobile.bundle import load_bundle
from kdmobile.data.transforms import CLIP_MEAN, CLIP_STD, normalise
from kdmobile.models import load_model
from kdmobile.runtime import cli as predict_cli

from conftest import TINY_AMMKD

REPO = Path(__file__).resolve().parents[1]
TINY_SDKD = ["--n", "6", "--res", "16", "--epochs", "1", "--teacher-epochs", "1", "--no-progress",
             "--set", "data.t_final=21", "--set", "teacher.width=16", "--set", "teacher.heads=2",
             "--set", "student_kwargs={width: 8, blocks: 1}"]


def ensure_verb(name: str, register) -> None:
    """Register a verb with the CLI unless kdmobile/cli.py already does."""
    if register in kcli._EXTRA_VERBS:
        return
    sub = next(a for a in kcli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if name not in sub.choices:
        kcli._EXTRA_VERBS.append(register)


ensure_verb("predict", predict_cli.register)


def main(args: list) -> int:
    """kdmobile's CLI in-process; argparse's own errors (SystemExit) become their exit code too."""
    try:
        return kcli.main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)


def build_tiny(root: Path) -> dict[str, Path]:
    """One tiny AMMKD run, one tiny SDKD run and their ONNX fp32 bundles under root (built once per session)."""
    paths = {"ammkd": root / "runs" / "a", "sdkd": root / "runs" / "s", "bundles": root / "bundles",
             "a_onnx": root / "bundles" / "a-onnx-fp32", "s_onnx": root / "bundles" / "s-onnx-fp32"}
    if (root / "done").is_file():
        return paths
    from kdmobile.export.exporter import export_run
    from kdmobile.export.options import ExportOptions

    os.environ["KDMOBILE_CACHE"] = str(root / "cache")
    assert main(["train", "ammkd", *TINY_AMMKD[:TINY_AMMKD.index("--epochs")], "--epochs", "1",
                 *TINY_AMMKD[TINY_AMMKD.index("--epochs") + 2:], "--out", root / "runs", "--name", "a"]) == 0
    assert main(["train", "sdkd", *TINY_SDKD, "--out", root / "runs", "--name", "s"]) == 0
    for run in (paths["ammkd"], paths["sdkd"]):
        export_run(run, ExportOptions(targets=["onnx"], precisions=["fp32"], out=paths["bundles"]), log=lambda m: None)
    (root / "done").write_text("ok\n")
    return paths


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny(tmp_path_factory.getbasetemp() / "kd_tiny_runs")


def _one_line_error(capsys, args: list, needle: str) -> None:
    """The command exits 2 with exactly one stderr line containing `needle`."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("kdmobile: error:"), err
    assert needle in err, err


# --------------------------------------------------------------------------------------------- retrieval
@pytest.fixture(scope="module")
def pngs(tiny, tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    with np.load(tiny["ammkd"] / "heldout.npz") as z:
        images = z["images_test"][:6]
    d = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, im in enumerate(images):
        paths.append(d / f"img{i}.png")
        Image.fromarray(im).save(paths[-1])
    return paths, images


def _torch_probs(run: Path, bundle: Path, images: np.ndarray) -> np.ndarray:
    """Softmax of the PyTorch student's scores against the bundle's fused class vectors."""
    model, extra = load_model(run / "student.safetensors")
    x = torch.from_numpy(normalise(images, tuple(extra.get("mean", CLIP_MEAN)), tuple(extra.get("std", CLIP_STD))))
    with torch.inference_mode():
        emb = model(x).numpy().astype(np.float64)
    scores = float(model.scale().detach()) * emb @ load_bundle(bundle).class_vectors.T.astype(np.float64)
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_topk_equals_torch_student(tiny, pngs, capsys) -> None:
    paths, images = pngs
    capsys.readouterr()
    assert main(["predict", tiny["a_onnx"], *paths, "--top-k", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ref = _torch_probs(tiny["ammkd"], tiny["a_onnx"], images)
    assert len(doc["results"]) == len(paths)
    for r, p in zip(doc["results"], ref):
        idx = [t["index"] for t in r["top_k"]]
        probs = np.array([t["probability"] for t in r["top_k"]])
        np.testing.assert_allclose(probs, p[idx], atol=1e-4)
        assert np.all(np.diff(probs) <= 1e-12)                 # best first
        assert probs[-1] >= np.sort(p)[-3] - 1e-4               # the 3 most probable classes (up to ties)
        if np.sort(p)[-1] - np.sort(p)[-2] > 1e-4:
            assert idx[0] == int(np.argmax(p))


def test_json_schema_and_text_output(tiny, pngs, capsys) -> None:
    paths, _ = pngs
    labels = load_bundle(tiny["a_onnx"]).labels
    capsys.readouterr()
    assert main(["predict", tiny["a_onnx"], paths[0], "--top-k", "100", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"bundle", "head", "task", "target", "precision", "results"}
    assert (doc["head"], doc["target"], doc["precision"]) == ("retrieval", "onnx", "fp32")
    (r,) = doc["results"]
    assert r["input"] == str(paths[0]) and len(r["top_k"]) == len(labels)   # k capped at the class count
    for rank, t in enumerate(r["top_k"], 1):
        assert set(t) == {"rank", "label", "index", "probability"}
        assert t["rank"] == rank and t["label"] == labels[t["index"]] and 0.0 <= t["probability"] <= 1.0
    assert abs(sum(t["probability"] for t in r["top_k"]) - 1.0) < 1e-6
    assert main(["predict", tiny["a_onnx"], paths[0], "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert str(paths[0]) in out and r["top_k"][0]["label"] in out


# ---------------------------------------------------------------------------------------------- forecast
def _norm(run: Path) -> tuple[float, float]:
    n = json.loads((run / "normalisation.json").read_text())
    return float(n["mean"]), float(n["std"])


def test_forecast_equals_torch_student(tiny, tmp_path, capsys) -> None:
    run = tiny["sdkd"]
    mean, std = _norm(run)
    with np.load(run / "heldout.npz") as z:
        x = z["x_test"][:1].astype(np.float32)
    model, _ = load_model(run / "student.safetensors")
    np.save(tmp_path / "frames.npy", x[0] * std + mean)
    capsys.readouterr()
    assert main(["predict", tiny["s_onnx"], tmp_path / "frames.npy", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    out = tmp_path / "frames.forecast.npy"
    assert doc["results"][0]["output"] == str(out) and out.is_file()
    with torch.inference_mode():
        y1 = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(out), y1[0] * std + mean, atol=1e-4)

    # --steps 2: autoregressive roll-out, fed the last T_in frames; batched (N, T_in, H, W) input; --out
    np.save(tmp_path / "batch.npy", np.repeat(x * std + mean, 2, axis=0))
    assert main(["predict", tiny["s_onnx"], tmp_path / "batch.npy", "--steps", "2", "--out",
                 tmp_path / "roll.npy"]) == 0
    roll = np.load(tmp_path / "roll.npy")
    with torch.inference_mode():
        hist = np.concatenate([x, y1], axis=1)[:, -x.shape[1]:]
        y2 = model(torch.from_numpy(np.ascontiguousarray(hist))).numpy()
    want = np.concatenate([y1, y2], axis=1)[0] * std + mean
    assert roll.shape == (2, *want.shape)
    np.testing.assert_allclose(roll[1], want, atol=1e-4)


# ------------------------------------------------------------------------------------------------ errors
def test_errors_are_one_line(tiny, pngs, tmp_path, capsys) -> None:
    paths, _ = pngs
    _one_line_error(capsys, ["predict", tmp_path / "nope", paths[0]], "no such directory")
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny["a_onnx"], tampered)
    raw = bytearray((tampered / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(raw))
    _one_line_error(capsys, ["predict", tampered, paths[0]], "checksum mismatch for model.onnx")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    _one_line_error(capsys, ["predict", tiny["a_onnx"], text], "not an image")
    _one_line_error(capsys, ["predict", tiny["a_onnx"], tmp_path / "missing.png"], "no such image file")
    _one_line_error(capsys, ["predict", tiny["a_onnx"], paths[0], "--top-k", "0"], "--top-k")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 16, 16), np.float32))
    _one_line_error(capsys, ["predict", tiny["s_onnx"], tmp_path / "wrong.npy"], "forecast input must be")
    _one_line_error(capsys, ["predict", tiny["s_onnx"], text], "not a .npy array")
    _one_line_error(capsys, ["predict", tiny["a_onnx"], paths[0], "--bogus"], "unrecognized arguments")


# ---------------------------------------------------------------------------------------------- no torch
def test_predict_runs_without_torch(tiny, pngs, tmp_path) -> None:
    paths, _ = pngs
    run = tiny["sdkd"]
    mean, std = _norm(run)
    with np.load(run / "heldout.npz") as z:
        np.save(tmp_path / "f.npy", z["x_test"][0] * std + mean)
    code = (
        "import sys, argparse\n"
        "sys.modules['torch'] = None\n"
        "import kdmobile.cli as c, kdmobile.runtime.cli as r\n"
        "sub = next(a for a in c.build_parser()._actions if isinstance(a, argparse._SubParsersAction))\n"
        "if 'predict' not in sub.choices: c._EXTRA_VERBS.append(r.register)\n"
        "rc = c.main(sys.argv[1:])\n"
        "assert sys.modules['torch'] is None, 'torch was imported'\n"
        "sys.exit(rc)\n")
    for args in (["predict", tiny["a_onnx"], paths[0], "--json"], ["predict", tiny["s_onnx"], tmp_path / "f.npy"]):
        done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                              cwd=REPO, timeout=300)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "f.forecast.npy").is_file()
