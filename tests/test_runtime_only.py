"""A fresh venv with only `pip install -e '.[runtime]'` (issue 11, acceptance 2): torch and the other training and
export packages are absent there, and `kdmobile predict` and `kdmobile bench BUNDLE` run on ONNX and TFLite bundles.

The bundles are made here, with this test suite's venv, from the tiny runs the other tests share; only the commands
under test run in the fresh venv. pip reaches PyPI (in CI it downloads onnxruntime and ai-edge-litert); without a
network the test is skipped, except under CI=1 where that is a failure. About 50 s here, 12 s of it pip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_predict import build_tiny

REPO = Path(__file__).resolve().parents[1]

# Packages of the [train] and [export] extras that must not come with [runtime] (import names).
NOT_IN_RUNTIME = ("torch", "torchvision", "timm", "open_clip", "sklearn", "scipy", "h5py", "safetensors",
                  "matplotlib", "onnx", "litert_torch", "ai_edge_quantizer", "coremltools")


def _env() -> dict[str, str]:
    """The environment for the fresh venv: nothing that points Python at this suite's packages."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A new venv holding kdmobile (editable, this checkout) with the [runtime] extra and nothing else."""
    root = tmp_path_factory.mktemp("runtime_only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, env=_env(), timeout=300)
    done = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "-c", str(REPO / "constraints.txt"), "-e", f"{REPO}[runtime]"],
                          capture_output=True, text=True, env=_env(), timeout=1200)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        if os.environ.get("CI"):
            pytest.fail(f"pip install -e '.[runtime]' failed: {why}")
        pytest.skip(f"pip install -e '.[runtime]' failed (no network?): {why}")
    return root


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """ONNX fp32 bundles of the shared tiny runs, a TFLite fp32 bundle of the retrieval run, a PNG and frames."""
    from kdmobile.export.exporter import export_run
    from kdmobile.export.options import ExportOptions

    tiny = build_tiny(tmp_path_factory.getbasetemp() / "kd_tiny_runs")
    out = tmp_path_factory.mktemp("runtime_only_bundles")  # not beside the shared bundles: bench RUN would see it
    report = export_run(tiny["ammkd"], ExportOptions(targets=["tflite"], precisions=["fp32"], out=out),
                        log=lambda m: None)
    (art,) = report.artifacts
    assert art.error is None and art.bundle is not None, art.error
    with np.load(tiny["ammkd"] / "heldout.npz") as z:
        Image.fromarray(z["images_test"][0]).save(out / "img0.png")
    with np.load(tiny["sdkd"] / "heldout.npz") as z:
        np.save(out / "frames.npy", z["x_test"][0])  # normalised units: any finite frames will do here
    return {"run": tiny["ammkd"], "onnx": tiny["a_onnx"], "tflite": art.bundle, "forecast": tiny["s_onnx"],
            "png": out / "img0.png", "frames": out / "frames.npy"}


def kdmobile(venv: Path, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The fresh venv's `kdmobile` command; a traceback on stderr fails the test whatever the exit code."""
    done = subprocess.run([str(venv / "bin" / "kdmobile"), *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=cwd or REPO, timeout=600)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_lazy_verbs_listed_as_their_modules_describe_them() -> None:
    """`kdmobile --help` lists the stage verbs without importing them: its one-line help is the modules' own."""
    import argparse

    from kdmobile import cli

    def helps(parser: argparse.ArgumentParser) -> dict[str, str]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
        return {c.dest: c.help for c in sub._choices_actions}  # noqa: SLF001

    listed, loaded = helps(cli.build_parser(load=None)), helps(cli.build_parser())
    for name, *_ in cli._LAZY_VERBS:  # noqa: SLF001
        assert listed[name] == loaded[name], name


def test_runtime_extra_brings_no_torch(venv) -> None:
    code = ("import importlib.util, json, sys\n"
            "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]))\n")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code, *NOT_IN_RUNTIME], capture_output=True,
                          text=True, env=_env(), check=True)
    assert json.loads(done.stdout) == [], f"the [runtime] extra installed {done.stdout.strip()}"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True,
                          env=_env())
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr, done.stderr
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import onnxruntime, ai_edge_litert.interpreter"],
                          capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr


def test_predict_onnx_and_tflite(venv, bundles, tmp_path) -> None:
    tops = {}
    for target in ("onnx", "tflite"):
        done = kdmobile(venv, "predict", bundles[target], bundles["png"], "--top-k", "3", "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        labels = json.loads((bundles[target] / "labels.json").read_text())
        labels = labels["labels"] if isinstance(labels, dict) else labels
        (result,) = doc["results"]
        top = result["top_k"]
        assert [t["rank"] for t in top] == [1, 2, 3] and all(t["label"] in labels for t in top)
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        tops[target] = [t["index"] for t in top]
    assert tops["onnx"][0] == tops["tflite"][0]  # both fp32: the same best class
    done = kdmobile(venv, "predict", bundles["onnx"], bundles["png"], "--top-k", "2")  # the text output
    assert done.returncode == 0, done.stderr
    assert " 1. " in done.stdout and " 2. " in done.stdout
    out = tmp_path / "forecast.npy"
    done = kdmobile(venv, "predict", bundles["forecast"], bundles["frames"], "--out", out)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((bundles["forecast"] / "manifest.json").read_text())
    assert np.load(out).shape[0] == manifest["forecast"]["frames_out"]


def test_bench_bundles(venv, bundles, tmp_path) -> None:
    out = tmp_path / "bench"
    done = kdmobile(venv, "bench", bundles["onnx"], bundles["tflite"], "--runs", "5", "--warmup", "1",
                    "--no-progress", "--out", out)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {r["source"]: r for r in report["rows"] if r["batch"] == 1}
    assert set(rows) == {str(bundles["onnx"]), str(bundles["tflite"])}
    for row in rows.values():
        assert row["status"] == "ok" and row["n_runs"] == 5 and row["p50_ms"] > 0, row
    assert {r["backend"] for r in rows.values()} >= {"onnxruntime"}
    assert (out / "report.md").is_file() and "a-onnx-fp32" in done.stdout
    assert not (out / "latency_vs_accuracy.png").exists()  # no matplotlib in [runtime]: the plot is skipped, said so
    assert "no latency_vs_accuracy.png: matplotlib is not installed" in done.stderr, done.stderr
    assert report["host"].get("torch") is None


def test_train_and_export_name_their_extra(venv, bundles, tmp_path) -> None:
    for args, extra in ((["train", "ammkd", "--dry-run"], "train"), (["export", bundles["run"]], "export"),
                        (["data", "navier-stokes", "--out", tmp_path / "ns.npz"], "train")):
        done = kdmobile(venv, *args, cwd=tmp_path)
        err = done.stderr.strip()
        assert done.returncode == 1 and "\n" not in err, err
        assert err.startswith(f"kdmobile: error: kdmobile {args[0]} needs the [{extra}] extra ("), err
        assert err.endswith(f"pip install 'kdmobile[{extra}]'"), err
    done = kdmobile(venv, "doctor")
    assert done.returncode == 0 and "onnxruntime" in done.stdout and "[runtime]  yes" in done.stdout, done.stdout
