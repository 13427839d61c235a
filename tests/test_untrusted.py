"""Untrusted run directories, model files, data and a hostile environment: no code runs, one line on stderr with
the documented exit code (2 bad input, 1 environment), and nothing half-made is left behind (issue 10)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kdmobile.config import TrainConfig
from kdmobile.errors import KDError
from target_helpers import set_converter
from kdmobile.fileio import clean_stale
from kdmobile.models.clip_teacher import load_teacher, parse_teacher
from kdmobile.rundir import write_method
from kdmobile.train.loop import Trainer

from untrusted_helpers import T_IN, fake_forecast_run, main, one_line_err, reseal, write_pickle_payload

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fc_run(tmp_path_factory) -> Path:
    return fake_forecast_run(tmp_path_factory.mktemp("runs"))


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ------------------------------------------------------------------------------------ pickle never runs
def test_pickle_student_never_runs_through_export_or_bench(fc_run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    run = _copy_run(fc_run, tmp_path / "evil")
    write_pickle_payload(run / "student.safetensors", marker)
    assert main(["export", run, "--out", tmp_path / "b"]) == 2
    assert "pickle-based PyTorch file" in one_line_err(capsys)
    assert main(["bench", run, "--no-teachers", "--runs", "1", "--warmup", "0", "--bundles", tmp_path / "none",
                 "--out", tmp_path / "bench", "--no-progress"]) == 1  # the student "could not be measured"
    assert "pickle-based PyTorch file" in capsys.readouterr().err
    old = _copy_run(fc_run, tmp_path / "old")  # an old run: student.pt (pickle) and no safetensors
    (old / "student.safetensors").unlink()
    write_pickle_payload(old / "student.pt", marker)
    assert main(["export", old, "--out", tmp_path / "b"]) == 2
    assert "student.pt is the old pickle format, refused" in one_line_err(capsys)
    assert not marker.exists()


def test_pickle_teacher_never_runs(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    for name in ("t.safetensors", "t.pt"):
        path = write_pickle_payload(tmp_path / name, marker, like="teacher")
        with pytest.raises(KDError, match="pickle-based PyTorch file"):
            load_teacher(path)
        with pytest.raises(KDError, match="pickle-based PyTorch file"):
            parse_teacher(str(path))
    assert main(["train", "ammkd", "--teachers", f"{tmp_path / 't.pt'},kd-rn-tiny", "--out", tmp_path / "runs",
                 "--no-progress"]) == 2
    assert "pickle-based" in one_line_err(capsys)
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_pickle_checkpoint_never_runs_and_old_checkpoints_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu")
    trainer = Trainer("student", torch.nn.Linear(2, 2), cfg, tmp_path / "stage", None, seed=0, progress=False)
    write_pickle_payload(trainer.checkpoint_path, marker, like="checkpoint")
    data = torch.utils.data.TensorDataset(torch.zeros(8, 2))
    with pytest.raises(KDError, match="refused: it holds objects beyond tensors"):
        trainer.fit(data, lambda m, b: None, resume=True)
    assert not marker.exists()
    torch.save({"rng": {"numpy": np.random.get_state()}}, trainer.checkpoint_path)  # numpy objects: not weights
    with pytest.raises(KDError, match="refused"):
        trainer.fit(data, lambda m, b: None, resume=True)


def test_resume_checkpoint_round_trips_with_weights_only(tmp_path):
    from kdmobile.train.loop import StepOutput

    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu")
    model = torch.nn.Linear(2, 1)
    data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    step = lambda m, b: StepOutput(torch.nn.functional.mse_loss(m(b[0]), b[1]))  # noqa: E731
    Trainer("s", model, cfg, tmp_path, None, seed=0, progress=False).fit(data, step)
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # would raise on any non-allowed object
    assert state["epoch"] == 1 and len(state["rng"]["python"][1]) == 625


def test_verify_never_follows_the_manifest_run_dir(fc_run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    assert main(["export", fc_run, "--out", tmp_path / "b"]) == 0
    bundle = tmp_path / "b" / "fc-onnx-fp32"
    evil = _copy_run(fc_run, tmp_path / "evil")
    write_pickle_payload(evil / "student.safetensors", marker)
    m = json.loads((bundle / "manifest.json").read_text())
    m["source"]["run_dir"] = str(evil)
    (bundle / "manifest.json").write_text(json.dumps(m))
    reseal(bundle)  # a manifest edited and re-sealed on purpose
    capsys.readouterr()
    assert main(["export", "--verify", bundle]) == 0
    assert "no --run DIR given" in capsys.readouterr().out
    assert main(["export", "--verify", bundle, "--run", evil]) == 2  # even when asked: refused, not unpickled
    assert "pickle-based" in one_line_err(capsys)
    assert not marker.exists()
    assert main(["export", "--verify", bundle, "--run", fc_run]) == 0
    assert "pytorch" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- bad run dirs
def test_bad_run_directories_are_one_line_exit_2(fc_run, tmp_path, capsys):
    trunc = _copy_run(fc_run, tmp_path / "trunc")
    raw = (trunc / "heldout.npz").read_bytes()
    (trunc / "heldout.npz").write_bytes(raw[: len(raw) // 2])
    corrupt = _copy_run(fc_run, tmp_path / "corrupt")
    (corrupt / "heldout.npz").write_bytes(b"PK\x03\x04" + os.urandom(300))
    misfit = _copy_run(fc_run, tmp_path / "misfit")  # kwargs that do not fit the stored weights
    tensors = load_file(str(misfit / "student.safetensors"))
    recipe = {"format": "kdmobile-model", "model": "untrusted_tiny", "kwargs": {"hidden": 7}, "extra": {}}
    save_file(tensors, str(misfit / "student.safetensors"), metadata={"kdmobile": json.dumps(recipe)})
    unbuildable = _copy_run(fc_run, tmp_path / "unbuildable")
    recipe = {"format": "kdmobile-model", "model": "untrusted_tiny", "kwargs": {"bogus": 1}, "extra": {}}
    save_file(tensors, str(unbuildable / "student.safetensors"), metadata={"kdmobile": json.dumps(recipe)})
    unfinished = _copy_run(fc_run, tmp_path / "unfinished")
    write_method(unfinished, "sdkd")  # a training that started again and never wrote metrics.json
    cases = [(trunc, "heldout.npz: unreadable"), (corrupt, "heldout.npz: unreadable"),
             (misfit, "weights do not fit the model"), (unbuildable, "recipe does not build untrusted_tiny"),
             (unfinished, "--resume")]
    for run, needle in cases:
        assert main(["export", run, "--out", tmp_path / "b"]) == 2, run
        assert needle in one_line_err(capsys), run
    assert main(["bench", unfinished, "--out", tmp_path / "bench"]) == 2
    assert "training did not finish" in one_line_err(capsys)
    assert not (tmp_path / "b").exists() and not (tmp_path / "bench").exists()


def test_unknown_student_backbone_is_refused_before_any_training(tmp_path, capsys):
    assert main(["train", "ammkd", "--student", "not_a_timm_model", "--out", tmp_path / "runs", "--no-progress"]) == 2
    assert "not a timm model" in one_line_err(capsys)
    assert not (tmp_path / "runs").exists()


def test_navier_stokes_n0_leaves_nothing(tmp_path, capsys):
    assert main(["data", "navier-stokes", "--out", tmp_path / "new" / "deeper" / "ns.npz", "--n", "0"]) == 2
    assert "--n must be a positive integer" in one_line_err(capsys)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- hostile environment
_Usage = namedtuple("_Usage", "total used free")


def _full_disk(monkeypatch):
    monkeypatch.setattr("kdmobile.fileio.shutil.disk_usage", lambda p: _Usage(1 << 30, (1 << 30) - (1 << 19), 1 << 19))


def _read_only(monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("kdmobile.fileio.tempfile.mkstemp", refuse)


@pytest.mark.parametrize("fault, needle", [(_full_disk, "MiB free"), (_read_only, "Read-only file system")])
def test_full_or_read_only_out_fails_first_with_exit_1(fc_run, tmp_path, monkeypatch, capsys, fault, needle):
    called = []
    set_converter(monkeypatch, "onnx", lambda job: called.append(job))
    fault(monkeypatch)
    assert main(["export", fc_run, "--out", tmp_path / "b"]) == 1
    assert needle in one_line_err(capsys) and not called and not (tmp_path / "b").exists()
    assert main(["train", "ammkd", "--teachers", "kd-rn-tiny,kd-rn-tiny", "--max-train", "64", "--out",
                 tmp_path / "runs", "--no-progress"]) == 1
    assert needle in one_line_err(capsys) and not (tmp_path / "runs").exists()
    np.save(tmp_path / "frames.npy", np.zeros((T_IN, 8, 8), np.float32))
    monkeypatch.undo()
    assert main(["export", fc_run, "--out", tmp_path / "b"]) == 0
    fault(monkeypatch)
    capsys.readouterr()
    assert main(["predict", tmp_path / "b" / "fc-onnx-fp32", tmp_path / "frames.npy", "--out",
                 tmp_path / "ro" / "y.npy"]) == 1
    assert needle in one_line_err(capsys) and not (tmp_path / "ro").exists()



def test_enospc_during_conversion_names_the_cause_on_stderr(fc_run, tmp_path, monkeypatch, capsys):
    def disk_full(job):
        job.out_path.write_bytes(b"\x08\x01")  # a truncated model file ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(job.out_path))

    set_converter(monkeypatch, "onnx", disk_full)
    assert main(["export", fc_run, "--out", tmp_path / "b"]) == 1
    err = one_line_err(capsys)
    assert "1 of 1 artifact(s) failed" in err and "onnx fp32" in err and "No space left on device" in err
    assert not (tmp_path / "b").exists()


def test_enospc_anywhere_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "runs" / "x" / "method.json"))

    monkeypatch.setattr("kdmobile.rundir.write_json", full)
    assert main(["train", "ammkd", "--teachers", "kd-rn-tiny,kd-rn-tiny", "--max-train", "64", "--out",
                 tmp_path / "runs", "--no-progress"]) == 1
    err = one_line_err(capsys)
    assert "No space left on device" in err and "method.json" in err


# ------------------------------------------------------------------------------ kill -9 / Ctrl-C mid-export
_KILLER = textwrap.dedent("""
    import os, signal, sys, time
    # A terminal's Ctrl-C reaches Python's default handler; a process started from a runner that ignores SIGINT
    # inherits SIG_IGN (seen in the full suite: the export then finished with exit 0), so set what a shell gives.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import untrusted_helpers  # registers the tiny model
    import dataclasses
    from kdmobile.targets import TARGETS, register_target, resolve
    real = resolve(TARGETS["onnx"].converter)
    def convert(job):
        real(job)
        os.kill(os.getpid(), signal.SIGKILL if sys.argv[3] == "kill" else signal.SIGINT)
        time.sleep(30)
    register_target(dataclasses.replace(TARGETS["onnx"], converter=convert))
    from kdmobile.cli import main
    sys.exit(main(["export", sys.argv[1], "--out", sys.argv[2]]))
""")


@pytest.mark.parametrize("how", ["kill", "int"])
def test_killed_export_leaves_no_work_dir_after_the_next_export(fc_run, tmp_path, how, capsys):
    out = tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{Path(__file__).parent}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(fc_run), str(out), how], env=env,
                          capture_output=True, text=True, timeout=300)
    if how == "kill":
        assert proc.returncode == -signal.SIGKILL
        assert any(".work." in p.name for p in out.iterdir())  # what kill -9 leaves ...
    else:
        assert proc.returncode == 130 and "Traceback" not in proc.stderr
        assert not out.exists() or not any(out.iterdir())  # Ctrl-C cleans up itself
    assert main(["export", fc_run, "--out", out]) == 0  # ... the next export removes
    assert sorted(p.name for p in out.iterdir()) == ["fc-onnx-fp32"]


def test_clean_stale_keeps_live_processes_entries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".b.work.{pid}.abc").mkdir()
    (tmp_path / f".x.json.{pid}.abcd1234.tmp").mkdir()
    (tmp_path / f".b.work.{os.getppid()}.abc").mkdir()  # a live process (our parent): kept
    (tmp_path / "keep").mkdir()
    assert len(clean_stale(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".b.work.{os.getppid()}.abc", "keep"]


def test_resume_removes_temporaries_of_a_killed_training(tmp_path):
    from kdmobile.rundir import new_run_dir

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    run = tmp_path / "runs" / "r"
    write_method(run, "ammkd")
    leftover = run / "stages" / "student" / f".last.pt.{dead}.k1ll3d00.tmp"
    leftover.mkdir(parents=True)
    assert new_run_dir(tmp_path / "runs", "r", resume=True) == run
    assert not leftover.exists() and (run / "INCOMPLETE").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(KDError, match="cannot create it") as e:  # a file in the way: bad input, exit 2
        new_run_dir(tmp_path / "afile" / "runs", "r", resume=False)
    assert e.value.exit_code == 2
