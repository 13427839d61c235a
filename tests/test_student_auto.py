"""`kdmobile train ammkd --student auto --latency-budget-ms X` (issue 23): candidates timed on this host as export
ships them, cached, and the most accurate by the zoo's recorded accuracy that fits the budget chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_AMMKD
from kdmobile.errors import UserError
from kdmobile.student_choice import ARM64_INT8_MS, ZOO_TOP1, within_budget
from untrusted_helpers import main, one_line_err

ROOT = Path(__file__).resolve().parents[1]
SMALL = "student_candidates=[mobilenetv3_small_050, mobilenetv2_050]"


def test_recorded_accuracy_is_the_zoo_result() -> None:
    rows = json.loads((ROOT / "benchmarks/results/student_zoo.json").read_text())["rows"]
    assert dict(ZOO_TOP1) == pytest.approx({r["backbone"]: r["top1_64px_mean"] for r in rows}, abs=0.005)
    assert all(len(r["top1_64px_seeds"]) >= 2 for r in rows) and len(rows) >= 16


def test_most_accurate_within_budget() -> None:
    p50 = {"mobilenetv3_small_050": 0.1, "mobilenetv2_100": 0.4, "resnet18": 0.9}
    assert within_budget(p50, 0.5)[0] == "mobilenetv2_100"
    assert within_budget(p50, 1.0)[0] == "resnet18"  # 0.9 ms is exactly 90 % of the budget: kept
    assert within_budget(p50, 0.95)[0] == "mobilenetv2_100"  # 0.9 ms > 90 % of 0.95 ms: no headroom left
    with pytest.raises(UserError, match="no candidate fits on this host .fastest: mobilenetv3_small_050 at 0.1 ms"):
        within_budget(p50, 0.1)
    with pytest.raises(UserError, match="no recorded accuracy for vit_huge"):
        within_budget({"vit_huge": 0.1}, 1.0)


@pytest.mark.parametrize("args, message", [
    (["--student", "auto"], "--student auto needs --latency-budget-ms"),
    (["--latency-budget-ms", "2"], "--latency-budget-ms applies to --student auto only"),
    (["--student", "auto", "--latency-budget-ms", "0"], "latency_budget_ms: Input should be greater than 0"),
    (["--student", "auto", "--latency-budget-ms", "1", "--set", "student_candidates=[vit_huge]"],
     "no recorded accuracy for vit_huge"),
    (["--student", "auto", "--latency-budget-ms", "1", "--set", "student_candidates=[]"], "student_candidates"),
    (["--runtime", "tflite"], "--runtime and --int8-for apply to --student auto only"),
    (["--student", "auto", "--latency-budget-ms", "3", "--int8-for", "arm64", "--runtime", "tflite"],
     "give one of them"),
    (["--student", "auto", "--latency-budget-ms", "3", "--int8-for", "arm64", "--set",
      "student_candidates=[lcnet_035]"], "--int8-for arm64: no published ARM64 figure for lcnet_035"),
    (["--student", "auto", "--latency-budget-ms", "1", "--runtime", "coreml"], "invalid choice: 'coreml'"),
])
def test_bad_auto_settings_are_one_line(args, message, tmp_path, capsys) -> None:
    assert main(["train", "ammkd", "--dry-run", "--out", tmp_path, *args]) == 2
    assert message in one_line_err(capsys)
    assert not any(tmp_path.iterdir())


def test_auto_times_candidates_once_and_picks_by_the_rule(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))
    args = ["train", "ammkd", "--dry-run", "--out", tmp_path / "runs", "--student", "auto", "--latency-budget-ms", "50",
            "--set", SMALL]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("--student auto: timing") == 2
    table = {line.split()[0]: float(line.split()[2]) for line in out.splitlines()
             if line.split() and line.split()[0] in ("mobilenetv3_small_050", "mobilenetv2_050")}
    assert set(table) == {"mobilenetv3_small_050", "mobilenetv2_050"} and all(ms > 0 for ms in table.values())
    chosen = within_budget(table, 50.0)[0]  # the rule applied to the printed measurements
    assert f"student    {chosen} (--student auto" in out
    assert main(args) == 0  # a second run reuses the host's measurements and makes the same choice
    again = capsys.readouterr().out
    assert "--student auto: timing" not in again and again.count("cached") == 2
    assert f"student    {chosen} (--student auto" in again


def test_auto_times_in_the_runtime_asked_for(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))
    assert main(["train", "ammkd", "--dry-run", "--out", tmp_path / "runs", "--student", "auto",
                 "--latency-budget-ms", "50", "--runtime", "tflite", "--set",
                 "student_candidates=[mobilenetv3_small_050]"]) == 0
    out = capsys.readouterr().out
    assert "timing mobilenetv3_small_050 at 32 px (fp32, tflite, 1 thread)" in out
    assert "latency: LiteRT (XNNPACK), 1 thread" in out and "student    mobilenetv3_small_050 (--student auto" in out
    cache = json.loads((tmp_path / "cache" / "student_latency.json").read_text())
    assert [k.split("|")[-5] for k in cache] == ["tflite"]  # cached per runtime: an onnx run times again


def test_int8_for_arm64_reads_the_published_table(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))
    assert main(["train", "ammkd", "--dry-run", "--out", tmp_path / "runs", "--student", "auto",
                 "--latency-budget-ms", "3", "--int8-for", "arm64"]) == 0
    out = capsys.readouterr().out
    assert "timing" not in out and "NOT measured here" in out and "2404.10518" in out
    fits = {b: ms for b, ms in ARM64_INT8_MS.items() if ms <= 3 * 0.9}  # 2.4 ms: mobilenetv4_conv_small, v2_050
    best = max(fits, key=lambda b: ZOO_TOP1[b])
    assert f"student    {best} (--student auto" in out
    assert not (tmp_path / "cache").exists()  # nothing was timed or cached


@pytest.mark.slow
def test_auto_int8_student_runs_within_its_budget_in_bench(tmp_path, monkeypatch) -> None:
    """Acceptance 3 of issue 23, end to end: the chosen student's exported int8 bundle's p50 in `kdmobile bench`
    fits the budget (a timing: slow-marked, run on a quiet machine)."""
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))
    budget = 0.5
    assert main(["train", "ammkd", *TINY_AMMKD, "--student", "auto", "--latency-budget-ms", budget, "--int8",
                 "--set", "student_candidates=[mobilenetv3_small_050, mobilenetv2_050, resnet18]",
                 "--out", tmp_path, "--name", "auto"]) == 0
    assert main(["export", tmp_path / "auto", "--precision", "int8", "--out", tmp_path / "b"]) == 0
    assert main(["bench", tmp_path / "b" / "auto-onnx-int8", "--out", tmp_path / "bench", "--runs", "300"]) in (0, 1)
    rows = json.loads((tmp_path / "bench" / "report.json").read_text())["rows"]
    p50 = min(r["p50_ms"] for r in rows if r["batch"] == 1)
    assert p50 <= budget, f"the auto-chosen student's int8 bundle took {p50:.3f} ms > {budget} ms"
