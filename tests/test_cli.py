"""The command surface: verbs listed, doctor, the data verb, one-line errors for bad flags."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kdmobile.cli import build_parser, main


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("train", "export", "data", "doctor"):
        assert verb in out


def test_every_subcommand_has_help_text():
    parser = build_parser()
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - walk argparse's tree
        for name, sub in action.choices.items():
            assert sub.description or sub.format_help(), name


def test_doctor_reports_backends(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "onnxruntime", "coremltools", "CUDA"):
        assert name in out


def test_data_navier_stokes_writes_a_file(tmp_path, capsys):
    out = tmp_path / "ns.npz"
    assert main(["data", "navier-stokes", "--out", str(out), "--n", "2", "--res", "16", "--t-final", "2",
                 "--no-progress", "--device", "cpu"]) == 0
    assert np.load(out)["u"].shape == (2, 2, 16, 16)
    assert str(out) in capsys.readouterr().out


def test_bad_flag_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "kdmobile.cli", "data", "navier-stokes", "--out", "x.txt",
                           "--n", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "kdmobile.cli", "train", "ammkd", "--epochs", "many"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
