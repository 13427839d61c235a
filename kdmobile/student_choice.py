"""Choosing a student from measured (latency, accuracy) points: the Pareto front and the rule that picked the shipped
default (the most accurate front model at >= N x the reference's speed). Product logic, used by the student-zoo
benchmark and meant for a `--student auto` (no torch)."""

from __future__ import annotations

DEFAULT_MIN_SPEEDUP = 100.0  # vs the ViT-B/32 image tower at 224 px, same runtime: the product's headline goal


def pareto(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated in (latency lower, accuracy higher), fastest first."""
    front = [n for n, (ms, acc) in points.items()
             if not any(o != n and oms <= ms and oacc >= acc and (oms, oacc) != (ms, acc)
                        for o, (oms, oacc) in points.items())]
    return sorted(front, key=lambda n: points[n][0])


def choose_student(points: dict[str, tuple[float, float]], ref_ms: float | None,
                   min_speedup: float = DEFAULT_MIN_SPEEDUP) -> tuple[str, str]:
    """The most accurate front model >= `min_speedup` x faster than the reference (`ref_ms`), else the fastest
    front model; with the reason in words."""
    front = pareto(points)
    fast = [n for n in front if ref_ms and ref_ms / points[n][0] >= min_speedup]
    if fast:
        best = max(fast, key=lambda n: points[n][1])
        return best, f"most accurate Pareto model at >= {min_speedup:.0f}x the reference's speed"
    return front[0], f"no Pareto model reaches {min_speedup:.0f}x the reference's speed: the fastest one"
