"""AMMKD's distillation objective as named loss terms over named teacher outputs (torchdistill style).

Terms (weights in `loss.terms` of the config, each logged per epoch):
  ce   cross-entropy of the student's scaled cosine logits against the labels (or the batch's captions);
  kl   T^2-scaled KL to each teacher's class (or caption) distribution (AMMKD);
  fd   CLIP-KD feature distillation: the student embedding, projected into each teacher's space, vs the teacher's
       image embedding;
  icl  CLIP-KD interactive contrastive learning: that projected embedding must pick its text among the teacher's.
Every per-teacher term is combined across teachers by the shared `TeacherWeighting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdmobile.models.clip_teacher import ClipTeacher
from kdmobile.train.losses import feature_distill, interactive_contrastive, kd_kl
from kdmobile.train.weighting import TeacherWeighting

TERMS: tuple[str, ...] = ("ce", "kl", "fd", "icl")
FEATURE_TERMS: tuple[str, ...] = ("fd", "icl")


class StudentWithHeads(nn.Module):
    """The student plus one training-only linear projector per teacher (for fd/icl); only `student` is saved."""

    def __init__(self, student: nn.Module, embed_dim: int, teacher_dims: Mapping[str, int]) -> None:
        super().__init__()
        self.student = student
        self.proj = nn.ModuleDict({n: nn.Linear(embed_dim, d, bias=False) for n, d in teacher_dims.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb = self.student(x)
        return emb, {n: p(emb) for n, p in self.proj.items()}


@dataclass
class Batch:
    """One step's inputs: normalised images, targets, and each teacher's text vectors for this batch."""

    x: torch.Tensor
    labels: torch.Tensor
    texts: dict[str, torch.Tensor]
    symmetric: bool  # captions: the batch's images and captions match one to one, both directions count
    teacher_images: dict[str, torch.Tensor] | None = None  # cached teacher embeddings of x (offline KD), else None


class AMMKDLoss:
    """Computes the weighted sum of the configured terms for one batch, with per-term statistics."""

    def __init__(self, terms: Mapping[str, float], weighting: TeacherWeighting, temperature: float,
                 label_smoothing: float, active: Sequence[str]) -> None:
        self.terms = {k: float(v) for k, v in terms.items() if float(v) > 0}
        self.weighting = weighting
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.active = list(active)
        self.kd = weighting.mode != "none" and bool(self.active) and any(t != "ce" for t in self.terms)

    def __call__(self, model: nn.Module, teachers: Mapping[str, ClipTeacher], b: Batch) -> tuple[torch.Tensor, dict]:
        core = model.module if hasattr(model, "module") else model
        student = core.student if isinstance(core, StudentWithHeads) else core
        out = model(b.x)
        emb, projected = out if isinstance(out, tuple) else (out, {})
        logits = student.scale() * emb @ student.fuse_text([b.texts[n] for n in b.texts]).T
        ce = self._ce(logits, b.labels, b.symmetric, self.label_smoothing)
        stats = {"ce": ce.item(), "acc": (logits.argmax(1) == b.labels).float().mean().item() * 100}
        loss = self.terms.get("ce", 0.0) * ce
        if not self.kd:
            return loss, stats
        with torch.no_grad():
            t_img = ({n: b.teacher_images[n] for n in self.active} if b.teacher_images is not None
                     else {n: teachers[n].encode_image(b.x).float() for n in self.active})
            t_logits = {n: teachers[n].logit_scale() * t_img[n] @ b.texts[n].T for n in self.active}
            errors = {n: F.cross_entropy(t_logits[n], b.labels, reduction="none") for n in self.active}
        per_term = {
            "kl": lambda n: self._kl(logits, t_logits[n], b.symmetric),
            "fd": lambda n: feature_distill(projected[n], t_img[n], reduce=False),
            "icl": lambda n: interactive_contrastive(projected[n], b.texts[n], b.labels,
                                                     teachers[n].logit_scale(), reduce=False),
        }
        for term, weight in self.terms.items():
            if term == "ce":
                continue
            values = {n: per_term[term](n) for n in self.active}
            combined, w = self.weighting.combine(values, wrt=logits if term == "kl" else emb,
                                                 teacher_errors=errors, active=self.active)
            loss = loss + weight * combined
            stats[term] = combined.item()
            stats.update({f"w_{term}_{n}": v for n, v in w.items()})
            if term == "kl":  # the historical key of the KL weights, read by the bench and tests
                stats.update({f"w_{n}": v for n, v in w.items()})
        return loss, stats

    @staticmethod
    def _ce(logits: torch.Tensor, labels: torch.Tensor, symmetric: bool, smoothing: float) -> torch.Tensor:
        ce = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        return 0.5 * (ce + F.cross_entropy(logits.T, labels, label_smoothing=smoothing)) if symmetric else ce

    def _kl(self, logits: torch.Tensor, t_logits: torch.Tensor, symmetric: bool) -> torch.Tensor:
        kl = kd_kl(logits, t_logits, self.temperature, reduce=False)
        if symmetric:  # per image: its row and its column (caption side) of the batch's similarity matrix
            kl = 0.5 * (kl + kd_kl(logits.T, t_logits.T, self.temperature, reduce=False))
        return kl
