"""AMMKD (arXiv 2509.00039): two CLIP teachers -> a mobile image encoder with fused class vectors.

Stage 1 pre-trains each teacher contrastively on the data (augmentation, warm-up + cosine, label smoothing); their
text encoders then encode the class prompts (or captions) once. A no-KD student is trained as the baseline, and
every teacher must beat it clearly (health check) to teach. Stage 2 trains the student on the named loss terms of
`kdmobile.ammkd.loss`, the teachers combined per term by the shared `TeacherWeighting`. All stages run on `Trainer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdmobile.config import AMMKDConfig, save_config
from kdmobile.contracts.heldout import HeldOut, write_heldout
from kdmobile.data import CaptionData, load_dataset, split_dataset
from kdmobile.data.transforms import CLIP_MEAN, CLIP_STD
from kdmobile.fileio import atomic_path, write_json
from kdmobile.models import create_model, save_model
from kdmobile.models.clip_teacher import ClipTeacher, load_teacher, parse_teacher, save_teacher, with_image_size
from kdmobile.models.profile import count_flops, count_params
from kdmobile.models.student import check_backbone
from kdmobile.models.student_init import apply_init, resolve_init
from kdmobile.student_choice import AUTO
from kdmobile.rundir import (CLASS_VECTORS_FILE, CONFIG_FILE, LABELS_FILE, LOG_FILE, NOKD_FILE, STUDENT_CLASS_VECTORS_FILE,
                             STUDENT_FILE, check_resume, new_run_dir, stage_dir, teacher_file,
                             write_method, write_metrics)
from kdmobile.train import distributed as dist
from kdmobile.ammkd.auto_student import AutoChoice, choose_auto_student
from kdmobile.ammkd.evaluate import HEALTH_METRIC, Split, as_split, eval_student, eval_teacher, normalise
from kdmobile.ammkd.evaluate import metrics_table  # noqa: F401  (re-exported for the CLI)
from kdmobile.ammkd.inputs import auto_image_size, class_prompts, native_size, pick_caption
from kdmobile.ammkd.loss import FEATURE_TERMS, AMMKDLoss, Batch, StudentWithHeads
from kdmobile.train.augment import AugmentedImages, resolve_augment
from kdmobile.train.image_stream import FileImages, FileViews, decode_sample, default_workers, train_transform
from kdmobile.train.health import TeacherHealth, announce, check_teachers, health_record
from kdmobile.train.loop import RunLog, StepOutput, Trainer, seed_everything
from kdmobile.train.losses import clip_contrastive
from kdmobile.train.view_cache import CachedViews, SeedCache, TensorViews, ViewSource, check_cache_dir, load_or_build
from kdmobile.train.weighting import TeacherWeighting

NOT_FLIP_INVARIANT = ("digits",)  # datasets whose meaning a horizontal flip changes
HELDOUT_MAX = 2000  # test images of a photo folder kept in heldout.npz (export verifies on 1,000 of them)


class AMMKD:
    """One AMMKD run: data, teachers, class vectors, baseline, student, metrics, all under `self.run`."""

    def __init__(self, cfg: AMMKDConfig, resume: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        # Everything that can fail on user input is checked before the run directory exists.
        self.specs = [parse_teacher(t) for t in cfg.teachers]
        if cfg.student != AUTO:
            check_backbone(cfg.student)
        self.weighting = TeacherWeighting(cfg.weighting, self._teacher_names(), cfg.tolerance)
        data = load_dataset(cfg.data.spec)
        captioned = isinstance(data, CaptionData) or getattr(data, "captions", None) is not None
        self.task = "captions" if captioned else "classes"
        self.classes = [] if captioned else list(data.classes)
        self.layout = getattr(data, "layout", None)
        split_seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
        train, val, test = split_dataset(data, split_seed, cfg.data.val_frac, cfg.data.test_frac,
                                         cfg.data.max_train, cfg.data.max_test)
        self.size_reason = "set by --image-size / the config"
        if cfg.data.image_size is None:
            native = native_size(data)  # one header read (a photo folder's first image)
            cfg.data.image_size = auto_image_size(native)
            self.size_reason = (f"from the data ({native} px images; 32 px for small images, else up to 96 px; "
                                "--image-size changes it)")
        flip_ok = cfg.data.spec.split(":", 1)[0] not in NOT_FLIP_INVARIANT
        cfg.data.augment = resolve_augment(cfg.data.augment, flip_ok)
        cfg.data.teacher_augment = resolve_augment(cfg.data.teacher_augment, flip_ok, teacher=True)
        self.size = cfg.data.image_size
        self.auto: AutoChoice | None = None  # what `--student auto` measured (the config keeps "auto")
        self.student = cfg.student
        if cfg.student == AUTO:
            budget = float(cfg.latency_budget_ms or 0)  # the config refuses auto without a budget
            self.auto = dist.agree(lambda: choose_auto_student(cfg.student_candidates, budget, self.size,
                                                               cfg.embed_dim, cfg.student_int8,
                                                               runtime=cfg.student_runtime,
                                                               int8_for=cfg.student_int8_for),
                                   dist.pick_device(cfg.train.device))  # timed once (rank 0), shared by all ranks
            self.student = self.auto.backbone
        self._init_weights = resolve_init(cfg.student_init, self.student)  # read or fetched now: fails before training
        self.specs = [with_image_size(s, self.size) for s in self.specs]
        self.train, self.val, self.test = (as_split(s, self.size) for s in (train, val, test))
        if cfg.data.views > 0 and cfg.data.view_cache:
            check_cache_dir(Path(cfg.data.view_cache).expanduser())
        self.run = dist.agree(lambda: new_run_dir(cfg.out, cfg.name, resume), dist.pick_device(cfg.train.device))
        if resume:  # before anything is written: a finished run, or other settings, are refused
            check_resume(self.run, cfg.model_dump(mode="json"))
        self.log: RunLog | None = None
        self._views: SeedCache | None = None
        self.device = dist.pick_device(cfg.train.device)

    def _teacher_names(self) -> list[str]:
        names: list[str] = []
        for spec in self.specs:
            name = spec.label
            while name in names:
                name += "_b"
            names.append(name)
        return names

    @property
    def trains_baseline(self) -> bool:
        """A no-KD student is trained when asked and when the student distils at all (else it is that student)."""
        kd_on = self.weighting.mode != "none" and any(w > 0 for t, w in self.cfg.loss.terms.items() if t != "ce")
        return self.cfg.baseline and kd_on

    @property
    def health_split(self) -> Split:
        """Where teachers and the no-KD student are compared: validation when there is one, else test."""
        return self.val if len(self.val) else self.test

    # ------------------------------------------------------------------ driver
    def run_all(self) -> dict[str, Any]:
        """Teachers, class vectors, baseline + health check, distillation, evaluation; returns metrics.json's dict."""
        seed_everything(self.cfg.seed)
        self.run = dist.claim_run(self.run, self.cfg.name, self.resume, self.device)
        if dist.is_main():
            write_method(self.run, "ammkd")
            save_config(self.run / CONFIG_FILE, self.cfg)
            write_json(self.run / LABELS_FILE, self.classes)
        dist.barrier()
        self.log = RunLog(self.run / LOG_FILE)
        teachers = {name: self.pretrain_teacher(name, spec) for name, spec in zip(self._teacher_names(), self.specs)}
        vectors = {name: self.text_vectors(t) for name, t in teachers.items()}
        if dist.is_main():
            with atomic_path(self.run / CLASS_VECTORS_FILE) as tmp:
                np.savez(tmp, **{n: v["train"].cpu().numpy() for n, v in vectors.items()})
            self.save_heldout(vectors)
        baseline = self.distil(teachers, vectors, kd=False) if self.trains_baseline else None
        health = self.check_health(teachers, vectors, baseline) if baseline is not None else []
        dropped = [h.teacher for h in health if not h.healthy] if self.cfg.health.drop_weak else []
        active = [n for n in teachers if n not in dropped]
        student = self.distil(teachers, vectors, kd=True, active=active)
        metrics = self.evaluate_all(teachers, vectors, student, baseline) if dist.is_main() else {}
        if dist.is_main():
            metrics["teacher_health"] = health_record(health, dropped)
            write_metrics(self.run, metrics)
            self.log.write(stage="done", event="metrics", **{k: v for k, v in metrics.items() if k != "models"})
        return metrics

    # --------------------------------------------------------------- teachers
    def _dataset(self, split: Split, level: str) -> AugmentedImages | FileImages:
        """Training views: torchvision on in-memory tensors, or timm's transforms on photos decoded by workers."""
        if split.files is not None:
            return FileImages(split.files, split.targets(), train_transform(self.size, level))
        return AugmentedImages(split.images, split.targets(), level)  # type: ignore[arg-type]

    def pretrain_teacher(self, name: str, spec: Any) -> ClipTeacher:
        """Stage 1: fine-tune (or train from scratch) one teacher contrastively on this data; cached in teachers/."""
        path = teacher_file(self.run, name)
        if self.resume and path.is_file():
            return load_teacher(path).to(self.device)
        seed_everything(self.cfg.seed + 1)
        teacher = ClipTeacher(spec)
        tcfg = self.cfg.teacher_train.model_copy(update={"epochs": self.cfg.teacher_epochs(name)})
        if spec.pretrained or spec.checkpoint:  # fine-tuning weights that already mean something
            tcfg = tcfg.model_copy(update={"lr": self.cfg.teacher_finetune_lr})
        trainer = Trainer(f"teacher/{name}", teacher, tcfg, stage_dir(self.run, f"teacher_{name}"),
                          self.log, self.cfg.seed, self.progress)
        templates = self.cfg.templates

        def step(model: nn.Module, batch: Any) -> StepOutput:
            images, target = batch
            x = normalise(images)
            core = model.module if hasattr(model, "module") else model
            if self.task == "classes":
                template = templates[int(torch.randint(len(templates), (1,)))]
                prompts, index = class_prompts(target, self.classes, template)
                img, txt = model(x, core.tokenize(prompts))
                logits = core.logit_scale() * img @ txt.T
                loss = F.cross_entropy(logits, index, label_smoothing=tcfg.label_smoothing)
                return StepOutput(loss, {"acc": (logits.argmax(1) == index).float().mean().item() * 100})
            caps = [self.train.captions[pick_caption(self._owner, int(i))] for i in target.tolist()]
            img, txt = model(x, core.tokenize(caps))
            return StepOutput(clip_contrastive(img, txt, core.logit_scale()), {})

        evaluate = (lambda m: eval_teacher(m, self.val, self.classes, templates)) if len(self.val) else None
        teacher = trainer.fit(self._dataset(self.train, self.cfg.data.teacher_augment), step, evaluate,
                              resume=self.resume)
        if dist.is_main():
            save_teacher(path, teacher)
        return teacher.eval()

    @property
    def _owner(self) -> torch.Tensor:
        return torch.from_numpy(self.train.caption_owner)

    def text_vectors(self, teacher: ClipTeacher) -> dict[str, torch.Tensor]:
        """Each teacher's text side encoded once: class vectors, or caption vectors per split."""
        if self.task == "classes":
            cv = teacher.class_vectors(self.classes, self.cfg.templates).to(self.device)
            return {"train": cv, "val": cv, "test": cv}
        return {k: teacher.encode_texts(s.captions).to(self.device)
                for k, s in (("train", self.train), ("val", self.val), ("test", self.test))}

    def save_heldout(self, vectors: dict[str, dict[str, torch.Tensor]], calib: int = 256) -> None:
        """heldout.npz: test images (+labels or caption vectors) and calibration images, so export and bench
        can verify and quantize from the run directory alone, without the original dataset."""
        keep = np.arange(len(self.test))
        if self.test.files is not None:  # a bounded, evenly spaced sample of the test split, decoded once
            keep = np.unique(np.linspace(0, len(self.test) - 1, min(len(self.test), HELDOUT_MAX)).round()
                             .astype(np.int64))
            images = {"images_test": decode_sample(self.test.files, keep, self.size),
                      "images_calib": decode_sample(self.train.files, np.arange(min(calib, len(self.train))),
                                                    self.size)}
        else:
            images = {"images_test": self.test.images.permute(0, 2, 3, 1).numpy(),
                      "images_calib": self.train.images[:calib].permute(0, 2, 3, 1).numpy()}
        if self.task == "classes":
            held = HeldOut(**images, labels_test=self.test.labels.numpy()[keep])
        else:  # the kept images' captions, with owners renumbered to the kept images
            rows = np.flatnonzero(np.isin(self.test.caption_owner, keep))
            held = HeldOut(**images, caption_owner_test=np.searchsorted(keep, self.test.caption_owner[rows]),
                           captions_test=np.asarray(self.test.captions)[rows],
                           textvec_test={n: v["test"].cpu().numpy()[rows] for n, v in vectors.items()})
        write_heldout(self.run, held)

    # ---------------------------------------------------------------- health
    def check_health(self, teachers: dict[str, ClipTeacher], vectors: dict[str, dict[str, torch.Tensor]],
                     baseline: nn.Module) -> list[TeacherHealth]:
        """Every teacher vs the no-KD student on the health split; weak teachers are logged and printed loudly."""
        split = self.health_split
        key = "val" if split is self.val else "test"
        metric = HEALTH_METRIC[self.task]
        values = {n: eval_teacher(t.to(self.device), split, self.classes, self.cfg.templates)[metric]
                  for n, t in teachers.items()}
        alone = eval_student(baseline.to(self.device), [vectors[n][key] for n in teachers], split)[metric]
        checks = check_teachers(values, alone, f"{key} {metric}", True, self.cfg.health.margin)
        announce(checks, self.log, self.progress, dist.is_main())
        if dist.is_main() and checks and not any(c.healthy for c in checks) and self.cfg.health.drop_weak:
            print("kdmobile: warning: no teacher beats the student alone: the student is trained without distillation "
                  "(--set health.drop_weak=false distils anyway)", flush=True)
        return checks

    # ---------------------------------------------------------------- student
    def loader_workers(self) -> int:
        """DataLoader workers the student's stages use (the plan shows it)."""
        w = self.cfg.train.workers
        return w if w is not None else (default_workers() if self.train.files is not None else 0)

    def build_student(self, teacher_dims: list[int], init: bool = True) -> nn.Module:
        """The student from the registry, so export can rebuild it from student.safetensors alone."""
        student = create_model("ammkd_student", backbone=self.student, embed_dim=self.cfg.embed_dim,
                               teacher_dims=teacher_dims, fusion=self.cfg.fusion, image_size=self.size)
        if init:
            self.student_init = apply_init(student, self._init_weights)
        return student

    def distil(self, teachers: dict[str, ClipTeacher], vectors: dict[str, dict[str, torch.Tensor]], kd: bool,
               active: list[str] | None = None) -> nn.Module:
        """Stage 2 (kd=True: the configured terms from the `active` teachers) or the no-KD baseline (CE only)."""
        stage = "student" if kd else "student_nokd"
        seed_everything(self.cfg.seed + 2)
        names = list(teachers)
        active = list(names if active is None else active) if kd else []
        dims = {n: int(vectors[n]["train"].shape[1]) for n in names}
        student = self.build_student([dims[n] for n in names])
        if self.log is not None and dist.is_main():
            self.log.write(stage=stage, event="init", student_init=self.student_init)
        terms = dict(self.cfg.loss.terms) if kd else {"ce": max(self.cfg.loss.terms["ce"], 1.0)}
        heads = bool(active) and any(terms.get(t, 0) > 0 for t in FEATURE_TERMS)
        model = StudentWithHeads(student, self.cfg.embed_dim, {n: dims[n] for n in active}) if heads else student
        trainer = Trainer(stage, model, self.cfg.train, stage_dir(self.run, stage), self.log, self.cfg.seed,
                          self.progress)
        for t in teachers.values():
            t.to(trainer.device).requires_grad_(False)
        tv = {n: vectors[n]["train"].to(trainer.device) for n in names}
        loss_fn = AMMKDLoss(terms, self.weighting, self.cfg.temperature, self.cfg.train.label_smoothing, active)

        cache = self.view_cache(teachers) if self.cfg.data.views > 0 else None

        def step(m: nn.Module, batch: Any) -> StepOutput:
            images, target, *rest = batch
            x = normalise(images)
            cached = {n: rest[0][n].float() for n in active} if rest and active else None
            if self.task == "classes":
                b = Batch(x, target, tv, symmetric=False, teacher_images=cached)
            else:  # one random caption of each image in the batch; targets are the diagonal
                picks = torch.tensor([pick_caption(self._owner, int(i)) for i in target.tolist()])
                b = Batch(x, torch.arange(len(target), device=x.device),
                          {n: v[picks.to(v.device)] for n, v in tv.items()}, symmetric=True, teacher_images=cached)
            return StepOutput(*loss_fn(m, teachers, b))

        def evaluate(m: nn.Module) -> dict[str, float]:
            s = m.student if isinstance(m, StudentWithHeads) else m
            return eval_student(s, [vectors[n]["val"] for n in names], self.val)

        data = (CachedViews(cache, self._view_source(), self.train.targets(), offset=self.cfg.seed)
                if cache is not None else self._dataset(self.train, self.cfg.data.augment))
        trained = trainer.fit(data, step,
                              evaluate if len(self.val) else None, resume=self.resume)
        student = trained.student if isinstance(trained, StudentWithHeads) else trained
        if dist.is_main():
            self._save_student(student, names, tv, STUDENT_FILE if kd else NOKD_FILE, kd)
        return student

    def _view_source(self) -> ViewSource:
        """What regenerates a training view from its seed: the in-memory images or the photo files."""
        if self.train.files is not None:
            return FileViews(self.train.files, self.size, self.cfg.data.augment)
        return TensorViews(self.train.images, self.cfg.data.augment)  # type: ignore[arg-type]

    def view_cache(self, teachers: dict[str, ClipTeacher]) -> SeedCache:
        """Every training view's seed and every teacher's embedding of it (built once, shared by both stages and by
        any run pointing data.view_cache at the same directory with the same inputs; ranks build shards in turn)."""
        if self._views is None:
            path = Path(self.cfg.data.view_cache) if self.cfg.data.view_cache else self.run / "views"
            dims = {n: int(t.embed_dim or 0) for n, t in teachers.items()}
            self._views = load_or_build(path, self._view_source(), self.cfg.data.augment, self.cfg.data.views,
                                        self.cfg.data.view_seed, {n: t.to(self.device) for n, t in teachers.items()},
                                        dims, normalise, self.device, self.cfg.train.workers,
                                        progress=self.progress and dist.is_main())
        return self._views

    def _save_student(self, student: nn.Module, names: list[str], tv: dict[str, torch.Tensor], file: str,
                      fused_vectors: bool) -> None:
        save_model(self.run / file, student, extra={
            "task": self.task, "teachers": names, "image_size": self.size,
            "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "templates": list(self.cfg.templates),
            "labels": self.classes})
        if fused_vectors and self.task == "classes":
            with torch.no_grad():
                fused = student.fuse_text([tv[n] for n in names]).cpu().numpy()
            with atomic_path(self.run / STUDENT_CLASS_VECTORS_FILE) as tmp:
                np.save(tmp, fused.astype(np.float32))

    # ------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate_all(self, teachers: dict[str, ClipTeacher], vectors: dict[str, dict[str, torch.Tensor]],
                     student: nn.Module, baseline: nn.Module | None) -> dict[str, Any]:
        """Teachers, the no-KD student and the student on the same held-out test split, with parameters and FLOPs."""
        probe = torch.zeros(1, 3, self.size, self.size)
        models: dict[str, Any] = {}
        for name, t in teachers.items():
            t = t.cpu()
            tower = t.image_tower()
            metric = eval_teacher(t, self.test, self.classes, self.cfg.templates)
            models[f"teacher:{name}"] = {"role": "teacher", "spec": t.spec.model_name, **metric,
                                         "params": count_params(t), "image_params": count_params(tower),
                                         "flops": count_flops(tower, torch.zeros(1, 3, t.image_size, t.image_size))}
        test_vectors = [vectors[n]["test"].cpu() for n in teachers]
        for key, model in (("student_nokd", baseline), ("student", student)):
            if model is None:
                continue
            model = model.cpu()
            models[key] = {"role": key, "spec": self.student, **eval_student(model, test_vectors, self.test),
                           "params": count_params(model),
                           "image_params": count_params(model) - count_params(model.text_fusion),
                           "flops": count_flops(model, probe)}
        largest = max(m["params"] for m in models.values() if m["role"] == "teacher")
        out = {
            "method": "ammkd", "task": self.task, "dataset": self.cfg.data.spec, "image_size": self.size,
            "split_sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "weighting": self.weighting.mode, "fusion": self.cfg.fusion, "seed": self.cfg.seed,
            "student_init": self.cfg.student_init,
            "loss_terms": {k: v for k, v in self.cfg.loss.terms.items() if v > 0},
            "student_params_vs_largest_teacher": models["student"]["params"] / largest,
            "models": models,
        }
        if baseline is not None:
            metric = HEALTH_METRIC[self.task]
            out["kd_gain_points"] = models["student"][metric] - models["student_nokd"][metric]
        return out


def run_ammkd(cfg: AMMKDConfig, resume: bool = False, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Entry point used by the CLI and the benchmarks: returns (run directory, metrics)."""
    job = AMMKD(cfg, resume=resume, progress=progress)
    return job.run, job.run_all()
