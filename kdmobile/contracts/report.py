"""A bench report row as a typed model: what `kdmobile bench` measured for one model at one batch size. The bench
builds every row through it (a misspelt or missing field fails there, not in a reader of report.json)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, create_model

STATS = ("p50", "p90", "p99", "mean", "min", "max", "std")  # per-call latency statistics, in ms, in row order


class _Row(BaseModel):
    """One measured (or failed) model at one batch size; `speedup_*` are filled in when the report is assembled.
    (ReportRow is this model plus one optional float per latency statistic, `p50_ms` ... `std_ms`.)"""

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
    # results (None when the model failed); the latency statistics STAT_ms are added below, from STATS
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


ReportRow = create_model("ReportRow", __base__=_Row, __doc__=_Row.__doc__,
                         **{f"{s}_ms": (Optional[float], None) for s in STATS})
