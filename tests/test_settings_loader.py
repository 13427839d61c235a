"""One YAML/--set loader for every verb: `kdmobile bench` and `kdmobile export` read --config and --set through
kdmobile.config.load_config (defaults <- file <- --set <- flags), with one-line errors like train's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_predict import build_tiny, main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny(tmp_path_factory.getbasetemp() / "kd_tiny_runs")


def test_bench_reads_config_then_set_then_flags(tiny, tmp_path: Path) -> None:
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("runs: 7\nwarmup: 1\nthreads: 1\n")
    out = tmp_path / "bench"
    assert main(["bench", tiny["a_onnx"], "--no-teachers", "--no-progress", "--config", cfg, "--set", "warmup=0",
                 "--out", out]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["runs"] == 7 and report["settings"]["warmup"] == 0
    assert {r["n_runs"] for r in report["rows"]} == {7}
    assert main(["bench", tiny["a_onnx"], "--no-teachers", "--no-progress", "--config", cfg, "--runs", "4",
                 "--out", out]) == 0  # a flag beats the file
    assert {r["n_runs"] for r in json.loads((out / "report.json").read_text())["rows"]} == {4}


def test_bench_and_export_settings_errors_are_one_line(tiny, tmp_path: Path, capsys) -> None:
    for args, needle in [
        (["bench", tiny["a_onnx"], "--set", "runs=0"], "--runs must be between 1 and 1000000, got 0"),
        (["bench", tiny["a_onnx"], "--set", "rnus=3"], "rnus"),
        (["bench", tiny["a_onnx"], "--config", tmp_path / "missing.yaml"], "no such config file"),
        (["export", tiny["ammkd"], "--set", "thresholds.top1=-1", "--out", tmp_path], "--threshold-top1 must be >= 0"),
        (["export", "--verify", tiny["a_onnx"], "--set", "strict=true"], "takes no --set"),
    ]:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, (args, err)


def test_export_threshold_from_set_reaches_the_manifest(tiny, tmp_path: Path) -> None:
    assert main(["export", tiny["sdkd"], "--set", "thresholds.mse=0.2", "--out", tmp_path / "b"]) == 0
    bundle = next((tmp_path / "b").iterdir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["verification"]["thresholds"]["mse_relative"] == 0.2
