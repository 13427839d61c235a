"""The plan of an AMMKD run: its data, image size and why, teachers, stages, and a duration estimate from timing a
few real-size training steps of every stage's models up front (a "probe": throw-away models, no files, before the run
seeds its RNG); the reporter (kdmobile.train.progress) then refines it from the warm steps (>= 10 s) of each stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdmobile.ammkd.evaluate import normalise
from kdmobile.config import AMMKDConfig, read_yaml
from kdmobile.errors import KDError
from kdmobile.rundir import CONFIG_FILE, NOKD_FILE, STUDENT_FILE, read_metrics, teacher_file
from kdmobile.train import distributed as dist
from kdmobile.train.plan import RunPlan, StageEstimate, mark_done, steps_per_epoch, time_steps


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
    if job.auto is not None:
        plan.facts.append(("student", f"{job.student} (--student auto: {job.auto.reason})\n"
                                      f"{job.auto.where}\n{job.auto.table()}"))
    else:
        plan.facts.append(("student", job.student))
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
        mark_done(plan, {**{f"teacher/{name}": teacher_file(job.run, name) for name in names},
                          "student_nokd": job.run / NOKD_FILE})
    if probe and n["train"]:
        started = time.perf_counter()
        for stage, seconds in probe_ammkd(job).items():
            for s in plan.stages:
                if s.name == stage and not s.finished:
                    s.probe_s = seconds
        plan.probe_note = f"probed each stage with 2 steps in {time.perf_counter() - started:.1f}s"
    return plan


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

        out[f"teacher/{name}"] = time_steps(teacher_step, device)
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

        out["student"] = time_steps(student_step, device)
        if job.trains_baseline:
            out["student_nokd"] = time_steps(lambda: student_step(kd=False), device)
    teachers.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the throw-away models' memory goes back before the run starts
    return out
