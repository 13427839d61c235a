"""Swap one target's converter for a test (restored by monkeypatch): the target row carries its code, so a test
replaces the row, as a plugin would register its own."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from kdmobile import targets


def set_converter(monkeypatch: Any, target: str, fn: Callable[[Any], Any]) -> None:
    monkeypatch.setitem(targets._REGISTRY, target, dataclasses.replace(targets.TARGETS[target], converter=fn))


def real_converter(target: str) -> Callable[[Any], Any]:
    return targets.resolve(targets.TARGETS[target].converter)
