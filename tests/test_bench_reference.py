"""`kdmobile bench --reference`: latency-only rows of open_clip image towers in the students' runtime, speed-ups
against them within that runtime, achieved GFLOP/s against the measured peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_predict import build_tiny, main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny(tmp_path_factory.getbasetemp() / "kd_tiny_runs")


def test_reference_rows_and_speedups(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    # kd-rn-tiny: a small open_clip config (the built-in ones are registered); users name ViT-B-32, RN50, ...
    assert main(["bench", tiny["a_onnx"], "--no-teachers", "--reference", "kd-rn-tiny", "--runs", "5",
                 "--no-progress", "--out", out]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    ref, student = rows["reference:kd-rn-tiny"], rows["a-onnx-fp32"]
    assert ref["role"] == "reference" and ref["backend"] == "onnxruntime" and ref["metric"] is None
    assert ref["p50_ms"] > 0 and ref["flops"] > 0 and "latency only" in ref["metric_source"]
    assert student["speedup_vs_reference"] == pytest.approx(ref["p50_ms"] / student["p50_ms"])
    assert student["reference_model"] == "reference:kd-rn-tiny"
    peak = report["host"]["peak_fp32_gflops"]
    assert peak > 0 and student["gflops_per_s"] > 0 and student["frac_peak"] == pytest.approx(
        student["gflops_per_s"] / peak)
    assert "faster than reference:kd-rn-tiny" in capsys.readouterr().out
    assert list((tmp_path / "cache" / "reference").glob("kd-rn-tiny-*px-*.onnx"))  # built once, cached


def test_unknown_reference_is_one_line(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    assert main(["bench", tiny["a_onnx"], "--no-teachers", "--reference", "ViT-Q-99", "--out", tmp_path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an open_clip model" in err[0]
