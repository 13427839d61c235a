"""Helpers the converters share (TFLite, CoreML, ExecuTorch, metadata): quiet native output, eval mode with the
attention fast path off, the first line of a converter's exception, calibration batches shaped like the example.
Each context manager restores what it changes."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import nn

from kdmobile.errors import UserError

log = logging.getLogger(__name__)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


@contextlib.contextmanager
def quiet_native_output() -> Iterator[list[str]]:
    """Silence stdout/stderr at the file-descriptor level for the block (C++ absl logs, progress bars, rich).

    The converters print from native code, tqdm and rich; only an fd-level redirect catches all of it. Yields a
    list that holds the captured text once the block exits (it is logged at DEBUG level too).
    """
    captured: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):  # no real fds (e.g. a notebook): just run the block
        yield captured
        return
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in fds:
                os.dup2(sink.fileno(), fd)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, old in zip(fds, saved):
                os.dup2(old, fd)
                os.close(old)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            captured.append(text)
            if text.strip():
                log.debug("converter output:\n%s", text)


@contextlib.contextmanager
def mha_fastpath_off() -> Iterator[None]:
    """Switch PyTorch's process-wide MHA fast path off for the block (see DESIGN.md) and restore it after."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode (and the MHA fast path off) for the block; restore both after."""
    was_training = model.training
    model.eval()
    try:
        with mha_fastpath_off():
            yield model
    finally:
        model.train(was_training)


def calibration_batches(calibration: np.ndarray, example_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Split calibration data into inputs shaped exactly like the example.

    Accepted: (N, *example.shape[1:]) samples, grouped by the example's batch size (a trailing partial batch is
    dropped); or (N, *example.shape) whole inputs. All are used: --calibration-samples decides how many.
    """
    cal = np.asarray(calibration, dtype=np.float32)
    shape = tuple(example_shape)
    if cal.ndim == len(shape) + 1 and cal.shape[1:] == shape:
        batches = list(cal)
    elif cal.ndim == len(shape) and cal.shape[1:] == shape[1:]:
        b = shape[0]
        batches = [cal[i : i + b] for i in range(0, len(cal) - b + 1, b)]
    else:
        raise UserError(f"calibration data shaped {cal.shape} does not match the model input {shape}")
    if not batches:
        raise UserError(f"calibration data has {len(cal)} samples; need at least {shape[0]}")
    return [np.ascontiguousarray(x) for x in batches]
