"""The plan of an SDKD run: its data (or that it is still to be generated), teachers and stages with steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdmobile.config import SDKDConfig
from kdmobile.rundir import NOKD_FILE, STUDENT_FILE, teacher_file
from kdmobile.train import distributed as dist
from kdmobile.train.plan import RunPlan, StageEstimate, mark_done, steps_per_epoch

_ARCH = {"sdkd_teacher": "conv+Transformer forecaster", "sdkd_simvp": "SimVP v2-style forecaster"}


def sdkd_plan(cfg: SDKDConfig, job: Any | None, run_dir: Path, teachers_from: str | None = None) -> RunPlan:
    """The plan of an SDKD run; `job` is None when its data is still to be generated (dry run)."""
    plan = RunPlan("sdkd", run_dir)
    d = cfg.data
    if job is not None:
        s = job.splits
        n_train, n_lab = len(s.train_x), job.n_labelled
        labelled = "" if n_lab == n_train else f" ({n_lab:,} with futures, the rest pseudo-labelled by KD students)"
        plan.facts.append(("data", f"{job.source}: {d.frames_in} frames in -> {d.frames_out} out, "
                                   f"{s.train_x.shape[-2]}x{s.train_x.shape[-1]} grid; windows train {n_train:,}"
                                   f"{labelled} / val {len(s.val_x):,} / test {len(s.test_x):,}"))
    else:
        n_train = n_lab = 0
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
    if cfg.student_init:
        plan.facts.append(("student init", f"{cfg.student_init} (phase 2: the student continues from it)"))
    pseudo = n_train if cfg.kd != "none" and cfg.pseudo_labels else n_lab
    stages = [] if cfg.teacher_files else [(f"teacher/{n}", cfg.teacher_train, n_lab) for n in names]
    if cfg.baseline and cfg.kd != "none":
        stages.append(("student_nokd", cfg.train, n_lab))
    stages.append(("student", cfg.train, pseudo))
    for name, tc, windows in stages:
        plan.stages.append(StageEstimate(name, tc.epochs, steps_per_epoch(windows, tc.batch_size)))
        plan.batch_sizes[name] = tc.batch_size
    if job is not None and job.resume:
        mark_done(plan, {**{f"teacher/{n}": teacher_file(run_dir, n) for n in names},
                          "student_nokd": run_dir / NOKD_FILE, "student": run_dir / STUDENT_FILE})
    return plan
