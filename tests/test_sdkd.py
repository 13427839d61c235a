"""SDKD end to end on a tiny generated set, the model contract, and one-line errors for bad data files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from kdmobile.cli import main
from kdmobile.models import create_model, load_model

TINY = ["--n", "6", "--res", "16", "--epochs", "1", "--teacher-epochs", "1", "--no-progress",
        "--set", "data.t_final=21", "--set", "teacher.width=16", "--set", "teacher.heads=2",
        "--set", "student_kwargs={width: 8, blocks: 1}", "--batch-size", "8", "--set", "teacher_train.batch_size=8",
        "--set", "health.drop_weak=false"]  # 1-epoch teachers may be weak; these tests exercise the KD path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))


def test_tiny_sdkd_run(tmp_path, capsys):
    assert main(["train", "sdkd", *TINY, "--teachers", "2", "--out", str(tmp_path / "runs"), "--name", "s",
                 "--set", "teacher_models=[sdkd_teacher, sdkd_simvp]", "--set", "simvp.width=16"]) == 0
    out = capsys.readouterr().out
    assert "student_nokd" in out and "MSE" in out and "reduction" in out
    run = tmp_path / "runs" / "s"
    for name in ["metrics.json", "student.safetensors", "student_nokd.safetensors", "teachers/teacher1.safetensors",
                 "teachers/teacher2.safetensors",
                 "forecast.png",
                 "heldout.npz", "normalisation.json", "config.yaml", "log.jsonl"]:
        assert (run / name).exists(), name
    assert (tmp_path / "cache").is_dir() and list((tmp_path / "cache").glob("*.npz"))
    metrics = json.loads((run / "metrics.json").read_text())
    for m in metrics["models"].values():
        assert m["mse"] > 0 and m["mae"] > 0 and -1 <= m["ssim"] <= 1 and len(m["per_step_mse"]) == 10
        assert m["rel_l2"] > 0 and len(m["per_step_rel_l2"]) == 10
    assert metrics["models"]["student"]["params"] < metrics["models"]["teacher1"]["params"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    sdkd = [r for r in log if r.get("stage") == "student" and r.get("event") == "epoch"]
    assert sdkd and abs(sdkd[0]["w_teacher1"] + sdkd[0]["w_teacher2"] - 1) < 1e-5  # shared adaptive weighting
    assert any(k.startswith("teacher1_low@") for k in sdkd[0]) and any(k.startswith("teacher1_high@") for k in sdkd[0])
    t2, _ = load_model(run / "teachers" / "teacher2.safetensors")  # teacher_models cycles: the second is SimVP
    assert any(type(m).__name__ == "GSTABlock" for m in t2.modules())
    student, extra = load_model(run / "student.safetensors")
    assert extra["task"] == "forecast" and extra["frames_in"] == 10
    assert student(torch.zeros(1, 10, 16, 16)).shape == (1, 10, 16, 16)
    assert (run / "forecast.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["sdkd_teacher", "sdkd_simvp", "sdkd_resnet", "sdkd_unet"])
def test_forecasters_share_the_latent_contract(name):
    model = create_model(name, frames_in=10, frames_out=10)
    out, z = model.forward_with_latent(torch.randn(2, 10, 32, 32))
    assert out.shape == (2, 10, 32, 32) and z.shape[-2:] == (8, 8)


def test_data_seed_fixes_the_split_across_run_seeds(tmp_path):
    """Benchmarks train students of several seeds on one split: data.seed decouples it from the run's seed."""
    from kdmobile.config import SDKDConfig, load_config
    from kdmobile.sdkd.train import SDKD

    def test_ids(seed, data_seed):
        cfg = load_config(SDKDConfig, None, {"seed": seed, "data.seed": data_seed, "data.n": 10, "data.res": 16,
                                             "data.t_final": 21, "out": str(tmp_path)}, [])
        return SDKD(cfg, progress=False).splits.test_traj.tolist()

    assert test_ids(1, 0) == test_ids(2, 0)
    assert test_ids(1, None) != test_ids(3, None)


def _run_cli(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "kdmobile.cli", "train", "sdkd", *args, "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("content, needle", [
    ("wrong-shape", "4-D"),
    ("few-frames", "frames"),
    ("text", "npy"),
])
def test_bad_data_files_give_one_line_and_exit_2(content, needle, tmp_path):
    path = tmp_path / "seq.npy"
    if content == "wrong-shape":
        np.save(path, np.zeros((4, 5), np.float32))
    elif content == "few-frames":
        np.save(path, np.zeros((3, 12, 8, 8), np.float32))
    else:
        path.write_text("not an array")
    proc = _run_cli(["--data", str(path)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "seq.npy" in proc.stderr, proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


def test_sdkd_records_the_teacher_health_check(tmp_path):
    """The same health check as AMMKD's: each teacher's validation MSE against the no-KD student's, recorded with
    the verdict the numbers imply (10 % fewer errors needed), and weak teachers left out by default."""
    args = TINY[:-2]  # without health.drop_weak=false
    assert main(["train", "sdkd", *args, "--out", str(tmp_path / "runs"), "--name", "h"]) == 0
    metrics = json.loads((tmp_path / "runs" / "h" / "metrics.json").read_text())
    health = metrics["teacher_health"]
    assert [c["teacher"] for c in health["teachers"]] == ["teacher"]
    for c in health["teachers"]:
        assert c["metric"] == "val mse" and c["healthy"] == (c["teacher_value"] <= 0.9 * c["student_value"])
    assert health["excluded_from_kd"] == health["weak"]


def test_non_finite_metrics_are_an_error_not_nan_in_json(tmp_path, capsys):
    """Finite data near 1e30: the normalised loss trains, the physical-unit MSE overflows; the run must fail in one
    line and stay INCOMPLETE instead of writing Infinity into metrics.json (issue 21 class 4)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "huge.npy"
    np.save(path, (rng.standard_normal((6, 22, 8, 8)) * 1e30).astype(np.float32))
    args = TINY[4:6] + TINY[6:9] + TINY[11:]  # TINY without its generator settings (--n, --res, data.t_final)
    assert "--n" not in args and "data.t_final=21" not in args and args[0] == "--epochs"
    code = main(["train", "sdkd", "--data", str(path), *args, "--out", str(tmp_path / "runs"), "--name", "huge"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "non-finite metrics" in err[0], err
    run = tmp_path / "runs" / "huge"
    assert not (run / "metrics.json").exists() and (run / "INCOMPLETE").exists()
