"""The tool's errors: each prints as one line (`format_error`) and maps to an exit code, so no user sees a traceback.

- `UserError` (exit 2): the user's input is wrong: a path, a file, a flag.
- `VerificationError` (exit 2): a file from elsewhere failed its checks (a bundle's seal or checksums, a manifest).
- `ToolError` (exit 1): the environment or a tool failed (disk full, read-only folder, a converter crash).
"""

from __future__ import annotations


class KDError(Exception):
    """Base of kdmobile's one-line errors; catch this to handle all three kinds."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(_unwrap_worker(str(message)).split()))


def _unwrap_worker(message: str) -> str:
    """The original message of an error that a DataLoader worker raised: torch re-raises it in the main process as
    `ExcType("Caught ExcType in DataLoader worker process N. Original Traceback ...: ExcType: message")`."""
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message


class UserError(KDError):
    """An error caused by the user's input (a path, a file, a flag): exit code 2."""


class VerificationError(UserError):
    """A file from elsewhere failed verification (seal, checksum, manifest fields): exit code 2."""


class ToolError(KDError):
    """A failure of the environment or of a tool kdmobile drives (disk, converter crash): exit code 1."""

    exit_code = 1


def format_error(err: BaseException) -> str:
    """The one line the CLI prints for an error, with its cause named for environment failures."""
    if isinstance(err, KDError):
        return f"kdmobile: error: {err}"
    if isinstance(err, OSError):
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        return f"kdmobile: error: {where}{err.strerror or err} (exit 1: environment failure)"
    return f"kdmobile: error: {type(err).__name__}: {' '.join(str(err).split())}"


def exit_code(err: BaseException) -> int:
    """The exit code of an error: 2 for the user's input, 1 for the environment."""
    return err.exit_code if isinstance(err, KDError) else 1
