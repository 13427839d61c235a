"""The one training loop every kdmobile method runs on.

It owns devices, DDP, mixed precision, the optimiser and schedule (warm-up, cosine, gradient clipping, optional EMA
of the weights), per-epoch checkpoints with exact resume, the progress bar and the JSONL log. A method supplies only a model, a dataset, a step function and an evaluation.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from kdmobile.config import TrainConfig
from kdmobile.errors import UserError
from kdmobile.fileio import append_jsonl, atomic_path
from kdmobile.train import distributed as dist
from kdmobile.train import progress as progress_report


@dataclass
class StepOutput:
    """What a method's step returns: the loss to back-propagate and batch-mean statistics to log."""

    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


StepFn = Callable[[nn.Module, Any], StepOutput]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


class RunLog:
    """Append-only JSONL log of a run (rank 0 writes; other ranks drop records)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, **record: Any) -> None:
        """Append one record with a timestamp."""
        if dist.is_main():
            append_jsonl(self.path, {"time": round(time.time(), 3), **record})


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every RNG state as tensors, lists and numbers only, so a checkpoint loads with torch.load(weights_only=True)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": [version, list(internal), gauss],
                             "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                                       int(has_gauss), float(cached)],
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(name), np.asarray(keys, dtype=np.int64).astype(np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train one model for one stage (e.g. `teacher/kd-vit-s` or `student`), checkpointing into `stage_dir`."""

    def __init__(self, stage: str, model: nn.Module, cfg: TrainConfig, stage_dir: Path, log: RunLog | None,
                 seed: int, progress: bool = True, callbacks: list[Callable[["Trainer"], None]] | None = None) -> None:
        self.stage = stage
        self.cfg = cfg
        self.stage_dir = Path(stage_dir)
        self.log = log
        self.seed = seed
        self.progress = progress and dist.is_main()
        self.callbacks = callbacks or []
        self.device = dist.pick_device(cfg.device)
        dist.init(self.device)
        self.model = model.to(self.device)
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self._timed = False  # the first batches of this stage were timed for the run estimate
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.ema = _make_ema(self.model, cfg.ema)

    # ----------------------------------------------------------------- helpers
    def _amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or self.cfg.amp == "off":
            return None
        if self.cfg.amp == "fp16":
            return torch.float16
        if self.cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision on CUDA (bf16 where supported), a no-op on CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    @property
    def checkpoint_path(self) -> Path:
        """Where the per-epoch checkpoint of this stage lives."""
        return self.stage_dir / "last.pt"

    def _loader(self, dataset: Dataset, epoch: int) -> DataLoader:
        if dist.world_size() > 1:
            sampler: Any = DistributedSampler(dataset, shuffle=True, seed=self.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            sampler = RandomSampler(dataset, generator=gen)
        drop_last = len(dataset) // max(dist.world_size(), 1) > self.cfg.batch_size
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.workers(dataset), pin_memory=self.device.type == "cuda")

    def workers(self, dataset: Dataset) -> int:
        """The configured worker count, else what the dataset asks for (photo folders: per core), else 0."""
        if self.cfg.workers is not None:
            return self.cfg.workers
        ask = getattr(dataset, "default_workers", None)
        return int(ask()) if callable(ask) else 0

    def _schedule(self, steps_per_epoch: int) -> Callable[[int], float]:
        total = max(1, self.cfg.epochs * steps_per_epoch)
        warm = int(self.cfg.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return factor

    def _save(self, epoch: int, opt: torch.optim.Optimizer, sched: Any) -> None:
        if not dist.is_main():
            return
        state = {"stage": self.stage, "epoch": epoch, "global_step": self.global_step,
                 "model": self.model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else None, "rng": _rng_state(),
                 "ema": self.ema.module.state_dict() if self.ema is not None else None,
                 "history": self.history}
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def _load(self, opt: torch.optim.Optimizer, sched: Any) -> int:
        try:  # weights_only: tensors and plain containers only, so a crafted checkpoint cannot run code
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(f"{self.checkpoint_path}: refused: it holds objects beyond tensors and plain data (an old "
                          "kdmobile checkpoint or a crafted file; unpickling could run code); delete it to restart "
                          "this stage") from None
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a truncated file
            raise UserError(f"{self.checkpoint_path}: cannot resume from a corrupt checkpoint "
                          f"({' '.join(str(exc).split())[:160]})") from None
        self.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state["rng"].items()})
        self.global_step = state["global_step"]
        self.history = state["history"]
        return int(state["epoch"])

    # -------------------------------------------------------------------- main
    def fit(self, dataset: Dataset, step: StepFn, evaluate: EvalFn | None = None, resume: bool = False) -> nn.Module:
        """Train for `cfg.epochs`, resuming from this stage's checkpoint if asked; returns the trained model."""
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        steps_per_epoch = len(self._loader(dataset, 0))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._schedule(steps_per_epoch))
        start = 0
        if resume and self.checkpoint_path.is_file():
            start = self._load(opt, sched)
            if self.log and start < self.cfg.epochs:
                self.log.write(stage=self.stage, event="resume", epoch=start)
        wrapped = self.model
        if dist.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(self.model, device_ids=ids)
        # One bar for the whole stage (its ETA covers every epoch); epoch lines are written above it.
        reporter = progress_report.active() if dist.is_main() else None
        stage_started = time.perf_counter()
        if reporter:
            reporter.stage_start(self.stage, self.cfg.epochs, start, steps_per_epoch)
        bar = tqdm(total=max(0, self.cfg.epochs - start) * steps_per_epoch, desc=self.stage,
                   disable=not self.progress or start >= self.cfg.epochs, leave=False, dynamic_ncols=True)
        with bar:
            for epoch in range(start, self.cfg.epochs):
                epoch_started = time.perf_counter()
                self.model.train()
                if hasattr(dataset, "set_epoch"):  # e.g. cached views: which view each image shows this epoch
                    dataset.set_epoch(epoch)
                record = self._run_epoch(wrapped, self._loader(dataset, epoch), step, opt, sched, epoch, bar, reporter)
                if evaluate is not None and dist.is_main():
                    self.model.eval()
                    with torch.no_grad(), self.autocast():
                        record.update({f"val_{k}": float(v) for k, v in evaluate(self.final_model()).items()})
                    self._keep_if_best(record)
                self.history.append(record)
                if self.log:
                    self.log.write(stage=self.stage, event="epoch", **record)
                self._save(epoch + 1, opt, sched)
                if reporter:
                    reporter.epoch_end(self.stage, record, self.cfg.epochs, time.perf_counter() - epoch_started)
                dist.barrier()
        if reporter:
            reporter.stage_end(self.stage, self.history, time.perf_counter() - stage_started)
        if self.ema is not None:  # the averaged weights are the result
            self.model.load_state_dict(self.ema.module.state_dict())
        if self.cfg.keep_best and self.best_path.is_file():
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(self.best_path), device=str(self.device)))
        self.model.eval()
        return self.model

    @property
    def best_path(self) -> Path:
        """Where `keep_best` keeps the weights of the best epoch so far (safetensors, survives a resume)."""
        return self.stage_dir / "best.safetensors"

    def _keep_if_best(self, record: dict[str, Any]) -> None:
        """With `keep_best`, save the weights when this epoch's first validation value is the lowest so far."""
        vals = [k for k in record if k.startswith("val_")]
        if not self.cfg.keep_best or not vals:
            return
        key = vals[0]
        before = [h[key] for h in self.history if key in h]
        if before and record[key] >= min(before):
            return
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.final_model().state_dict().items()}
        with atomic_path(self.best_path) as tmp:
            save_file(state, str(tmp))
        record["best"] = True

    def final_model(self) -> nn.Module:
        """The weights this stage will return: the EMA copy when EMA is on, else the model itself."""
        return self.ema.module if self.ema is not None else self.model

    def _run_epoch(self, model: nn.Module, loader: DataLoader, step: StepFn, opt: torch.optim.Optimizer,
                   sched: Any, epoch: int, bar: Any, reporter: progress_report.Reporter | None) -> dict[str, Any]:
        sums: dict[str, float] = {}
        seen = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        bar.set_description(f"{self.stage} {epoch + 1}/{self.cfg.epochs}")
        timed = WarmStepTimer(len(loader), started) if reporter and not self._timed else None
        waiting = time.perf_counter()
        for batch in loader:
            if timed is not None:
                timed.waited(time.perf_counter() - waiting, _batch_len(batch))
            batch = _to_device(batch, self.device)
            with self.autocast():
                out = step(model, batch)
            if not torch.isfinite(out.loss):
                raise UserError(f"{self.stage}: loss became {out.loss.item()} at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.scale(out.loss).backward()
                self.scaler.unscale_(opt)
            else:
                out.loss.backward()
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if self.scaler:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            sched.step()
            self.global_step += 1
            if self.ema is not None:
                self.ema.update(self.model, step=self.global_step)
            n = _batch_len(batch)
            seen += n
            for k, v in {"loss": out.loss.item(), **out.stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            bar.update(1)
            bar.set_postfix({k: f"{sums[k] / seen:.3f}" for k in ("loss", "acc") if k in sums})
            if timed is not None and reporter is not None:
                result = timed.tick(time.perf_counter())
                if result is not None:
                    reporter.steps_timed(self.stage, *result)
                    self._timed, timed = True, None
            for cb in self.callbacks:
                cb(self)
            waiting = time.perf_counter()
        totals = dist.all_reduce_sum(torch.tensor([seen, *sums.values()], dtype=torch.float64))
        seen_all = max(totals[0].item(), 1.0)
        record = {"epoch": epoch + 1, **{k: totals[i + 1].item() / seen_all for i, k in enumerate(sums)}}
        record["lr"] = sched.get_last_lr()[0]
        record["seconds"] = round(time.perf_counter() - started, 3)
        if self.device.type == "cuda":
            record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return record


def _make_ema(model: nn.Module, decay: float) -> Any:
    """timm's EMA of the weights (with warm-up, so short runs are not dominated by the initial weights), or None."""
    if decay <= 0:
        return None
    from timm.utils.model_ema import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


class WarmStepTimer:
    """Times a stage's warm steps for the run estimate: from the end of the first step (which pays for warm-up) until
    `min_seconds` have passed or the epoch ends, so a loaded machine or a slow first batch cannot set the estimate.
    It also adds up how long the loop waited for its input, so a user sees when decoding is the bottleneck."""

    def __init__(self, steps: int, started: float, min_seconds: float = 10.0) -> None:
        self.steps, self.started, self.min_seconds = steps, started, min_seconds
        self.count = 0
        self.first_done = started
        self.wait_s = 0.0
        self.images = 0

    def waited(self, seconds: float, images: int) -> None:
        """The loop waited `seconds` for a batch of `images` (counted after the first step only)."""
        if self.count >= 1:
            self.wait_s += seconds
            self.images += images

    def tick(self, now: float) -> tuple[float, float, float] | None:
        """After each step: (seconds per step, images per second through the loop, fraction of time waiting for
        data) once enough warm steps are timed, else None."""
        self.count += 1
        if self.steps <= 1:
            return now - self.started, 0.0, 0.0
        if self.count == 1:
            self.first_done = now
            return None
        elapsed = now - self.first_done
        if elapsed < self.min_seconds and self.count < self.steps:
            return None
        n = self.count - 1
        return elapsed / n, self.images / max(elapsed, 1e-9), min(1.0, self.wait_s / max(elapsed, 1e-9))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values())) if isinstance(batch, dict) else batch
    return int(first.shape[0])


def iterate_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices covering range(n) in order, for evaluation passes."""
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))
