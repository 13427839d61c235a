"""Latency statistics, peak-memory measurement and host description for benchmarks (no torch)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Summary of latency samples (ms): mean, p50/p90/p99 (numpy linear interpolation), min, max, std (ddof=0), n."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("latency_stats needs a non-empty 1-D sequence of samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99], method="linear")
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(a.min()), "max": float(a.max()), "std": float(a.std()), "n": int(a.size)}


def time_callable(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    """Call fn `warmup` times untimed, then `runs` times; return each run's wall time in ms (perf_counter_ns)."""
    for _ in range(int(warmup)):
        fn()
    out = []
    for _ in range(int(runs)):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def rss_bytes() -> int:
    """Resident set size of this process, in bytes (psutil; without it /proc/self/statm on Linux, else 0)."""
    try:
        import psutil
    except ImportError:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            return 0
    return int(psutil.Process().memory_info().rss)


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (Linux clear_refs "5"); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_bytes() -> int:
    """Kernel peak RSS since the last reset (VmHWM), in bytes; 0 where unavailable."""
    from kdmobile.fileio import proc_field_bytes

    return proc_field_bytes("/proc/self/status", "VmHWM") or 0


def measure_peak_rss(fn: Callable[[], Any], interval_s: float = 0.001) -> int:
    """Peak resident-memory growth (bytes) while fn runs: RSS sampled every ~1 ms plus before/after; never negative.

    On Linux the kernel's peak-RSS mark (reset just before) also catches spikes shorter than the sampling interval.
    """
    baseline = rss_bytes()
    use_hwm = _reset_hwm()
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes())
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, name="kdmobile-rss", daemon=True)
    thread.start()
    try:
        result = fn()
        peak = max(peak, rss_bytes(), _hwm_bytes() if use_hwm else 0)  # while fn's result is still alive
        del result
    finally:
        stop.set()
        thread.join()
    return max(0, peak - baseline)


def _cpuinfo() -> tuple[str | None, set[str]]:
    """CPU model name and flags from /proc/cpuinfo (Linux); (None, empty) elsewhere."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def _dist_version(*names: str) -> str | None:
    """Installed version of the first distribution found, without importing it."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _gpu_name() -> str | None:
    """First GPU's name from nvidia-smi, or None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def host_info() -> dict[str, Any]:
    """Where a benchmark ran: CPU model and int8-relevant ISA flags, cores, OS, library versions, GPU."""
    model, flags = _cpuinfo()
    isa = {f: f in flags for f in _ISA_FLAGS}
    isa["amx"] = any(f.startswith("amx") for f in flags)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "isa": isa,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cores_physical": physical,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu"),
        "ai_edge_litert": _dist_version("ai-edge-litert", "ai-edge-litert-nightly"),
        "tflite_runtime": _dist_version("tflite-runtime"),
        "gpu": _gpu_name(),
    }
