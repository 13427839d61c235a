"""Teachers and students, built by name through one registry (see registry.py)."""

from kdmobile.models.registry import create_model, load_model, save_model

__all__ = ["create_model", "load_model", "save_model"]
