"""The run plan `kdmobile train` prints before it trains (and all that `--dry-run` does): the data found, the image
size and why, the stages with epochs and steps, device and threads, the teacher files, and an estimated duration.

Shared by every method (each method's own plan module, e.g. kdmobile.ammkd.plan, fills a RunPlan); `--teachers-from
RUN` is resolved here: RUN/teachers/*.safetensors, in the run's order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kdmobile.console import fmt_duration
from kdmobile.errors import UserError
from kdmobile.rundir import METRICS_FILE, TEACHERS_DIR, read_method, read_metrics, teacher_files
from kdmobile.train import distributed as dist
from kdmobile.train.progress import StageEstimate


@dataclass
class RunPlan:
    """What a run is about to do; `render()` gives the text printed before training."""

    method: str
    run_dir: Path
    facts: list[tuple[str, str]] = field(default_factory=list)      # (label, text) lines
    stages: list[StageEstimate] = field(default_factory=list)
    stage_notes: dict[str, str] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    probe_note: str = ""

    def estimate_s(self) -> float | None:
        """Seconds for all stages from the probe, or None when some stage was not probed."""
        parts = [s.epochs * s.steps_per_epoch * s.probe_s if s.probe_s is not None else None for s in self.stages
                 if s.epochs > 0 and not s.finished]
        return None if any(p is None for p in parts) else float(sum(p for p in parts if p is not None))

    def render(self) -> str:
        """The plan as aligned lines, each well under 120 columns for ordinary names."""
        lines = [f"run plan: {self.method} -> {self.run_dir}"]
        for label, text in self.facts:
            for i, part in enumerate(text.split("\n")):
                lines.append(f"  {label if i == 0 else '':<11}{part}")
        width = max([len(s.name) for s in self.stages] + [5])
        for i, s in enumerate(self.stages):
            batch = self.batch_sizes.get(s.name)
            size = (f"{s.epochs:>3} epoch{'s' if s.epochs != 1 else ' '} x {s.steps_per_epoch:>4} steps"
                    + (f" (batch {batch})" if batch else ""))
            eta = f"~{fmt_duration(s.epochs * s.steps_per_epoch * s.probe_s)}" if s.probe_s is not None else ""
            note = self.stage_notes.get(s.name, "")
            if s.epochs == 0:
                size, eta = "no training", ""
            eta = "" if s.finished else eta
            text = "  ".join(p for p in (f"{s.name:<{width}}", size, eta, note) if p)
            lines.append(f"  {'stages' if i == 0 else '':<11}{text}")
        total = self.estimate_s()
        if total is not None:
            lines.append(f"  {'estimate':<11}~{fmt_duration(total)} of training ({self.probe_note}); refined from "
                         ">= 10 s of warm steps of each stage")
        else:
            lines.append(f"  {'estimate':<11}from >= 10 s of warm steps of each stage (printed as they are timed)")
        return "\n".join(lines)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps per epoch for n samples, as `Trainer._loader` batches them (per process under DDP)."""
    world = max(dist.world_size(), 1)
    per_rank = n // world if world > 1 else n
    drop_last = n // world > batch_size
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


# ------------------------------------------------------------------------------------------- --teachers-from
def teacher_files_from(run: str | Path, method: str) -> list[str]:
    """The trained teacher files of an earlier run, in the order that run used them (its metrics.json)."""
    path = Path(run).expanduser()
    found = read_method(path)
    if found != method:
        raise UserError(f"--teachers-from {path}: a {found} run; its teachers cannot serve a {method} run")
    files = teacher_files(path)
    if not files:
        raise UserError(f"--teachers-from {path}: no trained teachers in {path / TEACHERS_DIR} (did its teacher stage "
                        "finish?)")
    order: list[str] = []
    if (path / METRICS_FILE).is_file():
        models = read_metrics(path).get("models", {})
        order = [k.split(":", 1)[-1] for k, m in models.items() if m.get("role") == "teacher"]
    files.sort(key=lambda f: (order.index(f.stem) if f.stem in order else len(order), f.stem))
    return [str(f) for f in files]


def mark_done(plan: RunPlan, outputs: dict[str, Path]) -> None:
    """--resume: stages whose output file exists are skipped by the run, so they count as done in the estimate."""
    for s in plan.stages:
        if s.name in outputs and outputs[s.name].is_file():
            s.finished, s.probe_s = True, 0.0
            plan.stage_notes[s.name] = "(done: resumed past it)"


def time_steps(step: Callable[[], None], device: torch.device, reps: int = 1) -> float:
    """Seconds per call of `step` after one warm-up call (CUDA synchronised)."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(reps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / reps
