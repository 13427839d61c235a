"""`kdmobile export` of forecasters and the export's gates: forecast bundles against the PyTorch student, the MSE and
top-1 thresholds with --strict, and atomicity when an export is interrupted or its verification crashes.
(Split from test_export.py, whose tiny AMMKD run and fake SDKD run these tests share.)"""

from __future__ import annotations

import numpy as np
import torch

from kdmobile.bundle import load_bundle
from kdmobile.export import exporter as ex
from target_helpers import real_converter, set_converter
from kdmobile.export import verify as ver
from kdmobile.models import create_model, load_model, save_model
from kdmobile.runtime import ForecastPredictor

from test_export import F_MEAN, F_STD, T_IN, T_OUT, ammkd_run, main, sdkd_run  # noqa: F401  (fixtures)


# ------------------------------------------------------------------------------------------------ SDKD
def test_forecast_bundles(sdkd_run, tmp_path):
    assert main(["export", sdkd_run, "--precision", "fp32,int8", "--out", tmp_path]) == 0
    model, _ = load_model(sdkd_run / "student.safetensors")
    held = np.load(sdkd_run / "heldout.npz")
    with torch.no_grad():
        ref = model(torch.from_numpy(held["x_test"])).numpy() * F_STD + F_MEAN
    for precision in ("fp32", "int8"):
        b = load_bundle(tmp_path / f"fc-onnx-{precision}")
        m = b.manifest
        assert m["task"] == "forecast" and m["input"]["name"] == "frames" and m["input"]["layout"] == "NTHW"
        assert m["forecast"]["frames_in"] == T_IN and m["forecast"]["frames_out"] == T_OUT
        assert m["forecast"]["mean"] == F_MEAN and m["forecast"]["std"] == F_STD
        pred = ForecastPredictor(b).predict(held["x_test"] * F_STD + F_MEAN)
        assert np.max(np.abs(pred - ref)) < (1e-4 if precision == "fp32" else 0.1)
        v = m["verification"]
        assert v["metric"]["name"] == "mse" and v["status"] == "ok" and "mse_phys" in v["metric"]["all"]


def test_a_forecast_teacher_exports_like_the_student(sdkd_run, tmp_path, capsys):
    """--model teacher: the run's teacher as its own bundle (timed against the student in the same runtime)."""
    teacher = create_model("test_tiny_forecaster")
    torch.nn.init.constant_(next(teacher.parameters()), 0.01)
    extra = load_model(sdkd_run / "student.safetensors")[1]
    save_model(sdkd_run / "teachers" / "teacher.safetensors", teacher, extra=extra)
    assert main(["export", sdkd_run, "--model", "teacher", "--out", tmp_path]) == 0
    b = load_bundle(tmp_path / "fc-teacher-onnx-fp32")
    assert b.manifest["source"]["model"] == "teacher" and "model_sha256" in b.manifest["source"]
    held = np.load(sdkd_run / "heldout.npz")
    with torch.no_grad():
        ref = teacher.eval()(torch.from_numpy(held["x_test"])).numpy() * F_STD + F_MEAN
    assert np.max(np.abs(ForecastPredictor(b).predict(held["x_test"] * F_STD + F_MEAN) - ref)) < 1e-4
    assert main(["export", "--verify", tmp_path / "fc-teacher-onnx-fp32", "--run", sdkd_run]) == 0
    assert "differs" not in capsys.readouterr().out  # verified against the teacher, not the student
    assert main(["export", sdkd_run, "--model", "teacher9", "--out", tmp_path]) == 2
    assert "no such model" in capsys.readouterr().err


def test_only_forecast_runs_export_a_teacher(ammkd_run, tmp_path, capsys):
    assert main(["export", ammkd_run, "--model", "kd-rn-tiny", "--out", tmp_path]) == 2
    assert "only forecast (sdkd) runs export a teacher" in capsys.readouterr().err


def test_forecast_mse_threshold_flags_and_strict_exits_1(sdkd_run, tmp_path, monkeypatch, capsys):
    real = ver._run_bundle

    def worse(bundle, ref):
        y, metric, pre = real(bundle, ref)
        return y, {**metric, "mse": metric["mse"] * 1.2}, pre

    monkeypatch.setattr(ver, "_run_bundle", worse)
    assert main(["export", sdkd_run, "--out", tmp_path, "--strict"]) == 1
    captured = capsys.readouterr()
    assert "FLAGGED" in captured.out and "mse +20.0% > 5%" in captured.err
    b = load_bundle(tmp_path / "fc-onnx-fp32")  # a threshold failure still writes the (flagged) bundle
    assert b.manifest["verification"]["flagged"] is True
    assert main(["export", sdkd_run, "--out", tmp_path]) == 0  # flagged without --strict: exit 0
    assert main(["export", sdkd_run, "--out", tmp_path, "--strict", "--threshold-mse", "0.5"]) == 0


def test_top1_threshold_with_strict(ammkd_run, tmp_path, monkeypatch, capsys):
    real = ver._run_bundle

    def worse(bundle, ref):
        y, metric, pre = real(bundle, ref)
        return y, {**metric, "top1": metric["top1"] - 2.5}, pre

    monkeypatch.setattr(ver, "_run_bundle", worse)
    assert main(["export", ammkd_run, "--out", tmp_path, "--strict"]) == 1
    assert "top1 -2.50 pts (limit -1)" in capsys.readouterr().err
    assert main(["export", ammkd_run, "--out", tmp_path, "--strict", "--threshold-top1", "3"]) == 0
    # strict set in a config file or with --set gates the same way as the flag (it used to be read from the flag only)
    (tmp_path / "strict.yaml").write_text("strict: true\n")
    assert main(["export", ammkd_run, "--out", tmp_path, "--config", tmp_path / "strict.yaml"]) == 1
    assert main(["export", ammkd_run, "--out", tmp_path, "--set", "strict=true"]) == 1
    assert main(["export", ammkd_run, "--out", tmp_path, "--set", "strict=false"]) == 0


# ------------------------------------------------------------------------------------- atomicity
def test_interrupted_export_leaves_no_bundle_and_no_temp_dir(sdkd_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = real_converter("onnx")

    def interrupted(job):
        real(job)  # the model file exists in the work dir ...
        job.out_path.with_name("partial.bin").write_bytes(b"x")
        raise KeyboardInterrupt  # ... and then Ctrl-C

    set_converter(monkeypatch, "onnx", interrupted)
    assert main(["export", sdkd_run, "--out", out]) == 130
    assert not out.exists()  # no bundle, no work dir, not even the empty --out folder it made


def test_an_exception_during_verification_leaves_no_bundle(sdkd_run, tmp_path, monkeypatch, capsys):
    def broken(bundle, ref, th):
        raise RuntimeError("verification crashed")

    monkeypatch.setattr(ex, "verify_bundle", broken)
    assert main(["export", sdkd_run, "--out", tmp_path]) == 1
    assert "FAILED: RuntimeError: verification crashed" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
