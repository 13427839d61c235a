"""`kdmobile bench`: latency statistics, memory probe, report files and schema, speed-ups, CI gates, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdmobile.bench import cli as bench_cli
from kdmobile.bench import report as rep
from kdmobile.bench.discover import plan
from kdmobile.bench.memory import probe_memory
from kdmobile.bench.settings import Settings

from test_predict import build_tiny, ensure_verb, main

ensure_verb("bench", bench_cli.register)

ROW_KEYS = {"model", "role", "backend", "precision", "size_bytes", "params", "flops", "metric_name", "metric",
            "p50_ms", "p90_ms", "p99_ms", "mean_ms", "batch", "peak_rss_mb", "peak_gpu_mb", "speedup_vs_teacher",
            "metric_source", "device", "run", "n_runs", "batch_mode"}
FAST = ["--runs", "5", "--warmup", "1", "--no-progress"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny(tmp_path_factory.getbasetemp() / "kd_tiny_runs")


@pytest.fixture(scope="module")
def full_bench(tiny, tmp_path_factory) -> tuple[int, Path]:
    """Both runs (their ONNX bundles and teachers) at batch 1 and 2."""
    out = tmp_path_factory.mktemp("bench_full")
    rc = main(["bench", tiny["ammkd"], tiny["sdkd"], "--bundles", tiny["bundles"], "--batch", "2", "--out", out,
               *FAST])
    return rc, out


def _row(sample_p50: float, **kw) -> dict:
    base = {"model": "m", "role": "student", "run": "r", "source": "s", "backend": "onnxruntime", "device": "cpu",
            "precision": "fp32", "quantization": None, "size_bytes": 1000, "params": 10, "flops": 20,
            "metric_name": "top1", "metric": 50.0, "metric_source": "measured", "batch": 1, "batch_mode": "batched",
            "threads": 1, "warmup": 1, "peak_rss_mb": 1.0, "peak_gpu_mb": None}
    return {**base, **rep.latency_fields([sample_p50] * 3), **kw}


# ------------------------------------------------------------------------------------------ report path (no models)
def test_latency_statistics_through_report(tmp_path) -> None:
    samples = [float(i) for i in range(1, 101)]          # 1..100 ms
    student = {**_row(1.0), **rep.latency_fields(samples)}
    teacher = _row(101.0, model="t", role="teacher", backend="torch eager")
    report = rep.build_report({"cpu": "x", "isa": {"avx2": True}}, Settings().as_dict(), [student, teacher])
    paths = rep.write_report(tmp_path, report)
    row = json.loads(paths["json"].read_text())["rows"][0]
    assert row["p50_ms"] == pytest.approx(50.5) and row["mean_ms"] == pytest.approx(50.5)
    assert row["p90_ms"] == pytest.approx(90.1) and row["p99_ms"] == pytest.approx(99.01)
    assert row["min_ms"] == 1.0 and row["max_ms"] == 100.0 and row["n_runs"] == 100
    assert row["speedup_vs_teacher"] == pytest.approx(101.0 / 50.5)
    assert row["speedup_reference"].startswith("t (torch eager, cpu)")


def test_speedup_uses_same_run_batch_and_device() -> None:
    rows = [_row(2.0), _row(4.0, batch=8), _row(1.0, model="g", device="cuda"),
            _row(10.0, model="t1", role="teacher"), _row(20.0, model="t2", role="teacher"),
            _row(80.0, model="t1", role="teacher", batch=8), _row(5.0, model="other", run="r2")]
    rep.add_speedups(rows)
    assert rows[0]["speedup_vs_teacher"] == pytest.approx(5.0)      # first CPU teacher (t1), not t2
    assert rows[1]["speedup_vs_teacher"] == pytest.approx(20.0)     # same batch
    assert rows[2]["speedup_vs_teacher"] is None                    # no teacher measured on CUDA
    assert rows[6]["speedup_vs_teacher"] is None                    # another run's teacher is not a reference


def test_speedup_prefers_the_fastest_teacher_in_the_students_runtime() -> None:
    """An exported teacher (kdmobile export --model teacher) is the reference in its runtime; else torch eager."""
    rows = [_row(1.0), _row(1.0, model="tflite", backend="litert"),
            _row(4.0, model="t-eager", role="teacher", backend="torch eager"),
            _row(9.0, model="t-onnx-fp32", role="teacher"), _row(6.0, model="t-onnx-int8", role="teacher")]
    rep.add_speedups(rows)
    assert rows[0]["speedup_vs_teacher"] == pytest.approx(6.0) and rows[0]["speedup_reference"].startswith("t-onnx-int8")
    assert rows[1]["speedup_vs_teacher"] == pytest.approx(4.0)  # no LiteRT teacher: the first one


def test_gates_logic() -> None:
    rows = [_row(2.0, metric=80.0), _row(3.0, model="f", metric_name="mse", metric=0.5),
            _row(9.0, model="t", role="teacher", metric=10.0)]
    g = {x["gate"]: x for x in rep.evaluate_gates(rows, min_metric=90, max_mse=0.1, max_latency_ms=2.5)}
    assert [f["model"] for f in g["min-metric"]["failures"]] == ["m"]      # mse rows and teachers are not gated
    assert [f["model"] for f in g["max-mse"]["failures"]] == ["f"]
    assert [f["model"] for f in g["max-latency-ms"]["failures"]] == ["f"]
    assert all(x["passed"] for x in rep.evaluate_gates(rows, min_metric=50, max_mse=1, max_latency_ms=5))


# ---------------------------------------------------------------------------------------------- measurements
def test_memory_probe_positive_growth(tiny) -> None:
    grown = probe_memory({"kind": "bundle", "path": str(tiny["a_onnx"]), "threads": 1, "batch": 1})
    assert grown is not None and grown > 0


def test_report_schema_and_files(tiny, full_bench) -> None:
    rc, out = full_bench
    assert rc == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["schema"] == rep.SCHEMA
    assert {"host", "settings", "rows", "gates", "notes"} <= set(doc)
    assert {"cpu", "isa", "threads", "onnxruntime", "gpu"} <= set(doc["host"])
    assert {"avx2", "avx512f", "avx512_vnni", "amx"} <= set(doc["host"]["isa"])
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["p50_ms"] > 0 and row["p50_ms"] <= row["p99_ms"]
        assert row["peak_rss_mb"] is not None and row["peak_rss_mb"] > 0
    by = {(r["model"], r["batch"]): r for r in doc["rows"]}
    assert {b for _, b in by} == {1, 2}
    a, s = by[("a-onnx-fp32", 1)], by[("s-onnx-fp32", 1)]
    assert (a["backend"], a["metric_name"], a["role"]) == ("onnxruntime", "top1", "student")
    assert s["metric_name"] == "mse" and s["metric"] > 0
    metrics = json.loads((tiny["ammkd"] / "metrics.json").read_text())
    assert a["metric"] == pytest.approx(metrics["models"]["student"]["top1"])   # bundle == PyTorch student here
    assert a["params"] == metrics["models"]["student"]["image_params"] and a["flops"] > 0
    teachers = [r for r in doc["rows"] if r["role"] == "teacher"]
    assert {r["model"] for r in teachers} == {"a/teacher:kd-vit-tiny", "a/teacher:kd-rn-tiny", "s/teacher"}
    assert all("metrics.json" in r["metric_source"] for r in teachers)
    # every teacher in PyTorch eager and, exported by bench, in onnxruntime: the ONNX students' speed-up is a ratio
    # within onnxruntime (issue 23)
    assert {(r["model"], r["backend"]) for r in teachers if r["batch"] == 1} == {
        (m, b) for m in ("a/teacher:kd-vit-tiny", "a/teacher:kd-rn-tiny", "s/teacher") for b in ("torch eager",
                                                                                               "onnxruntime")}
    assert a["speedup_vs_teacher"] > 0 and "a/teacher:kd-" in a["speedup_reference"]
    assert "(onnxruntime, cpu)" in a["speedup_reference"] and "s/teacher (onnxruntime, cpu)" in s["speedup_reference"]
    baseline = {r["model"]: r for r in doc["rows"] if r["role"] == "baseline" and r["batch"] == 1}
    assert set(baseline) == {"a/student_nokd", "s/student_nokd"}  # what the student reaches without the teachers
    assert baseline["a/student_nokd"]["metric"] == pytest.approx(metrics["models"]["student_nokd"]["top1"])
    md = (out / "report.md").read_text()
    assert "no KD" in md
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")] == rep.MD_HEADERS
    assert "ISA: AVX2" in md
    assert (out / "latency_vs_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_without_bundles_benches_torch_student(tiny, tmp_path, capsys) -> None:
    empty = tmp_path / "no_bundles"
    empty.mkdir()
    capsys.readouterr()
    assert main(["bench", tiny["sdkd"], "--bundles", empty, "--no-teachers", "--out", tmp_path / "o", *FAST]) == 0
    captured = capsys.readouterr()
    assert "benchmarked the PyTorch student (torch eager)" in " ".join(captured.err.split())  # wrapped at 120
    assert "WARNING: no exported bundles found for s:" in captured.out  # the table's title says so too
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["torch_fallback"] == ["s"]
    (row,) = report["rows"]
    assert (row["model"], row["backend"], row["metric_name"]) == ("s/student", "torch eager", "mse")
    metrics = json.loads((tiny["sdkd"] / "metrics.json").read_text())
    assert row["metric"] == pytest.approx(metrics["models"]["student"]["mse"], rel=1e-4)


# ---------------------------------------------------------------------------------------------------- gates
def test_gates_exit_codes(tiny, tmp_path, capsys) -> None:
    base = ["bench", tiny["a_onnx"], tiny["s_onnx"], "--no-teachers", *FAST]
    capsys.readouterr()
    assert main([*base, "--out", tmp_path / "g1", "--min-metric", "101"]) == 1
    err = capsys.readouterr().err
    assert "gate --min-metric 101 failed: a-onnx-fp32" in err and "s-onnx-fp32" not in err
    assert main([*base, "--out", tmp_path / "g2", "--max-latency-ms", "0.000001"]) == 1
    err = capsys.readouterr().err
    assert "gate --max-latency-ms" in err and "a-onnx-fp32" in err and "s-onnx-fp32" in err
    assert main([*base, "--out", tmp_path / "g3", "--max-mse", "0"]) == 1
    assert main([*base, "--out", tmp_path / "g4", "--min-metric", "0", "--max-mse", "1e9",
                 "--max-latency-ms", "1e6"]) == 0
    gates = json.loads((tmp_path / "g4" / "report.json").read_text())["gates"]
    assert [g["gate"] for g in gates] == ["min-metric", "max-mse", "max-latency-ms"] and all(g["passed"] for g in gates)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_one_line_exit_2(tiny, tmp_path, capsys) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny["a_onnx"], tampered)
    raw = bytearray((tampered / "model.onnx").read_bytes())
    raw[100] ^= 0x01
    (tampered / "model.onnx").write_bytes(bytes(raw))
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    cases = [([tmp_path / "missing"], "no such bundle or run directory"),
             ([tampered], "checksum mismatch"),
             ([text], "not a bundle"),
             ([tmp_path], "not a bundle"),
             ([tiny["a_onnx"], "--runs", "0"], "--runs"),
             ([tiny["a_onnx"], "--bogus-flag"], "unrecognized arguments")]
    for args, needle in cases:
        capsys.readouterr()
        assert main(["bench", *args, "--no-progress", "--out", tmp_path / "x"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err, (args, err)
    assert not (tmp_path / "x").exists()


def test_default_out_and_bench_without_torch(tiny, tmp_path) -> None:
    """Bundles alone are benchmarked with torch blocked; the default output is bench/RUNNAME."""
    code = (
        "import sys, argparse\n"
        "sys.modules['torch'] = None\n"
        "import kdmobile.cli as c, kdmobile.bench.cli as b\n"
        "sub = next(a for a in c.build_parser()._actions if isinstance(a, argparse._SubParsersAction))\n"
        "if 'bench' not in sub.choices: c._EXTRA_VERBS.append(b.register)\n"
        "sys.exit(c.main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", code, "bench", str(tiny["s_onnx"]), *FAST], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch is not installed" in done.stderr
    rows = json.loads((tmp_path / "bench" / "s" / "report.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["s-onnx-fp32"]
    p = plan([str(tiny["ammkd"])], tiny["bundles"], Settings(teachers=False))
    models = [s.model for s in p.subjects]  # other tests of the session may export more of run a into that folder
    assert "a-onnx-fp32" in models and all(m.startswith("a-onnx-") for m in models)


def test_model_that_fails_to_run_is_reported(tmp_path) -> None:
    """A model that raises while loading gets a FAILED row (no numbers) and fails the latency gate; others go on."""
    from kdmobile.bench.measure import measure
    from kdmobile.bench.subjects import Subject

    class Broken(Subject):
        def memory(self, settings):
            return {"peak_rss_mb": None, "peak_gpu_mb": None}

        def load(self, settings):
            raise RuntimeError("converter produced garbage")

        def probe_spec(self, settings):  # never reached: load fails first
            raise AssertionError("probe_spec called after a failed load")

        def timed(self, batch, settings):
            raise AssertionError("timed called after a failed load")

        def metric(self):
            raise AssertionError("metric called after a failed load")

    s = Broken("broken-onnx-fp32", "student", None, "onnxruntime", "cpu", "fp32", "x", None, None, None)
    rows = measure([s], Settings(runs=1, warmup=0, batches=[1, 2], progress=False))
    assert [r["batch"] for r in rows] == [1, 2]
    assert rows[0]["p50_ms"] is None and rows[0]["status"].startswith("FAILED: RuntimeError: converter produced")
    assert rep.failed_models(rows) == ["broken-onnx-fp32"]
    (gate,) = rep.evaluate_gates(rows, max_latency_ms=10)
    assert not gate["passed"] and gate["failures"][0]["reason"] == "did not run"
    paths = rep.write_report(tmp_path, rep.build_report({"isa": {}}, Settings().as_dict(), rows, [gate]))
    assert "FAILED: RuntimeError" in paths["md"].read_text()


def test_teacher_towers_are_cached_checked_and_refused_when_they_differ(tiny, full_bench, tmp_path) -> None:
    """bench's ONNX export of each teacher (issue 23) lives in RUN/towers/ with its parity against PyTorch, is reused
    while the teacher file is unchanged, and a tower whose recorded parity is bad is refused with a note (the
    PyTorch rows remain)."""
    import shutil

    from kdmobile.bench.towers import MIN_COSINE, build_tower, tower_subjects
    from kdmobile.rundir import TOWERS_DIR, open_run, teacher_file

    assert full_bench[0] == 0
    run = open_run(tiny["ammkd"], "bench")
    towers = run.path / TOWERS_DIR
    info = json.loads((towers / "kd-vit-tiny.json").read_text())
    assert info["parity"]["min_cosine"] >= MIN_COSINE and info["parity"]["samples"] > 1
    before = (towers / "kd-vit-tiny.onnx").stat().st_mtime_ns
    build_tower(run, teacher_file(run.path, "kd-vit-tiny"), "clip-teacher", log=lambda s: None)
    assert (towers / "kd-vit-tiny.onnx").stat().st_mtime_ns == before  # cached, not rebuilt
    copy = tmp_path / "a"
    shutil.copytree(run.path, copy)
    bad = json.loads((copy / TOWERS_DIR / "kd-vit-tiny.json").read_text())
    bad["parity"]["min_cosine"] = 0.5
    (copy / TOWERS_DIR / "kd-vit-tiny.json").write_text(json.dumps(bad))
    notes: list[str] = []
    rows = tower_subjects(open_run(copy, "bench"), [("teacher:kd-vit-tiny", teacher_file(copy, "kd-vit-tiny"),
                                                     "clip-teacher", None, None)], notes)
    assert rows == [] and "not timed in onnxruntime" in notes[0] and "min cosine 0.5000" in notes[0]
