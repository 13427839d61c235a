"""A bench report row as a typed model: what `kdmobile bench` measured for one model at one batch size. The bench
builds every row through it (a misspelt or missing field fails there, not in a reader of report.json)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "std_ms", "n_runs")


class ReportRow(BaseModel):
    """One measured (or failed) model at one batch size; `speedup_*` are filled in when the report is assembled."""

    model_config = ConfigDict(extra="forbid")

    # what was measured
    model: str
    role: str                        # student | teacher | baseline
    run: Optional[str]
    source: str                      # bundle directory or model file
    backend: str                     # onnxruntime | litert | coreml | torch eager
    device: str
    precision: str
    quantization: Optional[str]
    size_bytes: Optional[int]
    params: Optional[int]
    flops: Optional[int]
    # how it was timed
    batch: int
    batch_mode: Optional[str]        # batched | loop (a fixed-batch model called once per sample)
    threads: int
    warmup: Optional[int]
    # results (None when the model failed)
    p50_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    min_ms: Optional[float] = None
    max_ms: Optional[float] = None
    std_ms: Optional[float] = None
    n_runs: Optional[int] = None
    peak_rss_mb: Optional[float] = None
    peak_gpu_mb: Optional[float] = None
    metric_name: Optional[str] = None
    metric: Optional[float] = None
    metric_source: str
    status: str                      # ok | FAILED: reason

    def as_row(self) -> dict:
        """The JSON-ready dict that report.json and the renderers use."""
        return self.model_dump()
