"""A table of named rows that plugins may extend (the export targets, the distillation methods): one way to add a
row, list the names and read the table (no torch)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Generic, Iterable, Mapping, TypeVar

R = TypeVar("R")


class Rows(Generic[R]):
    """Rows of one type keyed by their `name`; `view` is a live, read-only mapping of them."""

    def __init__(self, row_type: type, rows: Iterable[R]) -> None:
        self.row_type = row_type
        self.table: dict[str, R] = {}
        for row in rows:
            self.register(row)
        self.view: Mapping[str, R] = MappingProxyType(self.table)

    def register(self, row: R) -> None:
        """Add (or replace) a row; a row of another type or without a plain name is refused."""
        name: Any = getattr(row, "name", None)
        if not isinstance(row, self.row_type) or not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"not a {self.row_type.__name__} row with a plain name: {row!r}")
        self.table[name] = row

    def names(self) -> tuple[str, ...]:
        """The rows' names, built-in ones first."""
        return tuple(self.table)
