"""Helpers of the untrusted-input regression suite: a pickle that would run code, a tiny forecast run, re-sealing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kdmobile.cli as kcli
from kdmobile.models.registry import create_model, register_model, save_model
from kdmobile.rundir import write_method, write_metrics

T_IN, T_OUT, H, W = 3, 2, 8, 8


def main(args: list) -> int:
    """kdmobile's CLI in-process; argparse's own errors (SystemExit) become their exit code too."""
    try:
        return kcli.main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)


def one_line_err(capsys: pytest.CaptureFixture) -> str:
    """The captured stderr, asserted to be exactly one line without a traceback."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


class Payload:
    """Unpickling this creates `marker` (open(marker, "w")): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - the pickle protocol
        return (open, (self.marker, "w"))


def write_pickle_payload(path: Path, marker: Path, like: str = "model") -> Path:
    """A torch.save file shaped like a kdmobile model/teacher/checkpoint whose unpickling would create `marker`."""
    payloads = {
        "model": {"model": "untrusted_tiny", "kwargs": {}, "state_dict": Payload(marker), "extra": {}},
        "teacher": {"kind": "open_clip", "model_name": "kd-rn-tiny", "state_dict": Payload(marker)},
        "checkpoint": {"epoch": 1, "model": Payload(marker)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payloads[like], path)
    return path


@register_model("untrusted_tiny")
class TinyForecaster(nn.Module):
    """(B, T_in, H, W) -> (B, T_out, H, W): one 3x3 convolution plus the last input frame."""

    def __init__(self, frames_in: int = T_IN, frames_out: int = T_OUT, hidden: int = 4) -> None:
        super().__init__()
        self.a = nn.Conv2d(frames_in, hidden, 3, padding=1)
        self.b = nn.Conv2d(hidden, frames_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) + x[:, -1:]


def fake_forecast_run(root: Path, name: str = "fc") -> Path:
    """A finished SDKD-shaped run directory (method.json, student.safetensors, heldout.npz, metrics.json)."""
    run = root / name
    write_method(run, "sdkd")
    torch.manual_seed(0)
    save_model(run / "student.safetensors", create_model("untrusted_tiny"),
               extra={"task": "forecast", "frames_in": T_IN, "frames_out": T_OUT, "mean": 0.0, "std": 1.0})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, T_IN, H, W)).astype(np.float32)
    np.savez(run / "heldout.npz", x_test=x[:8], y_test=x[:8, -T_OUT:], x_calib=x[8:])
    write_metrics(run, {"task": "forecast"})
    return run


def reseal(bundle: Path) -> None:
    """Recompute the manifest's digest in bundle.sha256, as someone who edits a manifest on purpose would."""
    digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    lines = (bundle / "bundle.sha256").read_text().splitlines()
    (bundle / "bundle.sha256").write_text(
        "\n".join(f"{digest}  manifest.json" if ln.endswith("  manifest.json") else ln for ln in lines) + "\n")
