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


def test_data_navier_stokes_mat_is_fno_layout(tmp_path, capsys):
    """--out X.mat: u is N×H×W×T in MATLAB's view (h5py sees it reversed) and loads back as (N, T, H, W)."""
    import h5py

    from kdmobile.data.sequences import load_sequences

    out = tmp_path / "ns.mat"
    assert main(["data", "navier-stokes", "--out", str(out), "--n", "2", "--res", "16", "--t-final", "1",
                 "--record-every", "0.5", "--threads", "1", "--no-progress", "--device", "cpu"]) == 0
    with h5py.File(out, "r") as f:
        u = np.transpose(f["u"][()])
        assert u.shape == (2, 16, 16, 2) and np.transpose(f["a"][()]).shape == (2, 16, 16)
    assert np.array_equal(load_sequences(out), np.transpose(u, (0, 3, 1, 2)))
    printed = capsys.readouterr().out
    assert f"wrote {out} (2 trajectories" in printed and "cpu, 1 thread)" in printed


@pytest.mark.parametrize("flags, needle", [(["--n", "0"], "--n"), (["--res", "7"], "--res"),
                                           (["--t-final", "1.5"], "multiple"), (["--threads", "0"], "--threads"),
                                           (["--dtype", "float16"], "--dtype")])
def test_data_navier_stokes_bad_argument_is_one_line_and_writes_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "sub" / "ns.mat"
    code = main(["data", "navier-stokes", "--out", str(out), "--res", "16", "--no-progress", *flags]) \
        if flags[0] != "--dtype" else None
    if code is None:  # argparse choices: exits 2 with one line
        with pytest.raises(SystemExit) as e:
            main(["data", "navier-stokes", "--out", str(out), *flags])
        code = e.value.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_bad_flag_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "kdmobile.cli", "data", "navier-stokes", "--out", "x.txt",
                           "--n", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "kdmobile.cli", "train", "ammkd", "--epochs", "many"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
