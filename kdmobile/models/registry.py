"""One registry that builds every kdmobile model from a name and keyword arguments, as timm and open_clip do.

A saved model is a safetensors file whose header holds `{"model": name, "kwargs": {...}, "extra": {...}}`, so
any stage can rebuild it from the file alone, without the config that trained it (and without unpickling).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from torch import nn

from kdmobile.errors import KDError, UserError
from kdmobile.models.weights import load_state, read_weights, save_weights

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


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; the kwargs are stored with it by `save_model`."""
    _ensure_registered()
    if name not in _REGISTRY:
        raise UserError(f"unknown model '{name}'; known: {', '.join(sorted(_REGISTRY))}")
    model = _REGISTRY[name](**kwargs)
    model.kd_spec = {"model": name, "kwargs": dict(kwargs)}  # type: ignore[attr-defined]
    return model


def save_model(path: str | os.PathLike, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Atomically save a registry-built model as safetensors, its recipe (name, kwargs, extra) in the header."""
    spec = getattr(model, "kd_spec", None)
    if spec is None:
        raise ValueError("save_model needs a model built by create_model")
    save_weights(path, model.state_dict(), {"format": "kdmobile-model", **spec, "extra": dict(extra or {})})


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_model`; returns (model in eval mode, extra dict). Never unpickles."""
    recipe, tensors = read_weights(path)
    name, kwargs, extra = recipe.get("model"), recipe.get("kwargs", {}), recipe.get("extra", {})
    if recipe.get("format") != "kdmobile-model" or not isinstance(name, str) or not isinstance(kwargs, dict) \
            or not isinstance(extra, dict):
        raise UserError(f"{path}: not a kdmobile model file (its recipe needs format, model, kwargs, extra)")
    try:
        model = create_model(name, **kwargs)
    except KDError as e:
        raise UserError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a model's constructor may raise anything on kwargs it cannot take
        raise UserError(f"{path}: its recipe does not build {name} ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:160]})") from None
    load_state(model, tensors, path)
    return model.eval(), extra


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold train-time branches into single convolutions (MobileOne, RepViT, FastViT ...: timm's reparameterize
    hooks) in place, so exported graphs run the deployed architecture; a no-op for models without such blocks.
    The outputs stay the same to float rounding (cosine 1.0 measured on MobileOne-S0 and RepViT-M0.9)."""
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model.eval(), inplace=True)  # in place: a deep copy fails on cached attention biases
