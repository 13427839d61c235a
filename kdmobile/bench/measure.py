"""Measure the planned subjects into report rows (a model that fails gets a FAILED row) and describe the host."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from kdmobile.bench.settings import Settings
from kdmobile.bench.subjects import Subject
from kdmobile.contracts.report import ReportRow
from kdmobile.errors import KDError
from kdmobile.runtime.measure import host_info


def measure(subjects: Sequence[Subject], settings: Settings) -> list[dict[str, Any]]:
    """Every subject at every batch size: memory, latency statistics and the task metric, as report rows."""
    from tqdm import tqdm

    from kdmobile.bench.report import latency_fields

    batches = list(dict.fromkeys(settings.batches))
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(subjects) * len(batches), desc="bench", unit="measurement", file=sys.stderr,
               disable=not settings.progress, dynamic_ncols=True)
    try:
        for s in subjects:
            bar.set_postfix_str(f"{s.model} ({s.backend}, {s.device})")
            done = 0
            try:
                mem = s.memory(settings)
                s.load(settings)
                per_batch = []
                for b in batches:
                    samples, mode, warm = s.timed(b, settings)
                    per_batch.append({"batch": b, "batch_mode": mode, "threads": settings.threads,
                                      "warmup": warm, **latency_fields(samples)})
                    done += 1
                    bar.update(1)
                name, value, source = s.metric()
                rows += [ReportRow(**s.describe(), metric_name=name, metric=value, metric_source=source, **pb, **mem,
                                   status="ok").as_row() for pb in per_batch]
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one model failing to run must not lose the others' numbers
                msg = " ".join(f"{type(e).__name__}: {e}".split())[:300] if not isinstance(e, KDError) else str(e)
                print(f"kdmobile: warning: {s.model} ({s.backend}, {s.device}) failed: {msg}", file=sys.stderr)
                bar.update(len(batches) - done)
                rows += [_failed_row(s, b, settings, msg) for b in batches]
            finally:
                s.close()
    finally:
        bar.close()
    return rows


def _failed_row(s: Subject, batch: int, settings: Settings, msg: str) -> dict[str, Any]:
    """A row for a model that could not be measured (no latency, memory or metric)."""
    return ReportRow(**s.describe(), metric_source="n/a (failed)", batch=batch, batch_mode=None,
                     threads=settings.threads, warmup=None, status=f"FAILED: {msg}").as_row()


def bench_host(settings: Settings) -> dict[str, Any]:
    """host_info() plus threads, torch version and the CUDA card used (when torch ran on one)."""
    from importlib.metadata import PackageNotFoundError, version

    host = host_info()
    host["threads"] = settings.threads
    try:
        host["torch"] = version("torch")
    except PackageNotFoundError:
        host["torch"] = None
    host["env_threads"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    if "torch" in sys.modules and sys.modules["torch"] is not None:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            host["gpu"] = torch.cuda.get_device_name(0)
    from kdmobile.bench.reference import peak_gflops

    host["peak_fp32_gflops"], host["peak_source"] = peak_gflops(settings.threads)  # once per bench
    return host

