"""The AMMKD student: a timm mobile backbone, an image-side multi-scale fusion and a text-side teacher fusion.

Only `forward` (image -> L2-normalised embedding) is exported; `fuse_text` turns both teachers' class vectors
into one set in the student's space once, at export, so no text encoder runs on the phone.
"""

from __future__ import annotations

import math
from typing import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from kdmobile.config import DEFAULT_STUDENT
from kdmobile.errors import UserError
from kdmobile.models.registry import register_model

FUSION_MODES = ("full", "none")


def check_backbone(name: str) -> None:
    """One-line KDError for a name timm does not know, before any teacher is trained."""
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{str(name)[:20]}*")[:5] if isinstance(name, str) and name else []
        hint = f"; similar: {', '.join(close)}" if close else "; e.g. mobilenetv3_small_075, mobilenetv3_large_100"
        raise UserError(f"--student {name!r}: not a timm model{hint}")


class ImageFusion(nn.Module):
    """Merge globally pooled features of several backbone stages with learned softmax gates and an MLP."""

    def __init__(self, channels: Sequence[int], dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(c, dim) for c in channels)
        self.gates = nn.Parameter(torch.zeros(len(channels)))
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        gates = torch.softmax(self.gates, dim=0)
        merged = sum(gates[i] * head(f.mean(dim=(2, 3))) for i, (head, f) in enumerate(zip(self.heads, feats)))
        return merged + self.mlp(merged)


class TextFusion(nn.Module):
    """Fuse the teachers' text vectors for the same classes into one vector per class in the student's space."""

    def __init__(self, teacher_dims: Sequence[int], dim: int, mix: bool) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, dim, bias=False) for d in teacher_dims)
        self.mix = (
            nn.Sequential(nn.Linear(dim * len(teacher_dims), dim), nn.GELU(), nn.Linear(dim, dim)) if mix else None
        )

    def forward(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        projected = [p(v) for p, v in zip(self.proj, vectors)]
        fused = torch.stack(projected).mean(0)
        if self.mix is not None:
            fused = fused + self.mix(torch.cat(projected, dim=-1))
        return F.normalize(fused, dim=-1)


@register_model("ammkd_student")
class RetrievalStudent(nn.Module):
    """Image encoder + fusion heads; logits are scaled cosine similarities to fused class vectors."""

    def __init__(
        self,
        backbone: str = DEFAULT_STUDENT,
        embed_dim: int = 128,
        teacher_dims: Sequence[int] = (256, 256),
        fusion: str = "full",
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}")
        check_backbone(backbone)
        self.image_size = image_size
        self.fusion = fusion
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True)
        channels = self.backbone.feature_info.channels()
        self.stages = len(channels)
        used = channels[-3:] if fusion == "full" else channels[-1:]
        self.n_used = len(used)
        self.image_fusion = ImageFusion(used, embed_dim) if fusion == "full" else None
        self.image_head = nn.Linear(used[-1], embed_dim) if fusion == "none" else None
        self.text_fusion = TextFusion(teacher_dims, embed_dim, mix=fusion == "full")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image batch (B,3,H,W) -> L2-normalised embeddings (B,D). This is what gets exported."""
        feats = self.backbone(images)[-self.n_used :]
        if self.image_fusion is not None:
            emb = self.image_fusion(feats)
        else:
            emb = self.image_head(feats[-1].mean(dim=(2, 3)))
        return F.normalize(emb, dim=-1)

    def fuse_text(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each teacher's (K, D_m) text vectors -> (K, D) fused, L2-normalised class vectors."""
        return self.text_fusion(vectors)

    def scale(self) -> torch.Tensor:
        """The logit scale, clamped as CLIP does so training cannot blow it up."""
        return self.logit_scale.exp().clamp(max=100.0)
