"""Where a student's weights start: random, timm's pretrained backbone, or a local file (no pickle).

`--student-init FILE` takes a kdmobile student file (`RUN/student.safetensors`: every weight, fusion heads included,
when the architecture matches) or backbone weights: a timm `.safetensors` (`model.safetensors` of a Hugging Face timm
repo) or a timm checkpoint (`.pth`/`.pt`/`.bin`, read with `torch.load(weights_only=True)`, so it cannot run code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdmobile.errors import UserError
from kdmobile.models.weights import load_state

RANDOM, PRETRAINED = "random", "pretrained"
MIN_MATCHED = 0.5  # backbone weights must fit at least half of the backbone's tensors, or the file is another model
_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


@dataclass
class InitWeights:
    """Starting weights read (or downloaded) before any training, so a bad file or no network fails in one line at
    the start of a run, not after hours of teacher training."""

    source: str
    tensors: dict[str, torch.Tensor]
    recipe: dict[str, Any] | None = None


def resolve_init(init: str, backbone: str) -> InitWeights | None:
    """None for `random`; timm's pretrained weights of `backbone`, or a file's tensors; one-line errors otherwise."""
    if init == RANDOM:
        return None
    if init == PRETRAINED:
        return InitWeights(f"timm's pretrained {backbone}", _timm_pretrained(backbone))
    p = Path(init).expanduser()
    if not p.is_file():
        what = "a directory" if p.is_dir() else "no such file"
        raise UserError(f"--student-init {init}: expected random, pretrained or a weights file; {what}")
    if p.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise UserError(f"--student-init {init}: expected a .safetensors, .pth, .pt or .bin file")
    tensors, recipe = _read(p)
    return InitWeights(str(p), tensors, recipe)


def apply_init(student: nn.Module, weights: InitWeights | None) -> str:
    """Load the starting weights into `student` in place; returns a one-line description for the plan and log."""
    if weights is None:
        return "random initialisation"
    recipe = weights.recipe
    own_model = getattr(student, "kd_spec", {}).get("model")
    if recipe is not None and recipe.get("format") == "kdmobile-model" and recipe.get("model") == own_model:
        try:
            load_state(student, weights.tensors, weights.source)
            return f"every weight from {weights.source} (a kdmobile student)"
        except UserError:  # another backbone width, fusion or teacher set: its backbone may still fit
            pass
    return _load_backbone(student.backbone, weights.tensors, weights.source)  # type: ignore[arg-type]


def _timm_pretrained(backbone: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights for `backbone`: from the local Hugging Face cache when they are there (no network
    touched), else downloaded once (offline, the hub client retries for about a minute, then fails)."""
    import timm
    from huggingface_hub import constants

    was_offline = constants.HF_HUB_OFFLINE
    try:
        constants.HF_HUB_OFFLINE = True
        return timm.create_model(backbone, pretrained=True, features_only=True).state_dict()
    except Exception:  # noqa: BLE001 - not cached: try the network below (unless the user said offline)
        pass
    finally:
        constants.HF_HUB_OFFLINE = was_offline
    error = "HF_HUB_OFFLINE is set"
    if not was_offline:
        print(f"kdmobile: downloading timm's pretrained weights for {backbone} ...", flush=True)
        try:
            return timm.create_model(backbone, pretrained=True, features_only=True).state_dict()
        except Exception as e:  # noqa: BLE001 - offline, no such tag, hub errors
            error = " ".join(str(e).split())[:160]
    raise UserError(f"--student-init pretrained: cannot get timm's weights for {backbone}: not in the local cache "
                    f"and not downloadable ({error}); offline, pass a weights file instead")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(tensors, kdmobile recipe or None) of a safetensors file or a weights-only torch checkpoint."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        from kdmobile.models.weights import META_KEY, read_weights

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if META_KEY in meta:
                    recipe, tensors = read_weights(path)
                    return tensors, recipe
                return {k: f.get_tensor(k) for k in f.keys()}, None
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise UserError(f"--student-init {path}: not a readable safetensors file "
                            f"({' '.join(str(e).split())[:160]})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused, truncated, not a checkpoint
        raise UserError(f"--student-init {path}: not a weights-only PyTorch checkpoint "
                        f"({' '.join(str(e).split())[:160]})") from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"--student-init {path}: holds no state dict of tensors")
    return obj, None


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _load_backbone(backbone: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> str:
    """Copy every tensor whose (prefix-stripped) name and shape fit the backbone; refuse a file that mostly does not."""
    own = backbone.state_dict()
    fitting = {}
    for k, v in tensors.items():
        k = _strip(k)
        if k in own and own[k].shape == v.shape:
            fitting[k] = v
    if len(fitting) < MIN_MATCHED * len(own):
        raise UserError(f"--student-init {source}: only {len(fitting)} of the backbone's {len(own)} tensors match "
                        "by name and shape (weights of another architecture?)")
    backbone.load_state_dict(fitting, strict=False)
    return f"{len(fitting)}/{len(own)} backbone tensors from {source}"
