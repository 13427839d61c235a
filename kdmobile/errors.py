"""User-facing errors: one line, exit code 2, no traceback (the CLI catches them)."""

from __future__ import annotations


class KDError(Exception):
    """An error caused by the user's input (a path, a file, a flag); printed as one line by the CLI."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ToolError(KDError):
    """A failure of the environment (disk full, read-only folder, a converter crash): one line, exit code 1."""

    exit_code = 1
