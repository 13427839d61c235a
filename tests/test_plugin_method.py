"""A new method is one `register_method(Method(...))` (issue 22, "add a method"): a toy third method registered here,
outside the package — a 1x1-convolution forecaster distilled from a persistence teacher — is trained, exported,
predicted with and benched through the CLI with no change under kdmobile/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from kdmobile import methods
from kdmobile.argparsing import add_command
from kdmobile.contracts.heldout import HeldOut, write_heldout
from kdmobile.methods import Method, register_method
from kdmobile.models.registry import create_model, register_model, save_model
from kdmobile.rundir import claim_run_dir, new_run_dir, write_method, write_metrics
from untrusted_helpers import main

T_IN, T_OUT, H = 2, 1, 8


@register_model("toy_probe")
class Probe(nn.Module):
    """(B, T_in, H, W) -> (B, T_out, H, W): a 1x1 convolution over the input frames."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(T_IN, T_OUT, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)


def _train_toy(args: argparse.Namespace) -> int:
    """Distil the probe from a persistence teacher (the last input frame) on random smooth sequences."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    seq = np.cumsum(rng.standard_normal((64, T_IN + T_OUT, H, H)).astype(np.float32) * 0.1, axis=1)
    x, y = torch.from_numpy(seq[:, :T_IN]), torch.from_numpy(seq[:, T_IN:])
    teacher = x[:, -1:]  # persistence: tomorrow is today
    student = create_model("toy_probe")
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    for _ in range(args.epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(student(x), y) + nn.functional.mse_loss(student(x), teacher)
        loss.backward()
        opt.step()
    run = claim_run_dir(new_run_dir(args.out, "toy", resume=False), "toy", resume=False)
    write_method(run, "toy")
    save_model(run / "student.safetensors", student,
               extra={"task": "forecast", "frames_in": T_IN, "frames_out": T_OUT, "mean": 0.0, "std": 1.0})
    write_heldout(run, HeldOut(x_test=seq[:16, :T_IN], y_test=seq[:16, T_IN:], x_calib=seq[16:24, :T_IN]))
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(student(x[:16]), y[:16]))
    write_metrics(run, {"task": "forecast", "models": {"student": {"mse": mse, "role": "student"}}})
    print(f"toy run: {run}")
    return 0


def _register_toy_cli(sub: Any, method: Method) -> None:
    p = add_command(sub, method.name, method.summary, "A toy method registered by a test.")
    p.add_argument("--out", default="runs")
    p.add_argument("--epochs", type=int, default=30)
    p.set_defaults(func=_train_toy)


@pytest.fixture()
def toy() -> Iterator[Method]:
    row = Method("toy", "a 1x1 forecaster distilled from persistence", head="forecast", data_tasks=("forecast",),
                 register_cli=_register_toy_cli, teacher_metric_prefix="", teacher_model_kind="forecaster",
                 student_model_kind="forecaster", exports_teachers=False, takes_class_files=False)
    register_method(row)
    yield row
    methods._REGISTRY.pop("toy")


def test_a_registered_method_trains_exports_predicts_and_benches(toy, tmp_path: Path, capsys) -> None:
    assert main(["train", "toy", "--out", tmp_path / "runs"]) == 0
    run = tmp_path / "runs" / "toy"
    assert json.loads((run / "method.json").read_text())["method"] == "toy"
    assert main(["export", run, "--out", tmp_path / "bundles"]) == 0
    bundle = tmp_path / "bundles" / "toy-onnx-fp32"
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["task"] == "forecast" and m["source"]["method"] == "toy" and m["verification"]["status"] == "ok"
    window = tmp_path / "w.npy"
    np.save(window, np.zeros((T_IN, H, H), np.float32))
    assert main(["predict", bundle, window, "--out", tmp_path / "f.npy"]) == 0
    assert np.load(tmp_path / "f.npy").shape == (T_OUT, H, H)
    capsys.readouterr()
    assert main(["bench", run, "--runs", "3", "--warmup", "1", "--out", tmp_path / "bench", "--no-progress"]) == 0
    rows = json.loads((tmp_path / "bench" / "report.json").read_text())["rows"]
    assert any(r["model"].startswith("toy-onnx") for r in rows), rows
