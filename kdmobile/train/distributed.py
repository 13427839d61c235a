"""torch.distributed set-up for `torchrun`: gloo on CPU, nccl on GPU; rank 0 alone writes files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from kdmobile.errors import UserError

T = TypeVar("T")


def world_size() -> int:
    """Processes in the job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the process that writes checkpoints, logs and outputs."""
    return rank() == 0


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` -> this rank's GPU if CUDA is available, else the CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine")
    return torch.device(requested)


def init(device: torch.device) -> None:
    """Join the process group when launched by torchrun (idempotent)."""
    if world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)


def agree(make: "Callable[[], T]", device: torch.device) -> "T":
    """`make()` evaluated on rank 0 alone and handed to every rank (e.g. the run directory's name, which another
    rank could otherwise pick differently once rank 0 has created it); plain `make()` without torchrun."""
    if world_size() <= 1:
        return make()
    init(device)
    box = [make() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def claim_run(picked: Path, name: str, resume: bool, device: torch.device) -> Path:
    """Create the run directory now (rank 0; every rank learns the name): another run may have taken `picked`
    meanwhile, and then the next free name is used and said."""
    from kdmobile.rundir import claim_run_dir

    run = agree(lambda: claim_run_dir(picked, name, resume), device)
    if run != picked and is_main():
        print(f"kdmobile: {picked} was taken by another run meanwhile; writing to {run}", flush=True)
    return run


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values
