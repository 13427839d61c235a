"""Console hygiene: keep known-false or purely informational library output out of the user's terminal.

Both helpers are context managers that restore what they changed, so real warnings elsewhere in the process still
reach the user: nothing here installs a process-wide filter or changes the logging configuration for good.
No heavy imports (the runtime, which must import without torch, uses `quiet_native_stderr`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator, Pattern

# LiteRT's native code prints this on stderr when it applies its default CPU delegate: information, not a problem.
XNNPACK_INFO = re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.\s*$")


class _DropMessages(logging.Filter):
    """A logging filter that drops records whose message matches one pattern."""

    def __init__(self, pattern: Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern.search(record.getMessage()):
            self.dropped += 1
            return False
        return True


@contextlib.contextmanager
def drop_log_message(pattern: str, logger: str | None = None) -> Iterator[_DropMessages]:
    """Drop log records matching `pattern` on one logger (default: root) inside the block; others pass.

    A module-level `logging.warning(...)` calls `logging.basicConfig()` when the root logger has no handler, which
    would change the process's logging for good; handlers added to the logger inside the block are removed again.
    """
    target = logging.getLogger(logger)
    before = list(target.handlers)
    filt = _DropMessages(re.compile(pattern))
    target.addFilter(filt)
    try:
        yield filt
    finally:
        target.removeFilter(filt)
        for handler in list(target.handlers):
            if handler not in before:
                target.removeHandler(handler)


def quiet_open_clip_random_init() -> contextlib.AbstractContextManager:
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" for a model whose weights follow
    (a kdmobile teacher file) or that is meant to start random (a built-in config trained from scratch)."""
    return drop_log_message(r"^No pretrained weights loaded for model ")


@contextlib.contextmanager
def quiet_native_stderr(drop: Pattern[str] = XNNPACK_INFO) -> Iterator[None]:
    """Redirect file descriptor 2 for the block (native code writes there directly), then re-emit every captured
    line except those matching `drop`, so real native errors still reach the user. fd 2 is always restored."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
    except (AttributeError, ValueError, OSError):
        fd = 2
    try:
        saved = os.dup(fd)
    except OSError:  # no usable fd 2 (embedded interpreters): nothing to redirect
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), fd)
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode("utf-8", "replace").splitlines()
                    if line.strip() and not drop.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def fmt_duration(seconds: float) -> str:
    """Seconds as a short human duration: 42s, 3m05s, 1h12m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
