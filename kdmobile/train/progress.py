"""What a training run tells the user as it goes: one persistent line per epoch, a summary per stage, and an
estimate of the time left that is refined from measured batches.

The CLI installs a `Reporter` with `reporting(...)`; `Trainer` (loop.py) calls its hooks on the main process.
Lines go through `tqdm.write`, so they stay above the live progress bar instead of being overwritten by it.
Without an installed reporter (library use, tests) the loop prints nothing extra.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from kdmobile.console import fmt_duration


@dataclass
class StageEstimate:
    """One stage of a run: its size, and the seconds per optimiser step probed up front and/or measured."""

    name: str
    epochs: int
    steps_per_epoch: int
    probe_s: float | None = None       # seconds per step from the pre-flight probe (plan.py), if any
    measured_s: float | None = None    # seconds per step timed on this stage's first batches
    eval_ratio: float | None = None    # epoch wall time / training time (validation overhead), measured
    done_epochs: int = 0
    finished: bool = False
    wall_s: float = 0.0

    def step_seconds(self, calibration: float) -> float | None:
        """Best guess of seconds per step: measured, else the probe scaled by how probes compared so far."""
        if self.measured_s is not None:
            return self.measured_s
        return None if self.probe_s is None else self.probe_s * calibration

    def left_s(self, calibration: float, eval_ratio: float) -> float | None:
        """Seconds this stage still needs (None when it cannot be estimated yet)."""
        if self.finished:
            return 0.0
        per_step = self.step_seconds(calibration)
        if per_step is None:
            return None
        epochs_left = max(0, self.epochs - self.done_epochs)
        return epochs_left * self.steps_per_epoch * per_step * (self.eval_ratio or eval_ratio)


def _val_metric(record: dict[str, Any]) -> str:
    """The validation metric of an epoch record, short: 'val top1 50.2%', 'val mse 0.0123' or ''."""
    for key, label, pct in (("val_top1", "val top1", True), ("val_i2t_R@1", "val R@1", True),
                            ("val_mse", "val mse", False)):
        if key in record:
            v = float(record[key])
            return f"{label} {v:5.1f}%" if pct else f"{label} {v:.4g}"
    other = sorted(k for k in record if k.startswith("val_"))
    return f"{other[0][4:]} {float(record[other[0]]):.4g}" if other else ""


@dataclass
class Reporter:
    """Prints epoch lines, stage summaries and run estimates; collects per-stage timing."""

    stages: list[StageEstimate] = field(default_factory=list)
    write: Callable[[str], None] = field(default=lambda line: tqdm.write(line))
    started: float = field(default_factory=time.perf_counter)

    def _stage(self, name: str) -> StageEstimate:
        for s in self.stages:
            if s.name == name:
                return s
        s = StageEstimate(name, 0, 0)
        self.stages.append(s)
        return s

    def _calibration(self) -> float:
        """Measured / probed seconds per step over the stages that have both (1 when none has)."""
        pairs = [(s.measured_s, s.probe_s) for s in self.stages if s.measured_s and s.probe_s]
        return sum(m for m, _ in pairs) / sum(p for _, p in pairs) if pairs else 1.0

    def _eval_ratio(self) -> float:
        ratios = [s.eval_ratio for s in self.stages if s.eval_ratio]
        return sum(ratios) / len(ratios) if ratios else 1.0

    def left(self) -> tuple[float, bool]:
        """(seconds left in the run, True when every remaining stage could be estimated)."""
        cal, ratio = self._calibration(), self._eval_ratio()
        parts = [s.left_s(cal, ratio) for s in self.stages]
        return sum(p for p in parts if p is not None), all(p is not None for p in parts)

    def left_text(self) -> str:
        """'~4m10s' or '>= 4m10s' (some later stage not timed yet)."""
        seconds, complete = self.left()
        return ("~" if complete else ">= ") + fmt_duration(seconds)

    # ------------------------------------------------------------------------ hooks called by Trainer
    def stage_start(self, name: str, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
        """A stage begins (or resumes at `start_epoch`)."""
        s = self._stage(name)
        s.epochs, s.steps_per_epoch, s.done_epochs = epochs, steps_per_epoch, start_epoch

    def steps_timed(self, name: str, seconds_per_step: float, images_per_s: float = 0.0,
                    data_wait: float = 0.0) -> None:
        """A stage's warm steps were timed (>= 10 s of them, or its first epoch): print the refined estimate once,
        with the images/s the loop trained on and the share of time it waited for the input pipeline."""
        s = self._stage(name)
        first = s.measured_s is None
        s.measured_s = seconds_per_step
        if first:
            stage_left = s.left_s(self._calibration(), self._eval_ratio()) or 0.0
            data = ""
            if images_per_s > 0:
                data = f"; {images_per_s:,.0f} img/s through the loop, waited for data {data_wait:.0%} of the time"
                if data_wait > 0.3:
                    data += " (decoding is the bottleneck: more --workers or a smaller --image-size)"
            self.write(f"estimate  {name}: {fmt_duration(stage_left)} ({seconds_per_step:.3g} s/step x "
                       f"{(s.epochs - s.done_epochs) * s.steps_per_epoch} steps, timed on its warm steps{data}); "
                       f"run left {self.left_text()}")

    def epoch_end(self, name: str, record: dict[str, Any], epochs: int, wall_s: float) -> None:
        """One persistent line for a finished epoch."""
        s = self._stage(name)
        s.done_epochs = int(record.get("epoch", s.done_epochs + 1))
        train_s = float(record.get("seconds") or 0.0)
        if train_s > 0:
            s.eval_ratio = max(1.0, wall_s / train_s)
            if s.steps_per_epoch:
                s.measured_s = train_s / s.steps_per_epoch  # a whole epoch is the better measurement
        parts = [f"{name:<18} ep {s.done_epochs:>{len(str(epochs))}}/{epochs}", f"loss {float(record['loss']):.4f}"
                 if "loss" in record else ""]
        if "acc" in record:
            parts.append(f"train acc {float(record['acc']):5.1f}%")
        parts += [_val_metric(record), f"{wall_s:6.1f}s", f"run left {self.left_text()}"]
        self.write("  ".join(p for p in parts if p))

    def stage_end(self, name: str, history: list[dict[str, Any]], wall_s: float) -> None:
        """A per-stage summary line: epochs, time, best and last validation metric."""
        s = self._stage(name)
        s.finished, s.wall_s = True, wall_s
        if s.epochs == 0:
            self.write(f"done      {name}: no training (0 epochs: weights used as they are)")
            return
        text = f"done      {name}: {s.epochs} epoch{'s' if s.epochs != 1 else ''} in {fmt_duration(wall_s)}"
        keys = [k for k in ("val_top1", "val_i2t_R@1", "val_mse") if history and k in history[-1]]
        if keys:
            k = keys[0]
            pick = min if k == "val_mse" else max
            best = pick(history, key=lambda r: r[k])
            fmt = (lambda v: f"{v:.4g}") if k == "val_mse" else (lambda v: f"{v:.1f}%")
            text += f"; val {k[4:]} best {fmt(best[k])} (epoch {best['epoch']}), last {fmt(history[-1][k])}"
        self.write(text)

    def total_line(self) -> str:
        """The run's total time (printed above the final table)."""
        return f"total training time {fmt_duration(time.perf_counter() - self.started)}"


_ACTIVE: Reporter | None = None


def active() -> Reporter | None:
    """The reporter installed by `reporting`, if any."""
    return _ACTIVE


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Install `reporter` for the block (Trainer stages inside it report to it), restoring the previous one."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, reporter
    try:
        yield reporter
    finally:
        _ACTIVE = previous
