"""What the resumable benchmarks share: a records file of finished runs, and training runs in child processes.

Each finished run is written to the records file at once and skipped when the benchmark is run again, so a long
benchmark can be interrupted and continued. Every training runs in a fresh child process (the benchmark script
itself, with extra arguments), which writes its result to a shard file that only the parent merges into the
records: N runs can go at once (`--jobs`), and each child's peak RSS is that training's own memory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterator

from kdmobile.experiments import Records


def run_children(script: str, common: list[str], records: Records, jobs: list[list[str]], parallel: int = 1,
                 threads: int | None = None) -> Iterator[tuple[list[str], dict[str, Any]]]:
    """(job, result) as each child `script *common *job --shard FILE` finishes, `parallel` at a time.

    The result is the shard the child wrote ({} when it failed; its output says why)."""

    def one(job: list[str]) -> dict[str, Any]:
        shard = records.path.with_name(f"{records.path.stem}.{'-'.join(job).replace(':', '-').replace('/', '-')}.json")
        shard.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        done = subprocess.run([sys.executable, script, *common, *job, "--shard", str(shard)], env=env, check=False)
        if done.returncode != 0 or not shard.is_file():
            print(f"job failed (exit {done.returncode}): {' '.join(job)}", file=sys.stderr, flush=True)
            return {}
        out = json.loads(shard.read_text())
        shard.unlink()
        return out

    pool = ThreadPoolExecutor(max(1, parallel))
    futures = {pool.submit(one, job): job for job in jobs}
    try:
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    finally:
        pool.shutdown(cancel_futures=True)


def without_set_keys(over: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """`over` minus the keys a --set KEY=VALUE names, so that the user's --set wins over the benchmark's settings
    (kdmobile.config.load_config lets flag-level overrides win over --set, as on the command line)."""
    named = {item.split("=", 1)[0].strip() for item in sets}
    return {k: v for k, v in over.items() if k not in named}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    """The host CPU's model name and the ISA flags that decide its speed, recorded next to every figure."""
    from kdmobile.runtime.measure import host_info

    info = host_info()
    flags = [k for k, v in info["isa"].items() if v]
    return f"{info['cpu']} ({', '.join(flags) or 'no AVX2/AVX-512/VNNI/AMX'}; {info['cores']} cores)"


def device_name(device: str) -> str:
    """The training device, with the card's name when it is a GPU."""
    if device in ("cuda", "auto") or device.startswith("cuda:"):
        import torch

        if torch.cuda.is_available():
            return f"cuda ({torch.cuda.get_device_name()})"
        return "cpu" if device == "auto" else device
    return device
