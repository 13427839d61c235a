"""A new user's first hour: run plan and --dry-run, --teachers-from, quiet consoles, tables that fit 120 columns,
a latency plot whose labels never overlap, bench finding the bundles export wrote."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from kdmobile.bench.report import compact_notes, compact_rows, plot_figure, title_line
from kdmobile.console import drop_log_message, fmt_duration, quiet_native_stderr
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
