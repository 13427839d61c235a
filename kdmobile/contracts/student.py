"""The student card: what a student file's header says about its inputs, so export and bench read preprocessing
(image size, mean/std, labels, frame counts) from one place instead of restating the training defaults."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from kdmobile.data.transforms import CLIP_MEAN, CLIP_STD
from kdmobile.errors import UserError


class StudentCard(BaseModel):
    """The `extra` header of student.safetensors; defaults are what runs written before the card existed used."""

    model_config = ConfigDict(extra="allow", frozen=True)

    task: Literal["classes", "captions", "forecast"]
    teachers: list[str] = []
    # retrieval
    image_size: Optional[int] = None
    mean: Any = None
    std: Any = None
    templates: list[str] = []
    labels: list[str] = []
    # forecast
    frames_in: Optional[int] = None
    frames_out: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None

    @property
    def image_mean(self) -> list[float]:
        """Per-channel mean of a retrieval student's input normalisation."""
        return [float(v) for v in (self.mean if self.mean is not None else CLIP_MEAN)]

    @property
    def image_std(self) -> list[float]:
        return [float(v) for v in (self.std if self.std is not None else CLIP_STD)]

    @property
    def frame_mean(self) -> float:
        """Scalar normalisation of a forecast student's frames."""
        return float(self.mean) if self.mean is not None else 0.0

    @property
    def frame_std(self) -> float:
        return float(self.std) if self.std is not None else 1.0


def student_card(extra: dict[str, Any], method: str, where: str) -> StudentCard:
    """The card of a student file (its header's `extra`), with a one-line error when it does not fit the method."""
    from kdmobile.methods import get_method

    m = get_method(method, where)
    data = {"task": m.data_tasks[0], **extra}
    try:
        card = StudentCard(**data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        if field == "task":
            raise UserError(f"{where}: unknown task {data.get('task')!r}") from None
        raise UserError(f"{where}: student card field {field}: {err['msg']}") from None
    if card.task not in m.data_tasks:
        raise UserError(f"{where}: an {method} student should have task {' or '.join(map(repr, m.data_tasks))}, "
                        f"not {card.task!r}")
    return card
