"""What an SDKD student starts from and learns against beyond the labelled windows: a phase-1 student file
(two-phase distillation) and the teachers' pseudo-labels for windows whose futures are unknown (label-scarce)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from kdmobile.errors import UserError
from kdmobile.models.weights import load_state, read_weights


def labelled_windows(train_traj: np.ndarray, n_windows: int, fraction: float) -> int:
    """How many leading training windows keep their futures: those of the first ceil(fraction x trajectories)
    training trajectories (at least one). Windows are stored trajectory by trajectory, so this cuts whole
    trajectories, as a user with fewer solver runs would have."""
    n_traj = len(train_traj)
    if n_traj == 0:
        return 0
    per = n_windows // n_traj
    return per * max(1, math.ceil(fraction * n_traj - 1e-9))


def init_tensors(path: str, student: nn.Module, grid: dict[str, int]) -> dict[str, torch.Tensor]:
    """The tensors of a kdmobile student file to start `student` from, checked now (before any training): same
    architecture (every tensor fits) and the same frames and grid as this run's data."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"student_init {path}: {'a directory, not a student file' if p.is_dir() else 'no such file'}")
    recipe, tensors = read_weights(p)
    extra = recipe.get("extra", {}) if isinstance(recipe.get("extra"), dict) else {}
    for key, want in grid.items():
        if key in extra and extra[key] != want:
            raise UserError(f"student_init {path}: made for {key} = {extra[key]}, this run's data has {want}")
    load_state(student, tensors, p)  # one-line error when the architecture or width differs
    return tensors


def pseudo_labels(predict: Callable[[nn.Module, np.ndarray], np.ndarray], teachers: list[nn.Module],
                  x: np.ndarray) -> np.ndarray:
    """The teachers' mean forecast (normalised units, float32) for input windows `x` without futures, summed in
    place (one array the size of the targets, whatever the number of teachers)."""
    total = predict(teachers[0], x).astype(np.float32, copy=False)
    for t in teachers[1:]:
        total += predict(t, x)
    total /= len(teachers)
    return total
