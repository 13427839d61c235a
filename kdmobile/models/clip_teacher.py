"""CLIP teachers from open_clip: a named pretrained tag, a local weights file, or a small built-in config.

Spec strings: `kd-vit-s` (built-in, random init, trained offline), `ViT-B-32:openai` (open_clip pretrained tag,
needs a network or open_clip's cache), `RN50:/path/to/weights.pt` (local file), or
`runs/X/teachers/NAME.safetensors` (a teacher kdmobile already trained: reused as it is, e.g. across the students
of an ablation). Teacher files are safetensors with the open_clip name in the header: never unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdmobile.console import quiet_open_clip_random_init
from kdmobile.errors import UserError
from kdmobile.models.conv_stem import use_conv_stem
from kdmobile.config import DEFAULT_TEMPLATES
from kdmobile.models.weights import load_state, read_weights, save_weights

CONFIG_DIR = Path(__file__).parent / "clip_configs"
BUILTIN_TEACHERS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
_registered = False


def _open_clip() -> Any:
    """Import open_clip and register kdmobile's built-in configs with it once."""
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    return open_clip


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher spec: open_clip model name and an optional pretrained tag or file."""

    model_name: str
    pretrained: str | None
    checkpoint: str | None = None
    image_size: int | None = None  # built-in configs only: the input size the tower is scaled to

    @property
    def label(self) -> str:
        """A short, file-name-safe name for logs and run directories."""
        return self.model_name.replace("/", "_")


def builtin_config(name: str, image_size: int | None) -> dict[str, Any]:
    """A built-in teacher's config (open_clip's, plus `kdmobile_conv_stem`) scaled to the data: the tower's input size, and for ViTs a patch size
    giving an 8x8 token grid (a fixed patch of 8 px left 16 tokens at 32 px, too coarse to learn CIFAR from scratch);
    ResNet towers take the data's size, at least 32 px (at 64 px one CIFAR step cost 2.5x the 32 px one)."""
    cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    vision = cfg["vision_cfg"]
    if image_size is not None:
        if vision.get("patch_size"):
            vision["patch_size"] = max(2, image_size // 8)
            vision["image_size"] = vision["patch_size"] * 8
        else:
            vision["image_size"] = max(32, image_size)  # below 32 px its last stage has no pixels left
    return cfg


def with_image_size(spec: TeacherSpec, image_size: int) -> TeacherSpec:
    """The spec scaled to the data's image size when it is a built-in config trained here (others keep theirs)."""
    if spec.model_name in BUILTIN_TEACHERS and spec.pretrained is None and spec.checkpoint is None:
        return replace(spec, image_size=int(image_size))
    return spec


def parse_teacher(spec: str) -> TeacherSpec:
    """Parse `NAME[:TAG|:PATH]`, checking the model name and that a local weights file exists."""
    oc = _open_clip()
    as_file = Path(spec).expanduser()
    if as_file.suffix in (".safetensors", ".pt") and as_file.is_file():  # a kdmobile teacher file (.pt: refused)
        recipe = _read_teacher_file(as_file)[0]
        return TeacherSpec(recipe["model_name"], None, str(as_file), _image_size(recipe))
    name, _, pretrained = spec.partition(":")
    if name not in oc.list_models():
        raise UserError(f"unknown teacher model '{name}'; built-in offline teachers: {', '.join(BUILTIN_TEACHERS)}")
    if pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        if not Path(pretrained).expanduser().is_file():
            raise UserError(f"teacher weights {pretrained}: no such file")
        pretrained = str(Path(pretrained).expanduser())
    return TeacherSpec(name, pretrained or None)


class ClipTeacher(nn.Module):
    """An open_clip model with its tokenizer; `forward(images, tokens)` is the contrastive training pass."""

    def __init__(self, spec: TeacherSpec, load_pretrained: bool = True) -> None:
        super().__init__()
        oc = _open_clip()
        self.spec = spec
        pretrained = spec.pretrained if load_pretrained else None
        # open_clip warns "no pretrained weights loaded" whenever pretrained is None: false when weights are loaded
        # right after (a teacher file); true (kept) otherwise. Built-in configs are built here, without the warning.
        weights_follow = bool(spec.checkpoint) or not load_pretrained
        quiet = quiet_open_clip_random_init() if pretrained is None and weights_follow else contextlib.nullcontext()
        try:
            if spec.model_name in BUILTIN_TEACHERS:  # offline config: built here, weights from a file if given
                cfg = builtin_config(spec.model_name, spec.image_size)
                conv_stem = cfg.pop("kdmobile_conv_stem", False)
                self.clip = oc.CLIP(**cfg)
                if conv_stem:
                    use_conv_stem(self.clip.visual)
                if pretrained:
                    oc.load_checkpoint(self.clip, pretrained, weights_only=True)
                # A random, frozen token table serves as well as a learned one for a few prompts, and training the
                # 49,408 x width table made the AdamW step cost more than the rest of the teacher's step.
                self.clip.token_embedding.requires_grad_(False)
            else:
                with quiet:
                    self.clip = oc.create_model(spec.model_name, pretrained=pretrained)
        except Exception as exc:  # download failures, bad files
            raise UserError(f"teacher {spec.model_name}:{pretrained}: could not load weights ({exc})") from None
        if spec.checkpoint and load_pretrained:
            load_state(self.clip, _read_teacher_file(Path(spec.checkpoint))[1], spec.checkpoint)
        self.tokenizer = oc.get_tokenizer(spec.model_name)
        size = getattr(self.clip.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.embed_dim = int(self.clip.text_projection.shape[1]) if hasattr(self.clip, "text_projection") else None

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image and text embeddings for a contrastive step."""
        return self.encode_image(images), F.normalize(self.clip.encode_text(tokens), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image batch at any size -> L2-normalised embeddings (resized to the tower's size)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids for a list of strings, on the model's device."""
        return self.tokenizer(list(texts)).to(self.clip.logit_scale.device)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), in batches."""
        out = [F.normalize(self.clip.encode_text(self.tokenize(texts[i : i + batch_size])), dim=-1)
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).float()

    @torch.no_grad()
    def class_vectors(self, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """CLIP zero-shot class vectors: mean of the normalised template embeddings per class, renormalised."""
        prompts = [t.format(c) for c in classnames for t in templates]
        emb = self.encode_texts(prompts).view(len(classnames), len(templates), -1).mean(1)
        return F.normalize(emb, dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature, clamped at 100."""
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def image_tower(self) -> nn.Module:
        """The part that runs per image at inference (for parameter and FLOP counts)."""
        return self.clip.visual


def save_teacher(path: str | os.PathLike, teacher: ClipTeacher) -> None:
    """Atomically save a (fine-tuned) teacher as safetensors with its open_clip name and the input size its
    built-in config was scaled to, so it reloads offline as the same architecture."""
    save_weights(path, teacher.clip.state_dict(), {"format": "kdmobile-teacher", "kind": "open_clip",
                                                   "model_name": teacher.spec.model_name,
                                                   "pretrained": teacher.spec.pretrained,
                                                   "image_size": teacher.spec.image_size})


def _read_teacher_file(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(recipe, tensors) of a teacher file, refusing pickle files and other kdmobile files in one line."""
    recipe, tensors = read_weights(path)
    if recipe.get("kind") != "open_clip" or not isinstance(recipe.get("model_name"), str):
        raise UserError(f"{path}: not a kdmobile teacher file")
    if recipe["model_name"] not in _open_clip().list_models():
        raise UserError(f"{path}: unknown open_clip model {recipe['model_name']!r}")
    return recipe, tensors


def _image_size(recipe: dict[str, Any]) -> int | None:
    """The recorded input size of a built-in teacher (an int), or None."""
    size = recipe.get("image_size")
    return int(size) if isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096 else None


def load_teacher(path: str | os.PathLike) -> ClipTeacher:
    """Rebuild a teacher saved by `save_teacher` (no download: weights come from the file)."""
    recipe, tensors = _read_teacher_file(Path(path))
    pretrained = recipe.get("pretrained") if isinstance(recipe.get("pretrained"), str) else None
    spec = TeacherSpec(recipe["model_name"], pretrained, str(path), _image_size(recipe))
    teacher = ClipTeacher(spec, load_pretrained=False)
    load_state(teacher.clip, tensors, path)
    return teacher.eval()
