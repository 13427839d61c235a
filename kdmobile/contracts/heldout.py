"""heldout.npz as a typed model: the held-out and calibration arrays a run keeps so that export and bench can
verify, quantize and score the student from the run directory alone. One writer (training) and one reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from kdmobile.errors import UserError
from kdmobile.metrics import are_indices
from kdmobile.untrusted import MAX_CLASSES

FILE = "heldout.npz"
TEXTVEC_PREFIX = "textvec_test_"  # caption vectors of each teacher, one array per teacher name
Array = Optional[Any]  # a numpy array (pydantic checks the shapes below, not the type)


class HeldOut(BaseModel):
    """Retrieval runs: test images (N,S,S,3) uint8 with labels (classes) or captions; forecast runs: normalised
    windows x (N,T,H,W) and targets y. Calibration inputs for static int8 in both."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    images_test: Array = None
    images_calib: Array = None
    labels_test: Array = None
    caption_owner_test: Array = None
    captions_test: Array = None
    textvec_test: dict[str, Any] = {}
    x_test: Array = None
    y_test: Array = None
    x_calib: Array = None

    @model_validator(mode="after")
    def _shapes(self) -> "HeldOut":
        """Arrays that belong together agree in length and rank (a corrupt or foreign file is refused)."""
        if self.images_test is not None:
            _need_rank(self.images_test, 4, "images_test")
            n = len(self.images_test)
            a = self.labels_test
            if a is not None and (a.ndim != 1 or len(a) != n or not are_indices(a, MAX_CLASSES)):
                raise ValueError(f"labels_test should be {n} integers in 0..{MAX_CLASSES - 1}")
            a = self.caption_owner_test
            if a is not None and (a.ndim != 1 or not are_indices(a, n)):
                raise ValueError(f"caption_owner_test should be 1-D integers in 0..{n - 1} (one test image each)")
        elif self.x_test is None:
            raise ValueError("neither images_test nor x_test")
        if self.x_test is not None:
            _need_rank(self.x_test, 4, "x_test")
            if self.y_test is None or self.y_test.ndim != 4 or len(self.y_test) != len(self.x_test):
                raise ValueError("y_test should be 4-D with one window per x_test window")
        return self

    @property
    def task(self) -> str:
        """classes | captions | forecast: the task these arrays test (kdmobile.tasks)."""
        if self.x_test is not None:
            return "forecast"
        return "captions" if self.caption_owner_test is not None else "classes"

    def calibration(self) -> np.ndarray | None:
        """Inputs for static quantization: training images (retrieval) or training windows (forecast)."""
        return self.x_calib if self.x_test is not None else self.images_calib

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat name -> array mapping stored in heldout.npz."""
        flat = {k: v for k, v in self.__dict__.items() if k != "textvec_test" and v is not None}
        flat.update({f"{TEXTVEC_PREFIX}{n}": v for n, v in self.textvec_test.items()})
        return flat


def _need_rank(a: Any, rank: int, name: str) -> None:
    if not isinstance(a, np.ndarray) or a.ndim != rank or len(a) == 0:
        raise ValueError(f"{name} should be a non-empty {rank}-D array")


def write_heldout(run: str | Path, held: HeldOut) -> Path:
    """Write RUN/heldout.npz atomically."""
    from kdmobile.fileio import atomic_path

    path = Path(run) / FILE
    with atomic_path(path) as tmp:
        np.savez(tmp, **held.arrays())
    return path


def read_heldout(run: str | Path) -> HeldOut:
    """RUN/heldout.npz as a HeldOut (no pickle); one-line error when missing, corrupt or inconsistent."""
    from kdmobile.untrusted import load_npz

    path = Path(run) / FILE
    if not path.is_file():
        raise UserError(f"{Path(run)}: {FILE} missing (held-out and calibration data; was the run finished?)")
    raw = load_npz(path)
    fields = {k: v for k, v in raw.items() if k in HeldOut.model_fields and k != "textvec_test"}
    text = {k[len(TEXTVEC_PREFIX):]: v for k, v in raw.items() if k.startswith(TEXTVEC_PREFIX)}
    try:
        return HeldOut(**fields, textvec_test=text)
    except ValueError as e:
        msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise UserError(f"{path}: {msg.removeprefix('Value error, ')}") from None
