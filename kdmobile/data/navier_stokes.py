"""Navier–Stokes datasets at the FNO scale: many trajectories batched in torch, all CPU threads, resumable files.

The solver lives in `ns_solver` (re-exported here). Trajectory i starts from a GRF seeded by (seed, i) and picks its
time steps from its own state only, so batch size, thread count and device change the data by FFT rounding alone.
On CPU a chunk of trajectories is cut into sub-batches of at most CPU_BATCH, solved by one worker thread per CPU,
each with one torch thread (tiny FFTs do not share well across threads; the GIL is released inside torch). On
CUDA a chunk is one batch. `generate_to_file` saves each chunk in `<out>.parts/` (`ns_files`) and assembles the
output at the end, so an interrupted run resumes from its last complete chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from kdmobile.data.ns_files import ChunkStore, check_output_path, write_dataset
from kdmobile.data.ns_solver import (
    DEFAULT_CFL, FNO_ALPHA, FNO_TAU, SCHEMES, default_max_dt, fno_forcing, gaussian_random_field, num_records,
    resolve_device, solve, torch_threads, velocity_from_vorticity,
)
from kdmobile.config import MAX_GRID  # FNO's finest solve is 256^2; 4096^2 is 64 MB per float32 frame
from kdmobile.errors import UserError

CPU_BATCH = 8  # trajectories per solver call on CPU: larger batches fall out of cache
GENERATOR_VERSION = 1  # bump when a change alters the numbers a key produces
DTYPES = {"float32": torch.float32, "float64": torch.float64}

__all__ = [
    "generate", "generate_to_file", "cached_dataset", "dataset_key", "key_digest", "available_cpus",
    "solve", "velocity_from_vorticity", "gaussian_random_field", "fno_forcing", "resolve_device", "default_max_dt",
]


class _Stop(Exception):
    """Raised inside a worker's solver callback to abandon its sub-batch once the run is stopping."""


def available_cpus() -> int:
    """CPUs this process may run on (the default number of worker threads)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _trajectory_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for trajectory `index`, derived from the master seed (batch-size independent)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator(device="cpu")
    g.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def _forcing_name(name: str | None) -> str:
    """Normalise the `forcing` option to "fno" or "none"."""
    if name is None or (isinstance(name, str) and name.strip().lower() == "none"):
        return "none"
    if isinstance(name, str) and name.strip().lower() == "fno":
        return "fno"
    raise UserError(f"unknown forcing {name!r} (use 'fno' or None)")


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32/float64 from a torch dtype or its name."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if dtype in (torch.float32, torch.float64):
        return dtype  # type: ignore[return-value]
    raise UserError(f"--dtype must be float32 or float64, got {dtype!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _scheme(name: str) -> str:
    """The solver scheme name ("euler": FNO's forward Euler + Crank-Nicolson; "rk3": SSP-RK3, integrating factor)."""
    if name not in SCHEMES:
        raise UserError(f"--scheme must be one of {', '.join(SCHEMES)}, got {name!r}")
    return name


def _check_generate_args(n: int, res: int, visc: float, seed: int, batch_size: int, dt: float | None = None,
                         cpu_threads: int | None = None, solve_res: int | None = None) -> None:
    """Validate the user-facing generation arguments (KDError, one line)."""
    if not _is_int(n) or n < 1:
        raise UserError(f"--n must be a positive integer, got {n!r}")
    if not _is_int(res) or res < 8 or res % 2:
        raise UserError(f"--res must be an even integer >= 8, got {res!r}")
    if solve_res is not None and (not _is_int(solve_res) or solve_res < res or solve_res % res):
        raise UserError(f"--solve-res must be a multiple of --res {res} (the stored grid keeps every k-th point of "
                        f"the solved one), got {solve_res!r}")
    if not (isinstance(visc, (int, float)) and math.isfinite(visc) and visc > 0):
        raise UserError(f"--visc must be a positive number, got {visc!r}")
    if not _is_int(seed) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if dt is not None and not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise UserError(f"--dt must be a positive number, got {dt!r}")
    if cpu_threads is not None and (not _is_int(cpu_threads) or cpu_threads < 1):
        raise UserError(f"--threads must be a positive integer, got {cpu_threads!r}")


MAX_RECORDS = 100_000     # snapshots per trajectory
MAX_STEPS = 10_000_000    # solver steps per trajectory (FNO's T = 50 at dt 1e-4 is 5e5)
MAX_SOLVE_BATCH = 100_000  # trajectories solved together (a chunk)


def _check_sizes(n: int, res: int, n_rec: int, t_final: float, dt: float | None, batch: int,
                 threads: int | None, itemsize: int, solve_res: int) -> None:
    """Every size the user controls against a stated limit, and the data set against free memory, before anything
    is allocated or written (a careless --n, --res or --t-final must not take the machine)."""
    from kdmobile.runtime.cli import MAX_THREADS
    from kdmobile.untrusted import check_array_bytes

    for flag, value, limit in (("--res", res, MAX_GRID), ("--solve-res", solve_res, MAX_GRID),
                               ("--t-final / --record-every", n_rec, MAX_RECORDS),
                               ("--batch-size", batch, MAX_SOLVE_BATCH), ("--threads", threads or 1, MAX_THREADS)):
        if value > limit:
            raise UserError(f"{flag}: {value} is over the limit of {limit}")
    steps = t_final / (dt or 1e-3)
    if steps > MAX_STEPS:
        raise UserError(f"--t-final {t_final:g}: at least {steps:.3g} solver steps per trajectory (dt <= "
                        f"{dt or 1e-3:g}), over the limit of {MAX_STEPS:,}")
    frame = res * res * itemsize
    # one chunk's stored frames, plus the solver's spectral work arrays (~40 fields per trajectory) at the solve grid
    chunk = min(n, batch) * (n_rec * frame + 40 * solve_res * solve_res * itemsize) * 2
    check_array_bytes(f"one chunk of --batch-size {batch} at --res {res} / --solve-res {solve_res} (lower one)",
                      chunk, "allocating")


def _check_disk(runner: "_Runner", path: Path) -> None:
    """The data set (and its chunks, kept until the end) against the free disk where it goes, before writing."""
    import shutil

    frame = runner.res * runner.res * np.dtype(runner.np_dtype).itemsize
    total = 2 * runner.n * (runner.n_rec + 1) * frame  # the chunks, then the final file beside them
    parent = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    free = shutil.disk_usage(parent).free
    if total > free:
        raise UserError(f"--n {runner.n} x {runner.n_rec} frames of {runner.res}^2: writing the data set needs "
                        f"{total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free in {parent}")


def dataset_key(n: int, res: int = 64, visc: float = 1e-3, t_final: float = 20.0, seed: int = 0,
                dt: float | None = None, forcing: str | None = "fno", dt_record: float = 1.0,
                dtype: torch.dtype | str = torch.float32, solve_res: int | None = None,
                scheme: str = "euler") -> dict[str, Any]:
    """Every parameter that changes the generated numbers: the key for resuming and for the data cache. A solve on
    the stored grid with FNO's Euler scheme keeps the key it always had (no solve_res / scheme entry), so existing
    caches stay valid."""
    dt_name = next(k for k, v in DTYPES.items() if v == _dtype(dtype))
    fine = int(solve_res or res)
    key = {"generator": "kdmobile.data.navier_stokes", "version": GENERATOR_VERSION, "n": int(n), "res": int(res),
           "visc": float(visc), "t_final": float(t_final), "dt_record": float(dt_record), "seed": int(seed),
           "dt": None if dt is None else float(dt), "cfl": DEFAULT_CFL, "max_dt": default_max_dt(fine, _scheme(scheme)),
           "forcing": _forcing_name(forcing), "dtype": dt_name,
           "initial_condition": {"type": "gaussian_random_field", "alpha": FNO_ALPHA, "tau": FNO_TAU}}
    if fine != int(res):
        key["solve_res"] = fine
        key["stored"] = f"every {fine // int(res)}th grid point of the {fine}² solve (pointwise, as FNO)"
    if _scheme(scheme) != "euler":
        key["scheme"] = _scheme(scheme)
    return key


def key_digest(key: dict[str, Any]) -> str:
    """A short stable hash of a dataset key (for cache file names)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class _Runner:
    """Solves ranges of trajectories for one set of parameters: sub-batches, worker threads, the progress bar."""

    def __init__(self, n: int, res: int, visc: float, t_final: float, seed: int, dt: float | None,
                 batch_size: int, device: str | None, forcing: str | None, dt_record: float,
                 dtype: torch.dtype | str, cpu_threads: int | None, solve_res: int | None = None, scheme: str = "euler") -> None:
        _check_generate_args(n, res, visc, seed, batch_size, dt, cpu_threads, solve_res)
        self.n, self.res, self.visc, self.seed, self.dt = int(n), int(res), float(visc), int(seed), dt
        self.solve_res = int(solve_res or res)
        self.scheme = _scheme(scheme)
        self.stride = self.solve_res // self.res
        self.t_final, self.dt_record = float(t_final), float(dt_record)
        self.n_rec = num_records(self.t_final, self.dt_record)
        self.dtype = _dtype(dtype)
        self.np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        _check_sizes(self.n, self.res, self.n_rec, self.t_final, dt, batch_size, cpu_threads,
                     np.dtype(self.np_dtype).itemsize, self.solve_res)
        self.forcing = _forcing_name(forcing)
        self.device = resolve_device(device)
        self.cpu = self.device.type == "cpu"
        self.workers = (cpu_threads or available_cpus()) if self.cpu else 1
        self.force = fno_forcing(self.solve_res, self.device, self.dtype) if self.forcing == "fno" else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar: Any = None
        self._pool: ThreadPoolExecutor | None = None

    def key(self) -> dict[str, Any]:
        """This run's dataset key."""
        return dataset_key(self.n, self.res, self.visc, self.t_final, self.seed, self.dt, self.forcing,
                           self.dt_record, self.dtype, self.solve_res, self.scheme)

    @contextlib.contextmanager
    def session(self, progress: bool, done: int = 0) -> Iterator[_Runner]:
        """Open the progress bar (over trajectories) and the worker pool; stop the workers on any exit."""
        from tqdm.auto import tqdm

        where = f"{self.device.type}, {self.workers} thread{'s' if self.workers > 1 else ''}" if self.cpu \
            else str(self.device)
        self._stop.clear()
        with tqdm(total=self.n, initial=done, disable=not progress, unit="traj",
                  desc=f"navier-stokes {self.res}²" + (f" from {self.solve_res}²" if self.stride > 1 else "")
                  + f" ({where})",
                  bar_format="{l_bar}{bar}| {n:.0f}/{total} traj [{elapsed}<{remaining}]") as bar, \
                torch_threads(1 if self.cpu else None):
            self._bar = bar
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="kdmobile-ns")
            try:
                yield self
            finally:
                self._stop.set()
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def _pieces(self, b0: int, b1: int) -> list[tuple[int, int]]:
        """Sub-batches of [b0, b1): on CPU at most CPU_BATCH each and a multiple of the workers; else one."""
        size = b1 - b0
        if not self.cpu:
            return [(b0, b1)]
        k = max(self.workers, math.ceil(size / CPU_BATCH))
        k = min(size, self.workers * math.ceil(k / self.workers))
        edges = [b0 + (size * j) // k for j in range(k + 1)]
        return [(edges[j], edges[j + 1]) for j in range(k)]

    def _solve_piece(self, s0: int, s1: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Initial fields and snapshots of trajectories [s0, s1), ticking the bar at every record."""
        w0 = torch.cat([gaussian_random_field(1, self.solve_res, _trajectory_generator(self.seed, i), self.device,
                                              dtype=self.dtype) for i in range(s0, s1)])
        tick = (s1 - s0) / self.n_rec

        def on_record(_r: int) -> None:
            if self._stop.is_set():
                raise _Stop
            with self._lock:
                self._bar.update(tick)

        info: dict[str, Any] = {}
        traj = solve(w0, self.visc, self.t_final, self.dt_record, self.dt, self.force,
                     cpu_threads=1 if self.cpu else None, on_record=on_record, info=info, record_stride=self.stride,
                     scheme=self.scheme)
        return w0[..., ::self.stride, ::self.stride], traj, info

    def solve_range(self, b0: int, b1: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(u (b, T, H, W), a (b, H, W), dt statistics) of trajectories [b0, b1), in the run's dtype."""
        assert self._pool is not None, "solve_range needs an open session"
        futures = [self._pool.submit(self._solve_piece, s0, s1) for s0, s1 in self._pieces(b0, b1)]
        parts = [f.result() for f in futures]
        u = np.concatenate([p[1].to("cpu").numpy() for p in parts]).astype(self.np_dtype, copy=False)
        a = np.concatenate([p[0].to("cpu").numpy() for p in parts]).astype(self.np_dtype, copy=False)
        if not np.isfinite(u).all():
            raise UserError(f"the simulation blew up (non-finite vorticity) for trajectories {b0}..{b1 - 1}; "
                          f"use a smaller --dt")
        infos = [p[2] for p in parts]
        stats = {"dt_min": min(i["dt_min"] for i in infos), "dt_max": max(i["dt_max"] for i in infos),
                 "steps_min": min(i["steps_min"] for i in infos), "steps_max": max(i["steps_max"] for i in infos)}
        return u, a, stats


def _merge_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """dt statistics over chunks."""
    return {"dt_min": min(s["dt_min"] for s in stats), "dt_max": max(s["dt_max"] for s in stats),
            "steps_min": min(s["steps_min"] for s in stats), "steps_max": max(s["steps_max"] for s in stats)}


def generate(
    n: int, res: int = 64, visc: float = 1e-3, t_final: float = 20.0, seed: int = 0, dt: float | None = None,
    batch_size: int = 32, device: str | None = None, forcing: str | None = "fno", progress: bool = True,
    *, dt_record: float = 1.0, dtype: torch.dtype | str = torch.float32, cpu_threads: int | None = None,
    info: dict[str, Any] | None = None, solve_res: int | None = None, scheme: str = "euler",
) -> np.ndarray:
    """Simulate n FNO-style trajectories in memory; return (n, t_final/dt_record, res, res) snapshots in `dtype`.

    `batch_size` trajectories are solved per chunk (on CPU split over `cpu_threads` workers, default all CPUs).
    Results do not depend on batch size, threads or device beyond FFT rounding (float64, 64², t=2, batch 8 vs 1:
    measured max difference 4e-16 of the max value).
    `info` receives dt statistics, the wall time and the device.
    """
    runner = _Runner(n, res, visc, t_final, seed, dt, batch_size, device, forcing, dt_record, dtype, cpu_threads,
                     solve_res, scheme)
    out = np.empty((runner.n, runner.n_rec, runner.res, runner.res), dtype=runner.np_dtype)
    stats = []
    t0 = time.perf_counter()
    with runner.session(progress) as run:
        for b0 in range(0, runner.n, batch_size):
            b1 = min(runner.n, b0 + batch_size)
            out[b0:b1], _, st = run.solve_range(b0, b1)
            stats.append(st)
    if info is not None:
        info.update(_merge_stats(stats), seconds=time.perf_counter() - t0, device=str(runner.device),
                    threads=runner.workers)
    return out


def generate_to_file(
    out: str | Path, n: int, res: int = 64, visc: float = 1e-3, t_final: float = 20.0, seed: int = 0,
    batch_size: int = 32, device: str | None = None, *, dt: float | None = None, forcing: str | None = "fno",
    dt_record: float = 1.0, dtype: torch.dtype | str = torch.float32, cpu_threads: int | None = None,
    progress: bool = True, restart: bool = False, on_chunk: Callable[[int, int], None] | None = None,
    info: dict[str, Any] | None = None, solve_res: int | None = None, scheme: str = "euler",
) -> Path:
    """Generate a dataset chunk by chunk into `<out>.parts/`, then write `out` atomically and remove the parts.

    Formats: .npz (`u` N×T×H×W, `a` N×H×W initial vorticity, `t`, `meta`), .npy (`u` only) or .mat (MATLAB v7.3,
    FNO's layout `u` N×H×W×T, `a`, `t`). A rerun with the same parameters resumes from the last complete chunk
    (of `batch_size` trajectories, as first chosen); other parameters are refused unless `restart`. `on_chunk(i,
    chunks)` is called after chunk i is saved. Bad arguments fail before anything is written.
    """
    runner = _Runner(n, res, visc, t_final, seed, dt, batch_size, device, forcing, dt_record, dtype, cpu_threads,
                     solve_res, scheme)
    path = check_output_path(out)
    _check_disk(runner, path)
    key = runner.key()
    store = ChunkStore(path, key, batch_size, restart)
    ranges = store.ranges()
    t0 = time.perf_counter()
    with runner.session(progress, done=store.trajectories_done()) as run:
        for i, b0, b1 in ranges:
            if store.has(i):
                continue
            u, a, st = run.solve_range(b0, b1)
            store.save(i, u, a, {**st, "device": str(runner.device)})
            if on_chunk is not None:
                on_chunk(i, len(ranges))
    stats = [store.stats[str(i)] for i, _, _ in ranges]
    times = np.array([runner.dt_record * (k + 1) for k in range(runner.n_rec)], dtype=np.float64)
    meta = {**key, "kind": "navier_stokes_2d_vorticity", "record_times": times.tolist(), **_merge_stats(stats),
            "steps_per_trajectory": max(s["steps_max"] for s in stats),
            "devices": sorted({s["device"] for s in stats})}
    write_dataset(path, store.chunks(), (runner.n, runner.n_rec, runner.res, runner.res), np.dtype(runner.np_dtype),
                  times, meta)
    store.remove()
    if info is not None:
        info.update(_merge_stats(stats), seconds=time.perf_counter() - t0, device=str(runner.device),
                    threads=runner.workers, chunks=len(ranges))
    return path


def cached_dataset_path(directory: str | Path, n: int, res: int = 64, visc: float = 1e-3, t_final: float = 20.0,
                        seed: int = 0, **kwargs: Any) -> Path:
    """Where the .npz for these parameters lives under `directory`: named by the digest of its full key."""
    key = dataset_key(n, res, visc, t_final, seed, kwargs.get("dt"), kwargs.get("forcing", "fno"),
                      kwargs.get("dt_record", 1.0), kwargs.get("dtype", torch.float32), kwargs.get("solve_res"),
                      kwargs.get("scheme", "euler"))
    return Path(directory).expanduser() / f"navier_stokes_n{n}_r{res}_{key_digest(key)}.npz"


def cached_dataset(directory: str | Path, n: int, res: int = 64, visc: float = 1e-3, t_final: float = 20.0,
                   seed: int = 0, progress: bool = True, **kwargs: Any) -> Path:
    """The .npz for these parameters under `directory`, generated once (resumably: an interrupted generation
    continues on the next call)."""
    path = cached_dataset_path(directory, n, res, visc, t_final, seed, **kwargs)
    if not path.is_file():
        generate_to_file(path, n, res, visc, t_final, seed, progress=progress, **kwargs)
    return path
