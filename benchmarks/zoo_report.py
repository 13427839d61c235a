"""The student zoo's tables and plots from its records: student_zoo.{json,md,png} and headline_224.{json,md}.
Used by benchmarks/student_zoo.py (which measures); reads only the records file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from student_zoo import DEPLOY_PX, REFERENCES, RESULTS, TRAIN_PX, ZOO, train_key

from kdmobile.experiments import Records
from kdmobile.export.int8_choice import CANDIDATE_MIN_COSINE
from kdmobile.fileio import write_json
from kdmobile.student_choice import DEFAULT_RULE, ZooPoint, choose_default, pareto
from kdmobile.table import format_table

PREVIOUS_DEFAULT = "mobilenetv3_small_050"  # the first zoo's pick: stays unless a model meets DEFAULT_RULE
SEEDS = (0, 1)


@dataclass
class Point:
    """One backbone's measured facts: top-1 per seed, ONNX fp32 and its fastest int8 format close to fp32."""

    seeds: dict[int, float]
    fp32_ms: float
    int8_ms: float | None
    int8_format: str | None

    @property
    def rule(self) -> ZooPoint:
        return ZooPoint(float(np.mean(list(self.seeds.values()))), self.fp32_ms, self.int8_ms)


def points(records: Records) -> tuple[dict[str, Point], list[str], str, str, dict[str, list[str]]]:
    """(points of every trained and timed backbone, Pareto front, default, the rule's reason, what each front model
    failed)."""
    p50 = (records.get("timing") or {}).get("p50_ms", {})
    pts: dict[str, Point] = {}
    for b in ZOO:
        seeds = {s: r["top1"] for s in SEEDS if (r := records.get(train_key(b, s)))}
        files = (records.get(f"onnx/{b}") or {}).get("files", {})
        if not seeds or f"{b}|fp32" not in p50:
            continue
        close = [f for f, v in files.items() if f != "fp32" and v["cosine_vs_fp32"] >= CANDIDATE_MIN_COSINE
                 and f"{b}|{f}" in p50]
        fmt = min(close, key=lambda f: p50[f"{b}|{f}"]) if close else None
        pts[b] = Point(seeds, p50[f"{b}|fp32"], p50[f"{b}|{fmt}"] if fmt else None, fmt)
    if not pts:
        return pts, [], PREVIOUS_DEFAULT, "nothing timed yet", {}
    rule = {b: p.rule for b, p in pts.items()}
    front = pareto({b: (r.best_ms, r.top1) for b, r in rule.items()})
    default, why, failed = choose_default(rule, p50[f"{REFERENCES[0]}|fp32"], PREVIOUS_DEFAULT)
    return pts, front, default, why, failed


def report(records: Records) -> None:
    """student_zoo.json/.md/.png and headline_224.json/.md from the records."""
    timing = records.get("timing")
    pts, front, default, why, failed = points(records)
    if not timing or not pts:
        print("student_zoo: nothing timed yet")
        return
    p50, ref = timing["p50_ms"], timing["p50_ms"][f"{REFERENCES[0]}|fp32"]
    rows = []
    for b, pt in pts.items():
        r, tr, files = pt.rule, records.get(train_key(b, 0)), records.get(f"onnx/{b}")["files"]
        rows.append({"backbone": b, "top1_64px_mean": r.top1, "top1_64px_seeds": pt.seeds, "params": tr["params"],
                     "gflops_224": records.get(f"onnx/{b}")["flops"] / 1e9, "fp32_p50_ms": pt.fp32_ms,
                     "int8_p50_ms": {f: p50.get(f"{b}|{f}") for f in files if f != "fp32"},
                     "int8_cosine_vs_fp32": {f: v["cosine_vs_fp32"] for f, v in files.items() if f != "fp32"},
                     "int8_format": pt.int8_format, "int8_best_p50_ms": pt.int8_ms,
                     "int8_vs_own_fp32": pt.fp32_ms / pt.int8_ms if pt.int8_ms else None,
                     "best_p50_ms": r.best_ms, "speedup_vs_vit_b32": ref / r.best_ms,
                     "int8_speedup_vs_vit_b32": ref / pt.int8_ms if pt.int8_ms else None,
                     "pareto": b in front, "rule_failed": failed.get(b),
                     "train_s_per_epoch_64px": tr["train_s_per_epoch"]})
    rt = records.get("runtime_timing")
    rt_rows = _runtime_rows(records, rt)
    zoo = {"benchmark": "student_zoo", "host": timing["host"], "deploy_px": DEPLOY_PX, "train_px": TRAIN_PX,
           "training": records.data.get("training"), "seeds": list(SEEDS),
           "latency": f"{timing['runtime']}, {timing['timing']}", "load_average": [timing["load_average_before"],
                                                                                   timing["load_average_after"]],
           "rows": rows, "pareto": front, "default": default, "default_rule": why, "rule": list(DEFAULT_RULE),
           "runtimes": {"timing": rt and rt["timing"], "load_average": rt and rt["load_average"], "rows": rt_rows}}
    write_json(RESULTS / "student_zoo.json", zoo)
    table = [[r["backbone"], f"{r['top1_64px_mean']:.2f}",
              " / ".join(f"{v:.2f}" for v in r["top1_64px_seeds"].values()), f"{r['params'] / 1e6:.2f}",
              f"{r['gflops_224']:.3f}", f"{r['fp32_p50_ms']:.3f}",
              f"{r['int8_best_p50_ms']:.3f} ({r['int8_format']})" if r["int8_format"] else "-",
              f"{r['int8_vs_own_fp32']:.2f}x" if r["int8_vs_own_fp32"] else "-",
              f"{r['speedup_vs_vit_b32']:.0f}x", "yes" if r["pareto"] else "",
              "; ".join(r["rule_failed"]) if r["rule_failed"] else ("meets" if r["pareto"] else "")]
             for r in sorted(rows, key=lambda r: r["best_p50_ms"])]
    md = format_table(["backbone", "top-1 % @64 px (mean)", "per seed", "M params", "GFLOPs @224", "fp32 ms",
                       "best int8 ms", "int8 vs own fp32", "best vs ViT-B/32", "Pareto", "default rule"],
                      table, markdown=True)
    rt_md = _runtime_table(rt_rows)
    _plot({b: (p.rule.best_ms, p.rule.top1) for b, p in pts.items()}, front, default, rt_rows, pts)
    (RESULTS / "student_zoo.md").write_text(
        f"# Student zoo at {DEPLOY_PX} px\n\nHost: {zoo['host']}. Accuracy: {zoo['training']}; seeds "
        f"{list(SEEDS)}. Latency (ONNX): {zoo['latency']}; load average {timing['load_average_before']:.2f} before, "
        f"{timing['load_average_after']:.2f} after. int8 = the fastest of w8a32 / u8s8 / s8s8 / dynamic whose output "
        f"cosine vs fp32 is >= {CANDIDATE_MIN_COSINE}.\n\n{md}\n\n"
        f"Default by rule ({why}): **{default}**.\n\n## Pareto models in the phone runtimes\n\n"
        f"{rt and rt['timing']}; load average {rt and rt['load_average']}. Speed-ups vs ViT-B/32 are against its "
        f"ONNX tower (no TFLite / ExecuTorch ViT-B/32 was built); 'vs own fp32' is within the runtime.\n\n{rt_md}\n\n"
        "![Pareto front per runtime](student_zoo.png)\n")
    print(md)
    print(rt_md)
    print(f"default: {default} ({why})")
    headline_224(records, timing, pts, default)


def _runtime_rows(records: Records, rt: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not rt:
        return []
    from zoo_runtimes import rows

    built = {k.split("/", 1)[1]: v for k, v in records.data["runs"].items() if k.startswith("runtimes/")}
    return rows(rt, built)


def _runtime_table(rt_rows: list[dict[str, Any]]) -> str:
    table = [[r["backbone"], r["runtime"], r["precision"],
              f"{r['p50_ms']:.3f}" if r.get("p50_ms") else f"not run: {r.get('error', '')[-90:]}",
              f"{r['vs_own_fp32']:.2f}x" if r.get("vs_own_fp32") else "",
              f"{r['vs_vit_b32_onnx']:.0f}x" if r.get("vs_vit_b32_onnx") else ""]
             for r in sorted(rt_rows, key=lambda r: (r["backbone"], r["runtime"], r["precision"]))]
    return format_table(["backbone", "runtime", "precision", "p50 ms", "vs own fp32", "vs ViT-B/32 (ONNX)"],
                        table, markdown=True) if table else "(not timed)"


def headline_224(records: Records, timing: dict[str, Any], pts: dict[str, Point], default: str) -> None:
    """headline_224.json/.md: the references and each zoo model's fp32 and best int8 ONNX, the default named with its
    int8 check."""
    p50, peak = timing["p50_ms"], timing["peak_gflops"]
    ref = p50[f"{REFERENCES[0]}|fp32"]
    keys = [f"{r}|fp32" for r in REFERENCES]
    for b, p in pts.items():
        keys += [f"{b}|fp32"] + ([f"{b}|{p.int8_format}"] if p.int8_format else [])
    rows = []
    for key in keys:
        model, fmt = key.split("|")
        ms = p50[key]
        gflops = timing["flops"][model] / (ms / 1e3) / 1e9
        rows.append({"model": model if model in ZOO else f"{model} image tower (latency only, random weights)",
                     "runtime": timing["runtime"], "precision": "fp32" if fmt == "fp32" else f"int8 {fmt}",
                     "p50_ms": ms, "speedup_vs_reference": ref / ms,
                     "int8_speedup_vs_fp32": p50[f"{model}|fp32"] / ms if fmt != "fp32" else None,
                     "gflops_per_s": gflops, "frac_peak": gflops / peak if peak else None})
    out = {"benchmark": "headline_224", "input_px": DEPLOY_PX, "host": timing["host"],
           "reference": f"{REFERENCES[0]} image tower, ONNX fp32", "timing": timing["timing"],
           "load_average": [timing["load_average_before"], timing["load_average_after"]],
           "peak_gflops": peak, "peak_source": timing["peak_source"], "default_student": default,
           "default_int8_check": records.get(f"int8check/{default}"), "rows": rows}
    write_json(RESULTS / "headline_224.json", out)
    table = [[r["model"], r["precision"], f"{r['p50_ms']:.3f}", f"{r['speedup_vs_reference']:.1f}x",
              f"{r['int8_speedup_vs_fp32']:.2f}x" if r["int8_speedup_vs_fp32"] else "",
              f"{r['gflops_per_s']:.1f}", f"{r['frac_peak']:.0%}" if r["frac_peak"] else "-"] for r in rows]
    md = format_table(["model", "precision", "p50 ms", "vs ViT-B/32", "int8 vs own fp32", "GFLOP/s", "of peak"],
                      table, markdown=True)
    check = out["default_int8_check"] or {}
    (RESULTS / "headline_224.md").write_text(
        f"# Headline at {DEPLOY_PX} px\n\nHost: {out['host']}; {timing['runtime']}; {out['timing']}; load average "
        f"{out['load_average'][0]:.2f} / {out['load_average'][1]:.2f}; peak fp32 GEMM {peak:.1f} GFLOP/s "
        f"({out['peak_source']}).\n\n{md}\n\nDefault student: **{default}**; its int8 ({check.get('int8_format')}) "
        f"top-1 {check.get('top1_int8')} vs fp32 {check.get('top1_fp32')} ({check.get('at')}).\n")
    print(md)


def _plot(pts: dict[str, tuple[float, float]], front: list[str], default: str, rt_rows: list[dict[str, Any]],
          points_: dict[str, Point]) -> None:
    """Left: every backbone's faster ONNX bundle vs top-1 (front dashed, default red). Right: the Pareto models in
    each runtime and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for n, (ms, acc) in pts.items():
        ax.scatter(ms, acc, color="tab:red" if n == default else "tab:blue" if n in front else "tab:gray")
        ax.annotate(n, (ms, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([pts[n][0] for n in front], [pts[n][1] for n in front], "--", color="tab:blue", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 ms at {DEPLOY_PX} px, faster ONNX bundle (onnxruntime, 1 thread, batch 1)")
    ax.set_ylabel(f"CIFAR-10 top-1 % (trained and tested at {TRAIN_PX} px, mean of seeds)")
    ax.set_title("ONNX: Pareto front (dashed), default (red)")
    markers = {"onnx": "o", "tflite": "s", "executorch": "^"}
    for runtime in markers:
        for prec_kind, fill in (("fp32", "none"), ("int8", None)):
            sel = [r for r in rt_rows if r["runtime"] == runtime and r.get("p50_ms")
                   and (r["precision"] == "fp32") == (prec_kind == "fp32")]
            if sel:
                ax2.scatter([r["p50_ms"] for r in sel], [points_[r["backbone"]].rule.top1 for r in sel],
                            marker=markers[runtime], facecolors=fill, edgecolors="k" if fill else None,
                            label=f"{runtime} {prec_kind}")
    ax2.set_xscale("log")
    ax2.set_xlabel(f"p50 ms at {DEPLOY_PX} px (1 thread, batch 1)")
    ax2.set_ylabel("CIFAR-10 top-1 % (mean of seeds)")
    ax2.set_title("Pareto models per runtime (int8: every recipe)")
    if rt_rows:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "student_zoo.png", dpi=120)
    plt.close(fig)
