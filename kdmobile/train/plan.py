"""The run plan `kdmobile train` prints before it trains (and all that `--dry-run` does): the data found, the image
size and why, the stages with epochs and steps, device and threads, the teacher files, and an estimated duration.

The AMMKD estimate comes from timing a few real-size training steps of every stage's models up front (a "probe":
throw-away models, no files, before the run seeds its RNG); the reporter (progress.py) then refines it from the
warm steps (>= 10 s) of each stage. `--teachers-from RUN` is resolved here too: RUN/teachers/*.safetensors, in the run's order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from kdmobile.config import AMMKDConfig, SDKDConfig, read_yaml
from kdmobile.console import fmt_duration
from kdmobile.errors import KDError, UserError
from kdmobile.rundir import (CONFIG_FILE, METRICS_FILE, NOKD_FILE, STUDENT_FILE, TEACHERS_DIR, read_method, read_metrics,
                             teacher_file, teacher_files)
from kdmobile.train import distributed as dist
from kdmobile.train.ammkd_eval import normalise
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


def source_mismatch(run: str | Path, cfg: AMMKDConfig) -> str | None:
    """A warning when the reused teachers were trained on other data or another split than this run's test split."""
    try:
        src = read_metrics(Path(run).expanduser())
        src_cfg = read_yaml(Path(run).expanduser() / CONFIG_FILE) or {}
    except (KDError, OSError):
        return None
    if not isinstance(src, dict) or not isinstance(src_cfg, dict) or not isinstance(src_cfg.get("data", {}), dict):
        return None
    data = src_cfg.get("data", {})
    split = lambda d, seed: d.get("split_seed") if d.get("split_seed") is not None else seed  # noqa: E731
    mine = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
    if src.get("dataset") != cfg.data.spec or split(data, src_cfg.get("seed")) != mine:
        return (f"the teachers were trained on {src.get('dataset')} (split seed {split(data, src_cfg.get('seed'))}); "
                f"this run's test split ({cfg.data.spec}, split seed {mine}) may hold their training images")
    return None


# -------------------------------------------------------------------------------------------------------- AMMKD
def _why_size(job: Any) -> str:
    size = job.cfg.data.image_size
    return f"{size}x{size} px input: {job.size_reason}"


def _teacher_source(spec: Any, epochs: int) -> str:
    from kdmobile.models.clip_teacher import BUILTIN_TEACHERS

    train = "reused as is (no training)" if epochs == 0 else f"fine-tuned {epochs} epoch{'s' if epochs != 1 else ''}"
    if spec.checkpoint:
        return f"{spec.checkpoint} (kdmobile teacher file, {train})"
    if spec.pretrained:
        return f"open_clip {spec.model_name}:{spec.pretrained} ({train})"
    if spec.model_name in BUILTIN_TEACHERS:
        return f"built-in config {spec.model_name}, trained from scratch ({epochs} epoch{'s' if epochs != 1 else ''})"
    return f"open_clip {spec.model_name}, random init ({epochs} epoch{'s' if epochs != 1 else ''})"


def ammkd_plan(job: Any, probe: bool = True, teachers_from: str | None = None) -> RunPlan:
    """The plan of an `AMMKD` job (constructed, not yet run: its data is loaded, nothing is written)."""
    cfg: AMMKDConfig = job.cfg
    plan = RunPlan("ammkd", job.run)
    n = {k: len(getattr(job, k)) for k in ("train", "val", "test")}
    what = f"{len(job.classes)} classes" if job.task == "classes" else f"{len(job.train.captions)} train captions"
    limits = "".join(f", --{k.replace('_', '-')} {v}" for k, v in (("max_train", cfg.data.max_train),
                                                                    ("max_test", cfg.data.max_test)) if v)
    plan.facts.append(("data", f"{cfg.data.spec}: {what}; train {n['train']:,} / val {n['val']:,} / test "
                               f"{n['test']:,} images{limits}"))
    if job.layout:
        plan.facts.append(("layout", f"{job.layout}; photos decoded from disk by "
                                     f"{job.loader_workers()} DataLoader worker(s) per process"))
    plan.facts.append(("image size", _why_size(job)))
    threads = torch.get_num_threads()
    world = dist.world_size()
    plan.facts.append(("device", f"{job.device}, {threads} torch threads" + (f", {world} processes" if world > 1
                                                                              else "")))
    names = job._teacher_names()  # noqa: SLF001 - the run's own naming of its teachers
    lines = [f"{name}: {_teacher_source(spec, cfg.teacher_epochs(name))}" for name, spec in zip(names, job.specs)]
    if teachers_from:
        lines.insert(0, f"from {teachers_from}/teachers/")
    plan.facts.append(("teachers", "\n".join(lines)))
    plan.facts.append(("writes", f"{job.run}/ (teachers/, {STUDENT_FILE}, metrics.json, log.jsonl)"))
    for name in names:
        stage = f"teacher/{name}"
        plan.stages.append(StageEstimate(stage, cfg.teacher_epochs(name),
                                         steps_per_epoch(n["train"], cfg.teacher_train.batch_size)))
        plan.batch_sizes[stage] = cfg.teacher_train.batch_size
    for stage in (["student_nokd"] if job.trains_baseline else []) + ["student"]:
        plan.stages.append(StageEstimate(stage, cfg.train.epochs, steps_per_epoch(n["train"], cfg.train.batch_size)))
        plan.batch_sizes[stage] = cfg.train.batch_size
    if job.resume:
        _mark_done(plan, {**{f"teacher/{name}": teacher_file(job.run, name) for name in names},
                          "student_nokd": job.run / NOKD_FILE})
    if probe and n["train"]:
        started = time.perf_counter()
        for stage, seconds in probe_ammkd(job).items():
            for s in plan.stages:
                if s.name == stage and not s.finished:
                    s.probe_s = seconds
        plan.probe_note = f"probed each stage with 2 steps in {time.perf_counter() - started:.1f}s"
    return plan


def _mark_done(plan: RunPlan, outputs: dict[str, Path]) -> None:
    """--resume: stages whose output file exists are skipped by the run, so they count as done in the estimate."""
    for s in plan.stages:
        if s.name in outputs and outputs[s.name].is_file():
            s.finished, s.probe_s = True, 0.0
            plan.stage_notes[s.name] = "(done: resumed past it)"


def _time_steps(step: Callable[[], None], device: torch.device, reps: int = 1) -> float:
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


def probe_ammkd(job: Any) -> dict[str, float]:
    """Seconds per training step of each stage, timed on throw-away models at the run's batch and image sizes."""
    from kdmobile.models.clip_teacher import ClipTeacher
    from kdmobile.train.losses import kd_kl

    cfg: AMMKDConfig = job.cfg
    device = job.device
    size = cfg.data.image_size
    out: dict[str, float] = {}
    teachers = {}
    for name, spec in zip(job._teacher_names(), job.specs):  # noqa: SLF001
        teacher = ClipTeacher(spec, load_pretrained=False).to(device)  # weights do not change the time
        teachers[name] = teacher
        if cfg.teacher_epochs(name) == 0:
            continue
        bs = min(cfg.teacher_train.batch_size, len(job.train))
        texts = ([cfg.templates[0].format(c) for c in job.classes] if job.task == "classes"
                 else job.train.captions[:bs])
        opt = torch.optim.AdamW(teacher.parameters(), lr=1e-6)

        def teacher_step(t: Any = teacher, o: Any = opt, b: int = bs, txt: list[str] = texts) -> None:
            x = normalise(torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8).to(device))
            img, emb = t(x, t.tokenize(txt))
            loss = (t.logit_scale() * img @ emb.T).logsumexp(1).mean()
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

        out[f"teacher/{name}"] = _time_steps(teacher_step, device)
        teacher.eval().requires_grad_(False)
    for t in teachers.values():
        t.eval().requires_grad_(False)
    if cfg.train.epochs > 0:
        dims = [int(t.embed_dim or cfg.embed_dim) for t in teachers.values()]
        student = job.build_student(dims, init=False).to(device)  # no download for a plan
        vectors = [F.normalize(torch.randn(max(len(job.classes), 2), d, device=device), dim=-1) for d in dims]
        opt = torch.optim.AdamW(student.parameters(), lr=1e-6)
        bs = min(cfg.train.batch_size, len(job.train))
        use_kd = job.weighting.mode != "none" and any(w > 0 for k, w in cfg.loss.terms.items() if k != "ce")

        def student_step(kd: bool = use_kd) -> None:
            x = normalise(torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8).to(device))
            logits = student.scale() * student(x) @ student.fuse_text(vectors).T
            loss = logits.logsumexp(1).mean()
            if kd:
                with torch.no_grad():
                    t_logits = [t.logit_scale() * t.encode_image(x) @ v.T for t, v in zip(teachers.values(), vectors)]
                loss = loss + sum(kd_kl(logits, tl, cfg.temperature) for tl in t_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out["student"] = _time_steps(student_step, device)
        if job.trains_baseline:
            out["student_nokd"] = _time_steps(lambda: student_step(kd=False), device)
    teachers.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the throw-away models' memory goes back before the run starts
    return out


# --------------------------------------------------------------------------------------------------------- SDKD
_ARCH = {"sdkd_teacher": "conv+Transformer forecaster", "sdkd_simvp": "SimVP v2-style forecaster"}


def sdkd_plan(cfg: SDKDConfig, job: Any | None, run_dir: Path, teachers_from: str | None = None) -> RunPlan:
    """The plan of an SDKD run; `job` is None when its data is still to be generated (dry run)."""
    plan = RunPlan("sdkd", run_dir)
    d = cfg.data
    if job is not None:
        s = job.splits
        n_train = len(s.train_x)
        plan.facts.append(("data", f"{job.source}: {d.frames_in} frames in -> {d.frames_out} out, "
                                   f"{s.train_x.shape[-2]}x{s.train_x.shape[-1]} grid; windows train {n_train:,} / "
                                   f"val {len(s.val_x):,} / test {len(s.test_x):,}"))
    else:
        n_train = 0
        plan.facts.append(("data", f"Navier-Stokes n={d.n}, {d.res}x{d.res}: generated and cached on the first real "
                                   "run (--dry-run generates nothing), so steps are not known yet"))
    plan.facts.append(("device", f"{dist.pick_device(cfg.train.device)}, {torch.get_num_threads()} torch threads"))
    names = (["teacher"] if (len(cfg.teacher_files) or cfg.teachers) == 1
             else [f"teacher{i + 1}" for i in range(len(cfg.teacher_files) or cfg.teachers)])
    lines = ([f"{n}: {f} (reused as is, no training)" for n, f in zip(names, cfg.teacher_files)] if cfg.teacher_files
             else [f"{n}: {_ARCH[cfg.teacher_models[i % len(cfg.teacher_models)]]}, trained here "
                   f"({cfg.teacher_train.epochs} epochs)" for i, n in enumerate(names)])
    if teachers_from:
        lines.insert(0, f"from {teachers_from}/teachers/")
    plan.facts.append(("teachers", "\n".join(lines)))
    stages = [] if cfg.teacher_files else [(f"teacher/{n}", cfg.teacher_train) for n in names]
    if cfg.baseline and cfg.kd != "none":
        stages.append(("student_nokd", cfg.train))
    stages.append(("student", cfg.train))
    for name, tc in stages:
        plan.stages.append(StageEstimate(name, tc.epochs, steps_per_epoch(n_train, tc.batch_size)))
        plan.batch_sizes[name] = tc.batch_size
    if job is not None and job.resume:
        _mark_done(plan, {**{f"teacher/{n}": teacher_file(run_dir, n) for n in names},
                          "student_nokd": run_dir / NOKD_FILE, "student": run_dir / STUDENT_FILE})
    return plan
