"""Atomic file and directory writes, checksums and JSON helpers shared by every stage (no torch)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from kdmobile.errors import ToolError, UserError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block finishes.

    Works for files and directories: an interrupted write leaves nothing under the final name. The temporary
    name carries the pid, so `clean_stale` can remove what a killed process left.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON record per line (a log: partial last lines are tolerated by readers)."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


MIN_FREE_BYTES = 64 << 20  # refuse to start long work on a disk with less free space than this
_STALE = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$|^\..+\.work\.(\d+)\.[^/]+$")


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary entries (`.NAME.PID.XXXX.tmp`, `.NAME.work.PID.XXXX`) of processes that no longer run."""
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    for entry in d.iterdir():
        m = _STALE.match(entry.name)
        if not m:
            continue
        pid = int(m.group(1) or m.group(2))
        if pid != os.getpid() and not _alive(pid):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def check_writable(directory: str | os.PathLike, what: str, min_free: int = MIN_FREE_BYTES) -> Path:
    """Prove `directory` (or, when it does not exist yet, its nearest existing parent, where it would be made) takes
    a file and has `min_free` bytes free; ToolError otherwise. Creates nothing, so a dry run leaves no trace.

    Run before long work, so a read-only or full disk fails in the first second, not after the training or
    conversion.
    """
    d = Path(directory).expanduser()
    if d.exists() and not d.is_dir():
        raise UserError(f"{what} {d}: exists and is not a directory")
    probe_dir = next((p for p in [d, *d.parents] if p.exists()), Path("."))
    if not probe_dir.is_dir():
        raise UserError(f"{what} {d}: cannot create it ({probe_dir} is a file)")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".kdmobile-probe.{os.getpid()}.", suffix=".tmp", dir=probe_dir)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        free = shutil.disk_usage(probe_dir).free
        if free < min_free:
            raise OSError(errno.ENOSPC, f"only {free >> 20} MiB free, {min_free >> 20} MiB needed")
    except OSError as e:
        raise ToolError(f"{what} {d}: cannot write there ({e.strerror or e})") from None
    return d


def cache_dir() -> Path:
    """Where kdmobile caches what it can rebuild (generated datasets, bench reference towers): $KDMOBILE_CACHE or
    ~/.cache/kdmobile."""
    return Path(os.environ.get("KDMOBILE_CACHE", Path.home() / ".cache" / "kdmobile")).expanduser()


def proc_field_bytes(path: str, key: str) -> int | None:
    """A `Key:  N kB` field of a Linux /proc file (/proc/meminfo, /proc/self/status) in bytes; None where absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), or None where it cannot be read."""
    return proc_field_bytes("/proc/meminfo", "MemAvailable")
