"""AMMKD (arXiv 2509.00039): two CLIP teachers -> a mobile image encoder with fused class vectors.

Stage 1 pre-trains each teacher contrastively on the data; their text encoders then encode the class prompts (or
captions) once. Stage 2 trains the student with cross-entropy + T^2-scaled KL to each teacher, the teachers'
KL terms weighted adaptively in gradient space (shared `TeacherWeighting`). Both stages run on `Trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from kdmobile.config import AMMKDConfig, save_config
from kdmobile.data import CaptionData, ClassData, load_dataset, split_dataset
from kdmobile.data.transforms import CLIP_MEAN, CLIP_STD, resize_images
from kdmobile.fileio import atomic_path, write_json
from kdmobile.metrics import retrieval_recall, topk_accuracy
from kdmobile.models import create_model, save_model
from kdmobile.models.clip_teacher import ClipTeacher, load_teacher, parse_teacher, save_teacher
from kdmobile.models.profile import count_flops, count_params
from kdmobile.models.student import check_backbone
from kdmobile.rundir import STUDENT_FILE, new_run_dir, teacher_file, write_method, write_metrics
from kdmobile.table import format_table
from kdmobile.train import distributed as dist
from kdmobile.train.loop import RunLog, StepOutput, Trainer, iterate_batches, seed_everything
from kdmobile.train.losses import clip_contrastive, kd_kl
from kdmobile.train.weighting import TeacherWeighting


class Preprocess:
    """uint8 (B,3,H,W) batches -> augmented, CLIP-normalised float batches, on the batch's device."""

    def __init__(self, augment: str) -> None:
        self.augment = augment
        self.mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float() / 255.0
        if train and self.augment != "none":
            x = _random_crop(x, pad=max(1, x.shape[-1] // 16))
            if self.augment == "crop-flip":
                flip = torch.rand(x.shape[0], device=x.device) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def _random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by reflection and crop back to size at a random offset per image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,))
    dx = torch.randint(0, 2 * pad + 1, (b,))
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


@dataclass
class Split:
    """One split as tensors: images (N,3,S,S) uint8 and labels (class data) or caption ownership (captions)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    captions: list[str]
    caption_owner: np.ndarray


def _as_split(data: ClassData | CaptionData, size: int) -> Split:
    images = torch.from_numpy(resize_images(data.images, size)).permute(0, 3, 1, 2).contiguous()
    if isinstance(data, ClassData):
        return Split(images, torch.from_numpy(data.labels.astype(np.int64)), [], np.zeros(0, np.int64))
    caps = [c for cs in data.captions for c in cs]
    owner = np.concatenate([np.full(len(cs), i) for i, cs in enumerate(data.captions)]).astype(np.int64)
    return Split(images, None, caps, owner)


class AMMKD:
    """One AMMKD run: data, teachers, class vectors, student, metrics, all under `self.run`."""

    def __init__(self, cfg: AMMKDConfig, resume: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        # Everything that can fail on user input is checked before the run directory exists.
        self.specs = [parse_teacher(t) for t in cfg.teachers]
        check_backbone(cfg.student)
        self.weighting = TeacherWeighting(cfg.weighting, self._teacher_names(), cfg.tolerance)
        data = load_dataset(cfg.data.spec)
        self.task = "classes" if isinstance(data, ClassData) else "captions"
        self.classes = list(data.classes) if isinstance(data, ClassData) else []
        split_seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
        train, val, test = split_dataset(data, split_seed, cfg.data.val_frac, cfg.data.test_frac,
                                         cfg.data.max_train, cfg.data.max_test)
        size = cfg.data.image_size
        self.train, self.val, self.test = (_as_split(s, size) for s in (train, val, test))
        self.pre = Preprocess(cfg.data.augment if self.task == "classes" else "none")
        self.run = new_run_dir(cfg.out, cfg.name, resume)
        self.log: RunLog | None = None
        self.device = dist.pick_device(cfg.train.device)

    def _teacher_names(self) -> list[str]:
        names: list[str] = []
        for spec in self.specs:
            name = spec.label
            while name in names:
                name += "_b"
            names.append(name)
        return names

    # ------------------------------------------------------------------ driver
    def run_all(self) -> dict[str, Any]:
        """Pre-train teachers, encode class vectors, distil the student, evaluate; returns metrics.json's dict."""
        seed_everything(self.cfg.seed)
        if dist.is_main():
            write_method(self.run, "ammkd")
            save_config(self.run / "config.yaml", self.cfg)
            write_json(self.run / "labels.json", self.classes)
        dist.barrier()
        self.log = RunLog(self.run / "log.jsonl")
        teachers = {name: self.pretrain_teacher(name, spec) for name, spec in zip(self._teacher_names(), self.specs)}
        vectors = {name: self.text_vectors(t) for name, t in teachers.items()}
        if dist.is_main():
            with atomic_path(self.run / "class_vectors.npz") as tmp:
                np.savez(tmp, **{n: v["train"].cpu().numpy() for n, v in vectors.items()})
            self.save_heldout(vectors)
        student = self.distil(teachers, vectors)
        metrics = self.evaluate_all(teachers, vectors, student) if dist.is_main() else {}
        if dist.is_main():
            write_metrics(self.run, metrics)
            self.log.write(stage="done", event="metrics", **{k: v for k, v in metrics.items() if k != "models"})
        return metrics

    # --------------------------------------------------------------- teachers
    def pretrain_teacher(self, name: str, spec: Any) -> ClipTeacher:
        """Stage 1: fine-tune (or train from scratch) one teacher contrastively on this data; cached in teachers/."""
        path = teacher_file(self.run, name)
        if self.resume and path.is_file():
            return load_teacher(path).to(self.device)
        seed_everything(self.cfg.seed + 1)
        teacher = ClipTeacher(spec)
        trainer = Trainer(f"teacher/{name}", teacher, self.cfg.teacher_train, self.run / "stages" / f"teacher_{name}",
                          self.log, self.cfg.seed, self.progress)
        dataset = self._dataset(self.train)
        templates = self.cfg.templates

        def step(model: nn.Module, batch: Any) -> StepOutput:
            images, target = batch
            x = self.pre(images, train=True)
            core = model.module if hasattr(model, "module") else model
            if self.task == "classes":
                template = templates[int(torch.randint(len(templates), (1,)))]
                tokens = core.tokenize([template.format(c) for c in self.classes])
                img, txt = model(x, tokens)
                logits = core.logit_scale() * img @ txt.T
                loss = F.cross_entropy(logits, target)
                acc = (logits.argmax(1) == target).float().mean().item() * 100
                return StepOutput(loss, {"acc": acc})
            owner = torch.from_numpy(self.train.caption_owner)
            caps = [self.train.captions[_pick_caption(owner, int(i))] for i in target.tolist()]
            img, txt = model(x, core.tokenize(caps))
            return StepOutput(clip_contrastive(img, txt, core.logit_scale()), {})

        evaluate = (lambda m: self._eval_teacher(m, self.val)) if len(self.val.images) else None
        teacher = trainer.fit(dataset, step, evaluate, resume=self.resume)
        if dist.is_main():
            save_teacher(path, teacher)
        return teacher.eval()

    def _dataset(self, split: Split) -> TensorDataset:
        target = split.labels if split.labels is not None else torch.arange(len(split.images))
        return TensorDataset(split.images, target)

    @torch.no_grad()
    def _embed(self, encode: Any, split: Split, device: torch.device, batch: int = 256) -> torch.Tensor:
        out = [encode(self.pre(split.images[s].to(device), train=False)).float()
               for s in iterate_batches(len(split.images), batch)]
        return torch.cat(out)

    def _eval_teacher(self, teacher: ClipTeacher, split: Split) -> dict[str, float]:
        device = next(teacher.parameters()).device
        if self.task == "classes":
            cv = teacher.class_vectors(self.classes, self.cfg.templates)
            scores = (self._embed(teacher.encode_image, split, device) @ cv.T).cpu().numpy()
            return topk_accuracy(scores, split.labels.numpy())
        img = self._embed(teacher.encode_image, split, device).cpu().numpy()
        txt = teacher.encode_texts(split.captions).cpu().numpy()
        return retrieval_recall(img, txt, split.caption_owner)

    def text_vectors(self, teacher: ClipTeacher) -> dict[str, torch.Tensor]:
        """Each teacher's text side encoded once: class vectors, or caption vectors per split."""
        if self.task == "classes":
            cv = teacher.class_vectors(self.classes, self.cfg.templates).to(self.device)
            return {"train": cv, "test": cv}
        return {"train": teacher.encode_texts(self.train.captions).to(self.device),
                "test": teacher.encode_texts(self.test.captions).to(self.device)}

    def save_heldout(self, vectors: dict[str, dict[str, torch.Tensor]], calib: int = 256) -> None:
        """heldout.npz: test images (+labels or caption vectors) and calibration images, so export and bench
        can verify and quantize from the run directory alone, without the original dataset."""
        arrays: dict[str, np.ndarray] = {
            "images_test": self.test.images.permute(0, 2, 3, 1).numpy(),
            "images_calib": self.train.images[:calib].permute(0, 2, 3, 1).numpy(),
        }
        if self.task == "classes":
            arrays["labels_test"] = self.test.labels.numpy()
        else:
            arrays["caption_owner_test"] = self.test.caption_owner
            arrays["captions_test"] = np.asarray(self.test.captions)
            arrays.update({f"textvec_test_{n}": v["test"].cpu().numpy() for n, v in vectors.items()})
        with atomic_path(self.run / "heldout.npz") as tmp:
            np.savez(tmp, **arrays)

    # ---------------------------------------------------------------- student
    def build_student(self, teacher_dims: list[int]) -> nn.Module:
        """The student from the registry, so export can rebuild it from student.safetensors alone."""
        return create_model("ammkd_student", backbone=self.cfg.student, embed_dim=self.cfg.embed_dim,
                            teacher_dims=teacher_dims, fusion=self.cfg.fusion, image_size=self.cfg.data.image_size)

    def distil(self, teachers: dict[str, ClipTeacher], vectors: dict[str, dict[str, torch.Tensor]]) -> nn.Module:
        """Stage 2: CE + weighted KL to each teacher, per step."""
        seed_everything(self.cfg.seed + 2)
        names = list(teachers)
        student = self.build_student([int(vectors[n]["train"].shape[1]) for n in names])
        trainer = Trainer("student", student, self.cfg.train, self.run / "stages" / "student", self.log,
                          self.cfg.seed, self.progress)
        for t in teachers.values():
            t.to(trainer.device).requires_grad_(False)
        tv = {n: vectors[n]["train"].to(trainer.device) for n in names}
        owner = torch.from_numpy(self.train.caption_owner)
        use_kd = self.weighting.mode != "none" and self.cfg.kd_weight > 0
        cfg = self.cfg

        def step(model: nn.Module, batch: Any) -> StepOutput:
            images, target = batch
            core = model.module if hasattr(model, "module") else model
            x = self.pre(images, train=True)
            if self.task == "classes":
                texts = tv
                labels = target
            else:  # one random caption of each image in the batch; targets are the diagonal
                picks = torch.tensor([_pick_caption(owner, int(i)) for i in target.tolist()])
                texts = {n: v[picks.to(v.device)] for n, v in tv.items()}
                labels = torch.arange(len(target), device=x.device)
            emb = model(x)
            logits = core.scale() * emb @ core.fuse_text([texts[n] for n in names]).T
            loss = F.cross_entropy(logits, labels)
            stats = {"ce": loss.item(), "acc": (logits.argmax(1) == labels).float().mean().item() * 100}
            if self.task == "captions":
                loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
            loss = cfg.ce_weight * loss
            if use_kd:
                kd_terms = {}
                with torch.no_grad():
                    t_logits = {n: teachers[n].logit_scale() * teachers[n].encode_image(x) @ texts[n].T for n in names}
                for n in names:
                    term = kd_kl(logits, t_logits[n], cfg.temperature)
                    if self.task == "captions":
                        term = 0.5 * (term + kd_kl(logits.T, t_logits[n].T, cfg.temperature))
                    kd_terms[n] = term
                kd, weights = self.weighting.combine(kd_terms, wrt=logits)
                loss = loss + cfg.kd_weight * kd
                stats["kd"] = kd.item()
                stats.update({f"w_{n}": w for n, w in weights.items()})
            return StepOutput(loss, stats)

        def evaluate(model: nn.Module) -> dict[str, float]:
            return self._eval_student(model, {n: vectors[n]["test"] for n in names}, self.val, tv)

        student = trainer.fit(self._dataset(self.train), step, evaluate if len(self.val.images) else None,
                              resume=self.resume)
        if dist.is_main():
            with torch.no_grad():
                fused = student.fuse_text([tv[n] for n in names]).cpu().numpy() if self.task == "classes" else None
            save_model(self.run / STUDENT_FILE, student, extra={
                "task": self.task, "teachers": names, "image_size": self.cfg.data.image_size,
                "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "templates": list(self.cfg.templates),
                "labels": self.classes})
            if fused is not None:
                with atomic_path(self.run / "student_class_vectors.npy") as tmp:
                    np.save(tmp, fused.astype(np.float32))
        return student

    def _eval_student(self, student: nn.Module, test_vectors: dict[str, torch.Tensor], split: Split,
                      train_vectors: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        device = next(student.parameters()).device
        names = list(test_vectors)
        if self.task == "classes":
            vecs = train_vectors or test_vectors
            cv = student.fuse_text([vecs[n].to(device) for n in names])
            scores = (self._embed(student, split, device) @ cv.T).cpu().numpy()
            return topk_accuracy(scores, split.labels.numpy())
        if split is self.val:  # caption vectors of the val split are not precomputed; use the batch-free proxy
            return {}
        txt = student.fuse_text([test_vectors[n].to(device) for n in names]).cpu().numpy()
        img = self._embed(student, split, device).cpu().numpy()
        return retrieval_recall(img, txt, split.caption_owner)

    # ------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate_all(self, teachers: dict[str, ClipTeacher], vectors: dict[str, dict[str, torch.Tensor]],
                     student: nn.Module) -> dict[str, Any]:
        """Teachers and student on the same held-out test split, with parameters and FLOPs."""
        size = self.cfg.data.image_size
        probe = torch.zeros(1, 3, size, size)
        models: dict[str, Any] = {}
        for name, t in teachers.items():
            t = t.cpu()
            tower = t.image_tower()
            tsize = t.image_size
            metric = self._eval_teacher(t, self.test)
            models[f"teacher:{name}"] = {"role": "teacher", "spec": t.spec.model_name, **metric,
                                         "params": count_params(t), "image_params": count_params(tower),
                                         "flops": count_flops(tower, torch.zeros(1, 3, tsize, tsize))}
        student = student.cpu()
        metric = self._eval_student(student, {n: v["test"].cpu() for n, v in vectors.items()}, self.test,
                                    {n: v["train"].cpu() for n, v in vectors.items()})
        models["student"] = {"role": "student", "spec": self.cfg.student, **metric, "params": count_params(student),
                             "image_params": count_params(student) - count_params(student.text_fusion),
                             "flops": count_flops(student, probe)}
        largest = max(m["params"] for m in models.values() if m["role"] == "teacher")
        return {
            "method": "ammkd", "task": self.task, "dataset": self.cfg.data.spec,
            "split_sizes": {"train": len(self.train.images), "val": len(self.val.images), "test": len(self.test.images)},
            "weighting": self.weighting.mode, "fusion": self.cfg.fusion, "seed": self.cfg.seed,
            "student_params_vs_largest_teacher": models["student"]["params"] / largest,
            "models": models,
        }


def _pick_caption(owner: torch.Tensor, image: int) -> int:
    """A random caption index belonging to `image` (torch RNG, so resume reproduces it)."""
    idx = torch.nonzero(owner == image).flatten()
    return int(idx[torch.randint(len(idx), (1,))])


def metrics_table(metrics: dict[str, Any]) -> str:
    """The table `kdmobile train ammkd` prints: accuracy (or recall), parameters, FLOPs per model."""
    keys = ["top1", "top5"] if metrics["task"] == "classes" else ["i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"]
    rows = [[name, *(m.get(k) for k in keys), m["params"], m["image_params"], m["flops"] / 1e6]
            for name, m in metrics["models"].items()]
    return format_table(["model", *keys, "params", "image params", "MFLOPs/img"], rows)


def run_ammkd(cfg: AMMKDConfig, resume: bool = False, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Entry point used by the CLI and the benchmarks: returns (run directory, metrics)."""
    job = AMMKD(cfg, resume=resume, progress=progress)
    return job.run, job.run_all()
