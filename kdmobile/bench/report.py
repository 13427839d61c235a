"""Bench rows -> report.json, report.md and latency_vs_accuracy.png, plus speed-ups and CI gates (no torch).

report.json (schema "kdmobile.bench/1"):

    {
      "schema": "kdmobile.bench/1", "kdmobile_version": str, "created": ISO-8601 UTC,
      "host": {cpu, machine, os, isa: {avx2, avx512f, avx512_vnni, avx_vnni, amx: bool}, cores, cores_physical,
               python, numpy, onnxruntime, ai_edge_litert, tflite_runtime, torch, gpu, threads},
      "settings": {runs, warmup, batches: [int], threads, device, max_time_s, inputs: [path]},
      "rows": [{
        "model": str,                 bundle directory name, or RUN/student, RUN/teacher:NAME
        "role": "student" | "teacher" | "baseline" (the no-KD student, PyTorch),
        "run": str | null,            run directory name the model comes from
        "source": str,                bundle directory or checkpoint file
        "backend": str,               onnxruntime | litert | coreml | torch eager
        "device": "cpu" | "cuda",
        "precision": str,             fp32 | fp16 | int8
        "quantization": str | null,   the int8 format recorded in the manifest (w8a32, u8s8, static, ...)
        "size_bytes": int | null,     model file (bundle) or checkpoint file (torch) on disk
        "params": int | null,         parameters of the part that runs per input (image tower / forecaster)
        "flops": int | null,          FLOPs of one batch-1 forward pass (from the run's metrics.json)
        "metric_name": "top1" | "R@1" | "mse" | null,   top-1 %, mean image/text Recall@1 %, MSE (physical units)
        "metric": float | null,
        "metric_source": str,         "measured on held-out (N=...)", "run metrics.json (same split)", ...
        "batch": int,                 inputs per timed call
        "batch_mode": "batched" | "loop",   one call, or a loop of batch-1 calls (batch dimension fixed at 1)
        "threads": int,
        "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms": float,   per call of `batch` inputs
        "n_runs": int, "warmup": int,
        "peak_rss_mb": float | null,  resident-memory growth while loading + running (CPU rows)
        "peak_gpu_mb": float | null,  torch.cuda.max_memory_allocated while loading + running (CUDA rows)
        "speedup_vs_teacher": float | null,   reference teacher p50 / this p50, same run, batch and device
        "speedup_reference": str | null,      the reference teacher: the first teacher measured on the same device
        "status": "ok" | "FAILED: reason"     a model that could not run has null latency, memory and metric
      }],
      "gates": [{"gate": "min-metric" | "max-mse" | "max-latency-ms", "threshold": float, "passed": bool,
                 "failures": [{"model": str, "value": float | null, "reason": str}]}],
      "notes": [str]
    }
"""

from __future__ import annotations

import datetime as _dt
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from kdmobile.contracts.report import STATS
from kdmobile import __version__
from kdmobile.fileio import atomic_path, write_json
from kdmobile.runtime.measure import latency_stats
from kdmobile.table import format_table, precision_label

SCHEMA = "kdmobile.bench/1"
LOWER_IS_BETTER = frozenset({"mse"})
MD_HEADERS = ["model", "backend", "precision", "batch", "size", "metric", "metric source", "p50 ms", "p90 ms",
              "p99 ms", "memory", "speed-up vs teacher"]


def latency_fields(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Row fields from raw per-call latencies: p50/p90/p99/mean/min/max/std in ms and the number of runs."""
    s = latency_stats(samples_ms)
    return {**{f"{k}_ms": s[k] for k in STATS}, "n_runs": s["n"]}


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Fill speedup_vs_teacher for student rows against a teacher of the same run, batch and device (so CPU rows
    are compared with a teacher measured on the CPU): the fastest one in the student's own runtime when the teacher
    was exported too (`kdmobile export --model teacher`), else the first one."""
    for row in rows:
        row.setdefault("speedup_vs_teacher", None)
        row.setdefault("speedup_reference", None)
        if row["role"] == "teacher" or not row.get("p50_ms"):
            continue
        found = [t for t in rows if t["role"] == "teacher" and t.get("run") == row.get("run")
                 and t["batch"] == row["batch"] and t["device"] == row["device"] and t.get("p50_ms")]
        same = [t for t in found if t["backend"] == row["backend"]]
        ref = min(same, key=lambda t: t["p50_ms"]) if same else (found[0] if found else None)
        if ref is not None:
            row["speedup_vs_teacher"] = ref["p50_ms"] / row["p50_ms"]
            row["speedup_reference"] = f"{ref['model']} ({ref['backend']}, {ref['device']})"


def _student_models(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per student model (the batch-1 row when there is one)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["role"] == "student" and (r["model"] not in out or r["batch"] == 1):
            out[r["model"]] = r
    return out


def evaluate_gates(rows: list[dict[str, Any]], min_metric: float | None = None, max_mse: float | None = None,
                   max_latency_ms: float | None = None) -> list[dict[str, Any]]:
    """CI gates over student rows: metric >= min_metric (top-1 / R@1), MSE <= max_mse, batch-1 p50 <= max_latency_ms."""
    students = _student_models(rows)
    gates = []
    if min_metric is not None:
        fails = []
        for m, r in students.items():
            if r.get("metric_name") in LOWER_IS_BETTER:
                continue
            if r.get("metric") is None:
                fails.append({"model": m, "value": None, "reason": "no metric measured"})
            elif r["metric"] < min_metric:
                fails.append({"model": m, "value": r["metric"],
                              "reason": f"{r['metric_name']} {r['metric']:.2f} < {min_metric:g}"})
        gates.append({"gate": "min-metric", "threshold": min_metric, "passed": not fails, "failures": fails})
    if max_mse is not None:
        fails = []
        for m, r in students.items():
            if r.get("metric_name") not in LOWER_IS_BETTER and r.get("metric_name") is not None:
                continue
            if r.get("metric") is None:
                fails.append({"model": m, "value": None, "reason": "no MSE measured"})
            elif r["metric"] > max_mse:
                fails.append({"model": m, "value": r["metric"], "reason": f"mse {r['metric']:.4g} > {max_mse:g}"})
        gates.append({"gate": "max-mse", "threshold": max_mse, "passed": not fails, "failures": fails})
    if max_latency_ms is not None:
        fails = []
        for r in rows:
            if r["role"] == "student" and r["batch"] == 1 and r.get("p50_ms") is None:
                fails.append({"model": r["model"], "value": None, "reason": "did not run"})
            elif r["role"] == "student" and r["batch"] == 1 and r["p50_ms"] > max_latency_ms:
                fails.append({"model": r["model"], "value": r["p50_ms"],
                              "reason": f"p50 {r['p50_ms']:.4g} ms > {max_latency_ms:g} ms at batch 1"})
        gates.append({"gate": "max-latency-ms", "threshold": max_latency_ms, "passed": not fails, "failures": fails})
    return gates


def failed_models(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Models that could not be measured."""
    return list(dict.fromkeys(r["model"] for r in rows if r.get("status", "ok") != "ok"))


def build_report(host: dict[str, Any], settings: dict[str, Any], rows: list[dict[str, Any]],
                 gates: list[dict[str, Any]] | None = None, notes: Sequence[str] = (),
                 torch_fallback: Sequence[str] = ()) -> dict[str, Any]:
    """The report.json document (speed-ups are filled in here); `torch_fallback` names runs measured without
    bundles (their PyTorch student instead)."""
    add_speedups(rows)
    return {"schema": SCHEMA, "kdmobile_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": host, "settings": settings, "rows": rows, "gates": list(gates or []), "notes": list(notes),
            "torch_fallback": list(torch_fallback)}


# --------------------------------------------------------------------------------------------- formatting
def fmt_size(n: int | None) -> str:
    """Bytes as KB/MB."""
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 ** 2:.2f} MB"


def fmt_metric(name: str | None, value: float | None) -> str:
    """'top1 93.20', 'mse 0.01234' or '-'."""
    if name is None or value is None:
        return "-"
    return f"{name} {value:.4g}" if name in LOWER_IS_BETTER else f"{name} {value:.2f}"


def fmt_ms(v: float | None) -> str:
    """Milliseconds with 3 significant digits below 10, 1 decimal above."""
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def fmt_memory(row: dict[str, Any]) -> str:
    """'12.3 MB RSS' / '45.0 MB GPU'."""
    if row.get("peak_gpu_mb") is not None:
        return f"{row['peak_gpu_mb']:.1f} MB GPU"
    if row.get("peak_rss_mb") is not None:
        return f"{row['peak_rss_mb']:.1f} MB RSS"
    return "-"


def fmt_precision(row: dict[str, Any]) -> str:
    """Precision with the int8 format, e.g. 'int8 (u8s8)'."""
    q = row.get("quantization")
    return f"{row['precision']} ({q})" if q and q not in ("none", row["precision"]) else row["precision"]


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The cells of the report table, one list per row (MD_HEADERS order)."""
    out = []
    for r in rows:
        backend = r["backend"] if r["device"] == "cpu" else f"{r['backend']} ({r['device']})"
        speed = "-" if r.get("speedup_vs_teacher") is None else f"{r['speedup_vs_teacher']:.1f}x"
        if r["role"] in ROLE_LABELS:
            speed = ROLE_LABELS[r["role"]]
        batch = f"{r['batch']}" + (" (loop)" if r.get("batch_mode") == "loop" and r["batch"] > 1 else "")
        out.append([r["model"], backend, fmt_precision(r), batch, fmt_size(r.get("size_bytes")),
                    fmt_metric(r.get("metric_name"), r.get("metric")), r.get("metric_source") or "-",
                    fmt_ms(r["p50_ms"]), fmt_ms(r["p90_ms"]), fmt_ms(r["p99_ms"]), fmt_memory(r), speed])
    return out


PLOT_STYLE = {"teacher": ("tab:red", "s"), "baseline": ("tab:gray", "D")}  # (colour, marker); students: blue dots
ROLE_LABELS = {"teacher": "teacher", "baseline": "no KD", "reference": "reference"}  # the speed-up column of rows that are references
SOURCE_LABELS = {"teacher": "teachers", "baseline": "no-KD student", "reference": "references"}

COMPACT_HEADERS = ["model", "backend", "precision", "batch", "size", "metric", "p50 ms", "p99 ms", "peak mem",
                   "speed-up"]


def compact_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The cells of the default (narrow) terminal table: `--wide` prints every column (MD_HEADERS)."""
    out = []
    for r in rows:
        backend = "torch" if r["backend"] == "torch eager" else r["backend"]
        backend += "" if r["device"] == "cpu" else f" {r['device']}"
        speed = ROLE_LABELS.get(r["role"]) or (
            "-" if r.get("speedup_vs_teacher") is None else f"{r['speedup_vs_teacher']:.1f}x")
        batch = f"{r['batch']}" + ("L" if r.get("batch_mode") == "loop" and r["batch"] > 1 else "")
        mem = r.get("peak_gpu_mb") if r.get("peak_gpu_mb") is not None else r.get("peak_rss_mb")
        mem_text = "-" if mem is None else f"{mem:.1f} MB" + (" GPU" if r.get("peak_gpu_mb") is not None else "")
        out.append([r["model"], backend, precision_label(r["precision"], r.get("quantization")), batch,
                    fmt_size(r.get("size_bytes")), fmt_metric(r.get("metric_name"), r.get("metric")),
                    fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]), mem_text, speed])
    return out


def compact_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What the narrow table leaves out, said once instead of per row (metric sources, loop batches)."""
    sources = list(dict.fromkeys(f"{SOURCE_LABELS.get(r['role'], 'students')}: {r['metric_source']}"
                                 for r in rows if r.get("metric_source")))
    notes = ["metric source: " + "; ".join(sources)] if sources else []
    if any(r.get("batch_mode") == "loop" and r["batch"] > 1 for r in rows):
        notes.append("batch NL: the model's batch dimension is fixed at 1, so N batch-1 calls were looped")
    return notes


def title_line(rows: Sequence[dict[str, Any]], torch_fallback: Sequence[str] = ()) -> str:
    """The table's title; a clear WARNING when a run had no bundles and its PyTorch student was measured instead."""
    if torch_fallback:
        names = ", ".join(torch_fallback)
        return (f"WARNING: no exported bundles found for {names}: the PyTorch student (torch eager) was measured, "
                f"not a phone format; run `kdmobile export RUN` first (or pass --bundles DIR)")
    models = {r["model"] for r in rows}
    return f"kdmobile bench: {len(models)} model(s)"


def host_line(host: dict[str, Any]) -> str:
    """One line describing where the numbers come from (CPU, int8-relevant ISA, threads, library versions, GPU)."""
    isa = host.get("isa", {})
    flags = ", ".join(f"{k.upper().replace('_', '-')} {'yes' if v else 'no'}" for k, v in isa.items())
    libs = ", ".join(f"{k} {host[k]}" for k in ("onnxruntime", "ai_edge_litert", "tflite_runtime", "torch")
                     if host.get(k))
    return (f"host: {host.get('cpu')} ({host.get('cores')} cores visible), {host.get('machine')}; ISA: {flags}; "
            f"threads {host.get('threads')}; {libs}; GPU: {host.get('gpu') or 'none'}")


def _speedup_note(rows: Sequence[dict[str, Any]]) -> list[str]:
    refs = sorted({r["speedup_reference"] for r in rows if r.get("speedup_reference")})
    if not refs:
        return ["speed-up: no teacher measured for these students (pass a run directory, without --no-teachers)"]
    return [f"speed-up = teacher p50 / model p50 at the same batch on the same device; reference teacher(s): "
            f"{'; '.join(refs)}"]


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: host and settings, one Markdown table, notes and gates."""
    s = report["settings"]
    fallback = report.get("torch_fallback") or []
    lines = ["# kdmobile bench", "", *([f"**{title_line(report['rows'], fallback)}**", ""] if fallback else []),
             host_line(report["host"]), "",
             f"{s['runs']} timed runs after {s['warmup']} warm-up runs (fewer where a call exceeds the "
             f"{s['max_time_s']:g} s budget; see n_runs in report.json); latencies are per call of `batch` inputs; "
             "memory is resident-memory growth while loading and running (GPU: peak allocated).", "",
             format_table(MD_HEADERS, table_rows(report["rows"]), markdown=True), ""]
    notes = _speedup_note(report["rows"]) + list(report.get("notes", []))
    notes += [f"{r['model']} ({r['backend']}, {r['device']}, batch {r['batch']}): {r['status']}"
              for r in report["rows"] if r.get("status", "ok") != "ok"]
    if any(r["precision"] == "int8" for r in report["rows"]):
        notes.append("int8 speed depends on the ISA above (VNNI/AMX on x86, dotprod on ARM); int8 always pays in size")
    lines += [f"- {n}" for n in notes]
    for g in report.get("gates", []):
        status = "passed" if g["passed"] else "FAILED: " + "; ".join(f"{f['model']}: {f['reason']}"
                                                                      for f in g["failures"])
        lines.append(f"- gate --{g['gate']} {g['threshold']:g}: {status}")
    return "\n".join(lines) + "\n"


def _spread(wanted: list[float], gap: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """Positions as close as possible to `wanted` (sorted ascending) with at least `gap` between neighbours, kept
    inside [lo, hi] (the gap shrinks when they cannot all fit)."""
    n = len(wanted)
    if n == 0:
        return []
    gap = min(gap, (hi - lo) / max(n - 1, 1)) if n > 1 else gap
    out = [min(max(w, lo), hi) for w in wanted]
    for i in range(1, n):
        out[i] = max(out[i], out[i - 1] + gap)
    out[-1] = min(out[-1], hi)
    for i in range(n - 2, -1, -1):
        out[i] = min(out[i], out[i + 1] - gap)
    return out


def plot_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """The latency-vs-metric figure: batch-1 p50 (log x) against the metric, every point labelled in a column right
    of the axes at its own height (spread so no two labels overlap) with a thin leader line to its point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    rows = [r for r in rows if r.get("p50_ms")]
    pts = [r for r in rows if r["batch"] == min(x["batch"] for x in rows)] if rows else []
    metrics = sorted({r["metric_name"] for r in pts if r.get("metric") is not None})
    most = max([sum(1 for r in pts if r.get("metric_name") == m and r.get("metric") is not None) for m in metrics]
               + [1])
    height = max(4.8, 1.2 + 0.22 * most)  # room for one label line per point
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(9.5 * max(1, len(metrics)), height), squeeze=False)
    if not metrics:
        axes[0][0].text(0.5, 0.5, "no metric measured", ha="center", va="center", transform=axes[0][0].transAxes)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    panels = []
    for ax, name in zip(axes[0], metrics):
        group = [r for r in pts if r.get("metric_name") == name and r.get("metric") is not None]
        for r in group:
            color, marker = PLOT_STYLE.get(r["role"], ("tab:blue", "o"))
            ax.scatter([r["p50_ms"]], [r["metric"]], c=color, marker=marker, zorder=3)
        ax.set_xscale("log")
        xs = [r["p50_ms"] for r in group]
        ys = [r["metric"] for r in group]
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        pad = (max(ys) - min(ys)) * 0.08 or abs(max(ys)) * 0.05 or 1.0
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=6)
        ax.set_xlabel(f"p50 latency, ms (batch {pts[0]['batch']}, log scale)")
        ax.set_ylabel(f"{name} ({'lower' if name in LOWER_IS_BETTER else 'higher'} is better)")
        ax.grid(True, which="both", alpha=0.3)
        panels.append((ax, name, group, xs, ys))
    axes[0][0].set_title("latency vs task metric (red squares: teachers; grey diamonds: student without KD)",
                         fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(right=1 - 0.42 / max(1, len(metrics)), wspace=0.9 if len(metrics) > 1 else None)
    for ax, name, group, xs, ys in panels:  # labels last: their spacing depends on the final axes height
        to_axes = ax.transData + ax.transAxes.inverted()
        order = sorted(range(len(group)), key=lambda i: (to_axes.transform((xs[i], ys[i]))[1], xs[i]))
        wanted = [float(to_axes.transform((xs[i], ys[i]))[1]) for i in order]
        line_h = 10 / 72 / (ax.get_position().height * height)  # one 7-pt label line (+ leading), axes fraction
        for i, y_label in zip(order, _spread(wanted, line_h)):
            r = group[i]
            label = r["model"] if r["device"] == "cpu" else f"{r['model']} ({r['device']})"
            label += f"  {fmt_metric(name, r['metric'])}, {fmt_ms(r['p50_ms'])} ms"
            ax.annotate("", xy=(xs[i], ys[i]), xytext=(1.02, y_label), textcoords="axes fraction",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.55", "shrinkA": 0, "shrinkB": 3})
            ax.text(1.025, y_label, label, transform=ax.transAxes, fontsize=7, va="center", ha="left",
                    gid="point-label", color=PLOT_STYLE.get(r["role"], ("black",))[0])
    return fig


def render_plot(rows: Sequence[dict[str, Any]]) -> bytes:
    """latency_vs_accuracy.png: `plot_figure` as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = plot_figure(rows)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and latency_vs_accuracy.png into out_dir, each atomically; without matplotlib
    (only the [runtime] extra installed) the plot is skipped: no "png" in the paths returned."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "latency_vs_accuracy.png"}
    json.dumps(report)  # fail before writing anything if a value is not JSON-serialisable
    write_json(paths["json"], report)
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(render_markdown(report))
    try:
        png = render_plot(report["rows"])
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "matplotlib":
            raise
        paths.pop("png").unlink(missing_ok=True)  # no stale plot beside the new report
        return paths
    with atomic_path(paths["png"]) as tmp:
        tmp.write_bytes(png)
    return paths
