"""One registry that builds every kdmobile model from a name and keyword arguments, as timm and open_clip do.

A saved model is `{"model": name, "kwargs": {...}, "state_dict": ...}`, so any stage can rebuild it from the file
alone, without the config that trained it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdmobile.errors import KDError
from kdmobile.fileio import atomic_path

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model class or factory buildable by `create_model(name, **kwargs)`."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def _ensure_registered() -> None:
    # Importing the model modules runs their @register_model decorators.
    from kdmobile.models import forecasters, student  # noqa: F401


def list_models() -> list[str]:
    """Names that `create_model` accepts."""
    _ensure_registered()
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; the kwargs are stored with it by `save_model`."""
    _ensure_registered()
    if name not in _REGISTRY:
        raise KDError(f"unknown model '{name}'; known: {', '.join(sorted(_REGISTRY))}")
    model = _REGISTRY[name](**kwargs)
    model.kd_spec = {"model": name, "kwargs": dict(kwargs)}  # type: ignore[attr-defined]
    return model


def save_model(path: str | os.PathLike, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Atomically save a registry-built model with what is needed to rebuild it."""
    spec = getattr(model, "kd_spec", None)
    if spec is None:
        raise ValueError("save_model needs a model built by create_model")
    payload = {**spec, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if extra:
        payload["extra"] = extra
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load a kdmobile file, turning a missing or corrupt file into a one-line KDError."""
    p = Path(path)
    if not p.is_file():
        raise KDError(f"{p}: no such file")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise KDError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, extra dict)."""
    payload = load_checkpoint_file(path)
    if not isinstance(payload, dict) or "model" not in payload or "state_dict" not in payload:
        raise KDError(f"{path}: not a kdmobile model file (missing 'model'/'state_dict')")
    model = create_model(payload["model"], **payload.get("kwargs", {}))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload.get("extra", {})
