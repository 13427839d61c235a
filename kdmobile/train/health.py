"""Teacher health check, shared by AMMKD and SDKD: a teacher that is not clearly better than the student trained
alone has nothing to teach, so it is reported loudly and taken out of the distillation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping


@dataclass
class TeacherHealth:
    """One teacher's verdict: its held-out metric, the no-KD student's, and whether it may teach."""

    teacher: str
    metric: str
    teacher_value: float
    student_value: float
    margin: float
    healthy: bool

    def message(self) -> str:
        """One line for the console and the log."""
        verdict = "ok" if self.healthy else "WEAK: not clearly better than the student alone"
        return (f"teacher {self.teacher}: {self.metric} {self.teacher_value:.4g} vs no-KD student "
                f"{self.student_value:.4g} (needs {self.margin:.0%} fewer errors) -> {verdict}")


def check_teachers(teacher_values: Mapping[str, float], student_value: float, metric: str,
                   higher_is_better: bool, margin: float) -> list[TeacherHealth]:
    """Compare every teacher with the no-KD student: healthy when it makes at least `margin` (a fraction) fewer
    errors, teacher error <= (1 - margin) * student error. Errors are the metric itself (MSE) or 100 - metric for
    percentages (accuracy, recall): a fixed point margin would be too strict near 100 % and too loose near 50 %."""
    def error(v: float) -> float:
        return 100.0 - v if higher_is_better else v

    out = []
    for name, value in teacher_values.items():
        healthy = error(value) <= (1.0 - margin) * error(student_value)
        out.append(TeacherHealth(name, metric, float(value), float(student_value), float(margin), bool(healthy)))
    return out


def announce(checks: list[TeacherHealth], log: Any, verbose: bool, main_process: bool = True) -> None:
    """Log every verdict; print weak teachers always (loudly) and healthy ones when `verbose`."""
    for c in checks:
        if log is not None:
            log.write(stage="health", event="teacher", **asdict(c))
        if main_process and (not c.healthy or verbose):
            print(("kdmobile: warning: " if not c.healthy else "") + c.message(), flush=True)


def health_record(checks: list[TeacherHealth], dropped: list[str]) -> dict[str, Any]:
    """The `teacher_health` entry of metrics.json."""
    return {"teachers": [asdict(c) for c in checks], "weak": [c.teacher for c in checks if not c.healthy],
            "excluded_from_kd": dropped}
