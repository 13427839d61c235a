"""A new user's first hour: run plan and --dry-run, --teachers-from, quiet consoles, tables that fit 120 columns,
a latency plot whose labels never overlap, bench finding the bundles export wrote."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdmobile.bench.report import compact_notes, compact_rows, plot_figure, title_line
from kdmobile.console import fmt_duration
from kdmobile.table import fit_table, precision_label


def _row(model, role, backend, precision, quant, p50, metric, device="cpu"):
    return {"model": model, "role": role, "run": "demo-ammkd", "backend": backend, "device": device,
            "precision": precision, "quantization": quant, "size_bytes": 2_580_000, "metric_name": "top1",
            "metric": metric, "metric_source": "measured on held-out (N=359)", "batch": 1, "batch_mode": "batched",
            "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3, "peak_rss_mb": 12.5, "peak_gpu_mb": None,
            "speedup_vs_teacher": 3.33 / p50 if role == "student" else None, "status": "ok"}


# The demo's bench (README headline): four student bundles and two teachers; ONNX fp32/int8 nearly coincide.
DEMO_ROWS = [
    _row("demo-ammkd-onnx-fp32", "student", "onnxruntime", "fp32", "none", 0.248, 96.1),
    _row("demo-ammkd-onnx-int8", "student", "onnxruntime", "int8", "w8a32", 0.263, 95.8),
    _row("demo-ammkd-tflite-fp32", "student", "litert", "fp32", "none", 0.085, 96.1),
    _row("demo-ammkd-tflite-int8", "student", "litert", "int8", "dynamic_wi8_afp32", 0.106, 96.1),
    _row("demo-ammkd/teacher:kd-vit-s", "teacher", "torch eager", "fp32", None, 3.33, 32.0),
    _row("demo-ammkd/teacher:kd-rn-s", "teacher", "torch eager", "fp32", None, 8.64, 97.2),
]


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("rows", [DEMO_ROWS, [dict(r, metric=96.1, p50_ms=0.25) for r in DEMO_ROWS]])
def test_plot_labels_every_point_without_overlap(rows):
    import matplotlib.pyplot as plt

    fig = plot_figure(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "point-label"]
    assert len(labels) == len(rows)  # every point has its own label
    for row in rows:
        assert sum(t.get_text().startswith(row["model"] + " ") for t in labels) == 1, row["model"]
    boxes = [t.get_window_extent(renderer) for t in labels]
    fig_box = fig.bbox
    for i, a in enumerate(boxes):
        assert a.width > 0 and a.height > 0
        assert a.x1 <= fig_box.x1 * 1.6  # drawn (saved with bbox_inches="tight")
        for b in boxes[i + 1:]:
            assert not _overlaps(a, b), (labels[i].get_text(), a, b)
    plt.close(fig)


def test_bench_table_fits_120_columns_and_names_int8_formats():
    rows = [dict(r, model=r["model"].replace("demo-ammkd", "my-very-long-experiment-name-ammkd-seed3")) for r in DEMO_ROWS]
    rows.append(dict(rows[-1], device="cuda", peak_gpu_mb=512.0, peak_rss_mb=None))
    text = fit_table(["model", "backend", "precision", "batch", "size", "metric", "p50 ms", "p99 ms", "peak mem",
                      "speed-up"], compact_rows(rows), 120)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "int8 (w8a32)" in text and "int8 (dynamic)" in text and "torch cuda" in text
    assert "…" in text  # the long model names were shortened, keeping both ends
    names = [line.split("  ")[0].strip() for line in text.splitlines()[2:]]
    assert all(n.startswith("my-") for n in names) and len(set(names)) == len(DEMO_ROWS)  # still told apart
    assert any(n.endswith("-onnx-int8") for n in names) and any(n.endswith(":kd-vit-s") for n in names)
    assert all(len(n) <= 120 for n in compact_notes(rows))
    assert "WARNING" in title_line(rows, ["demo"]) and "WARNING" not in title_line(rows)
    assert precision_label("int8", "static_wi8_ai8") == "int8 (static)" and precision_label("fp32", "float32") == "fp32"


def test_export_table_is_fitted_unless_wide():
    from kdmobile.export.report import Artifact, ExportReport
    from kdmobile.export.verify import format_results

    art = Artifact("onnx", "int8", size=1000, verification={"status": "FLAGGED: " + "top-1 dropped " * 12})
    rows = [art.row()]
    report = ExportReport([art], format_results(rows), rows)
    assert max(map(len, report.render().splitlines())) <= 120
    assert "[1]" in report.render() and " ".join(report.render().split()).count("top-1 dropped") == 12  # kept
    assert max(map(len, report.render(wide=True).splitlines())) > 120


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_dropping_open_clips_false_warning_keeps_real_warnings_and_logging_state():
    proc = _python(
        "import logging\n"
        "from kdmobile.console import drop_log_message\n"
        "with drop_log_message('^No pretrained weights loaded for model '):\n"
        "    logging.warning(\"No pretrained weights loaded for model 'kd-vit-s'. Model initialized randomly.\")\n"
        "    logging.warning('a real problem')\n"
        "assert logging.getLogger().handlers == [] and logging.getLogger().filters == []\n"
        "logging.getLogger('x').warning('later warning')\n")
    assert proc.returncode == 0, proc.stderr
    assert "No pretrained" not in proc.stderr
    assert "a real problem" in proc.stderr and "later warning" in proc.stderr


def test_native_stderr_redirect_drops_only_the_xnnpack_line_and_restores_fd2():
    proc = _python(
        "import os\n"
        "from kdmobile.console import quiet_native_stderr\n"
        "with quiet_native_stderr():\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nnative error 42\\n')\n"
        "os.write(2, b'after the block\\n')\n")
    assert proc.returncode == 0, proc.stderr
    assert "XNNPACK" not in proc.stderr and "native error 42" in proc.stderr and "after the block" in proc.stderr
    assert fmt_duration(42) == "42s" and fmt_duration(185) == "3m05s" and fmt_duration(4320) == "1h12m"


def test_clip_teacher_reload_logs_no_false_warning(caplog):
    from kdmobile.models.clip_teacher import ClipTeacher, TeacherSpec

    with caplog.at_level(logging.WARNING):
        ClipTeacher(TeacherSpec("kd-vit-tiny", None), load_pretrained=False)
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    assert logging.getLogger().filters == []


TINY = ["--epochs", "1", "--max-train", "96", "--max-test", "40", "--no-progress", "--set", "embed_dim=16",
        "--set", "student=mobilenetv3_small_050", "--batch-size", "32", "--set", "teacher_train.batch_size=32"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from kdmobile.cli import main

    runs = tmp_path / "runs"
    assert main(["train", "ammkd", "--dry-run", "--teachers", "kd-vit-tiny,kd-rn-tiny", "--teacher-epochs", "1",
                 *TINY, "--out", str(runs)]) == 0
    out = capsys.readouterr().out
    for text in ("run plan: ammkd", "train 96 / val", "32x32 px", "teacher/kd-vit-tiny", "teacher/kd-rn-tiny",
                 "student", "torch threads", "built-in config kd-vit-tiny", "estimate   ~", "dry run"):
        assert text in out, text
    assert not runs.exists()
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))
    assert main(["train", "sdkd", "--dry-run", "--n", "4", "--res", "16", "--out", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "run plan: sdkd" in out and "generated and cached on the first real run" in out
    assert not runs.exists() and not (tmp_path / "cache").exists()


def test_teachers_from_trains_only_a_student_with_the_same_teacher_metrics(tmp_path, capsys):
    from kdmobile.cli import main

    runs = tmp_path / "runs"
    assert main(["train", "ammkd", "--teachers", "kd-vit-tiny,kd-rn-tiny", "--teacher-epochs", "1", *TINY,
                 "--out", str(runs), "--name", "src"]) == 0
    capsys.readouterr()
    assert main(["train", "ammkd", "--teachers-from", str(runs / "src"), "--weighting", "none", *TINY,
                 "--out", str(runs), "--name", "reuse"]) == 0
    out = capsys.readouterr().out
    assert "reused as is (no training)" in out and f"from {runs / 'src'}/teachers/" in out
    log = [json.loads(line) for line in (runs / "reuse" / "log.jsonl").read_text().splitlines()]
    trained = {r["stage"] for r in log if r.get("event") == "epoch"}
    assert trained == {"student"}
    src = json.loads((runs / "src" / "metrics.json").read_text())["models"]
    new = json.loads((runs / "reuse" / "metrics.json").read_text())["models"]
    for name in ("teacher:kd-vit-tiny", "teacher:kd-rn-tiny"):
        assert (new[name]["top1"], new[name]["top5"]) == (src[name]["top1"], src[name]["top5"])
    assert list(new)[:2] == ["teacher:kd-vit-tiny", "teacher:kd-rn-tiny"]  # the source run's order
    assert main(["train", "ammkd", "--teachers-from", str(runs / "src"), "--teachers", "kd-vit-tiny"]) == 2
    assert main(["train", "sdkd", "--teachers-from", str(runs / "src"), "--dry-run"]) == 2


def test_sdkd_teachers_from_reuses_the_teacher(tmp_path, capsys, monkeypatch):
    from kdmobile.cli import main

    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))
    tiny = ["--n", "6", "--res", "16", "--epochs", "1", "--no-progress",
            "--set", "data.t_final=21", "--set", "teacher.width=16", "--set", "teacher.heads=2",
            "--set", "student_kwargs={width: 8, blocks: 1}", "--batch-size", "8", "--set", "teacher_train.batch_size=8",
            "--set", "baseline=false", "--out", str(tmp_path / "runs")]
    assert main(["train", "sdkd", *tiny, "--teacher-epochs", "1", "--name", "a"]) == 0
    capsys.readouterr()
    assert main(["train", "sdkd", *tiny, "--teachers-from", str(tmp_path / "runs" / "a"), "--name", "b"]) == 0
    out = capsys.readouterr().out
    assert "reused as is, no training" in out and "teacher/teacher" not in out
    runs = tmp_path / "runs"
    log = [json.loads(line) for line in (runs / "b" / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log if r.get("event") == "epoch"} == {"student"}
    a, b = (json.loads((runs / n / "metrics.json").read_text())["models"]["teacher"] for n in ("a", "b"))
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-6)
    assert ((runs / "b" / "teachers" / "teacher.safetensors").read_bytes()
            == (runs / "a" / "teachers" / "teacher.safetensors").read_bytes())


def test_export_records_bundles_for_bench(tmp_path):
    from kdmobile.rundir import record_bundles, recorded_bundles

    run = tmp_path / "run"
    run.mkdir()
    a, b = tmp_path / "x" / "r-onnx-fp32", tmp_path / "y" / "r-onnx-int8"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert recorded_bundles(run) == []
    record_bundles(run, [a])
    record_bundles(run, [b, a])  # a later export: newest first, each bundle once
    assert recorded_bundles(run) == [b.resolve(), a.resolve()]
    b.rmdir()
    assert recorded_bundles(run) == [a.resolve()]  # bundles deleted since are skipped
    (run / "exports.json").write_text("{not json")
    assert recorded_bundles(run) == []
