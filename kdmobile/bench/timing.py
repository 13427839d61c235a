"""The bench's one timing helper: fit warm-up and runs to the time budget, then time on the CPU or with CUDA events."""

from __future__ import annotations

import time
from typing import Any, Callable

from kdmobile.bench.settings import Settings
from kdmobile.runtime.measure import time_callable

MIN_RUNS = 10  # timed runs kept even when a call is slower than the --max-time budget allows


def _plan(est_ms: float, warmup: int, runs: int, max_time_s: float) -> tuple[int, int]:
    """(warm-up, runs) that fit the time budget, keeping at least MIN_RUNS (or --runs if smaller)."""
    budget = max_time_s * 1000.0
    if est_ms * (warmup + runs) <= budget:
        return warmup, runs
    return min(warmup, 2), min(runs, max(MIN_RUNS, int(budget / max(est_ms, 1e-9))))


def _probe_ms(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> float:
    """Wall time of one call (it also serves as the first warm-up run)."""
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) * 1000.0


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def _time_cuda(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    """Per-call ms measured with CUDA events after warm-up (one synchronize per call)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(float(a.elapsed_time(b)))
    return out


def time_calls(fn: Callable[[], Any], settings: Settings, cuda: bool = False) -> tuple[list[float], int]:
    """(per-call ms samples, warm-up calls done) for one subject at one batch: one probe call sizes the warm-up and
    runs to --max-time, then wall-clock timing (CPU) or CUDA-event timing (cuda=True)."""
    est = _probe_ms(fn, _cuda_sync if cuda else None)
    warmup, runs = _plan(est, settings.warmup, settings.runs, settings.max_time_s)
    samples = _time_cuda(fn, warmup, runs) if cuda else time_callable(fn, warmup, runs)
    return samples, warmup + 1
