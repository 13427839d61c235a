"""Model files without pickle: tensors in safetensors, the rebuild recipe as JSON in the file's own header.

A pickle file (what `torch.save` writes) runs code when it is loaded, so kdmobile never unpickles a model a user
may have received from someone else: student and teacher files are safetensors, and an old `.pt` pickle file is
refused with a one-line reason instead of being opened.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from kdmobile.errors import UserError
from kdmobile.fileio import atomic_path
from kdmobile.untrusted import MAX_JSON_DEPTH, parse_json

META_KEY = "kdmobile"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a raw pickle protocol header, or torch.save's zip container


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], recipe: dict[str, Any]) -> None:
    """Atomically write tensors as safetensors with `recipe` (JSON-serialisable) in the header's metadata."""
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors sharing storage (tied weights), and the copy makes each contiguous
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
    meta = {META_KEY: json.dumps(recipe, allow_nan=False)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _refuse_pickle(p: Path) -> None:
    """One-line refusal of a pickle-based file (an old kdmobile `.pt`, or any `torch.save` output).

    A safetensors file starts with its header length (8 bytes, little-endian) and then `{`; anything else that
    starts like a pickle stream or a zip archive is a pickle checkpoint.
    """
    with open(p, "rb") as f:
        head = f.read(9)
    size = p.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return
    if head[:1] == _PICKLE_MAGIC[0] or (head[:4] == _PICKLE_MAGIC[1] and zipfile.is_zipfile(p)):
        raise UserError(f"{p}: a pickle-based PyTorch file; kdmobile loads only safetensors model files (unpickling "
                      "can run code): retrain with this kdmobile version or convert it where you trust it")


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(recipe, tensors) of a kdmobile safetensors file; one-line KDError for a missing, pickle or corrupt file."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    _refuse_pickle(p)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a truncated or foreign file
        raise UserError(f"{p}: not a readable safetensors file ({' '.join(str(e).split())[:160]})") from None
    if META_KEY not in meta:
        raise UserError(f"{p}: not a kdmobile model file (no '{META_KEY}' recipe in its safetensors header)")
    recipe = parse_json(meta[META_KEY].encode(), f"{p} (recipe)", MAX_JSON_DEPTH)
    if not isinstance(recipe, dict):
        raise UserError(f"{p}: the recipe in its header should be a JSON object")
    return recipe, tensors


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """load_state_dict with a one-line KDError when the file's tensors do not fit the rebuilt model."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise UserError(f"{path}: weights do not fit the model its recipe builds ({first[:200]})") from None
