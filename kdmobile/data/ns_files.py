"""Navier–Stokes dataset files: the resumable `<out>.parts/` chunk store and the final .npz / .npy / .mat writers.

A generation writes one `chunk_NNNNN.npz` per chunk of trajectories next to a `state.json` that holds the full
parameter key; a rerun with the same key skips the chunks already there, a different key is refused (or, with
`restart`, discarded). The final file is streamed from the chunks (never the whole array in memory) and renamed
into place only when complete. Files are byte-for-byte reproducible: no timestamps are stored (fixed zip dates,
no HDF5 times), so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kdmobile.errors import ToolError, UserError
from kdmobile.fileio import atomic_path, write_json

OUTPUT_SUFFIXES = (".npz", ".npy", ".mat")
STATE_FILE = "state.json"
STATE_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_MAT_HEADER_TEXT = "MATLAB 7.3 MAT-file, Platform: kdmobile, HDF5 schema 1.00 ."

__all__ = ["OUTPUT_SUFFIXES", "ChunkStore", "check_output_path", "parts_dir", "write_dataset"]


def check_output_path(out: str | os.PathLike) -> Path:
    """Refuse (before any work) an output whose extension is wrong or whose folder cannot be made/written."""
    p = Path(out).expanduser()
    if p.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"{p}: output must end in .npz, .npy or .mat, not {p.suffix or '(no extension)'!r}")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, expected a file path ending in .npz, .npy or .mat")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way is bad input (2); a read-only or full disk is the environment (1)
        err = ToolError if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT) else UserError
        raise err(f"{p}: cannot create the output folder {p.parent}: {e.strerror or e}") from None
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise ToolError(f"{p}: output folder {p.parent} is not writable")
    return p


def parts_dir(out: Path) -> Path:
    """The folder holding an unfinished generation of `out`."""
    return out.with_name(out.name + ".parts")


def _key_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first differing parameter of two keys, as 'name: OLD there, NEW now'."""
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
    return "none"


class ChunkStore:
    """The chunks of one generation in `<out>.parts/`: which are done, their statistics, and their arrays."""

    def __init__(self, out: Path, key: dict[str, Any], chunk_size: int, restart: bool = False) -> None:
        """Open (resume) or create the store for `key`; a store with another key is refused unless `restart`."""
        self.dir = parts_dir(out)
        self.key = key
        self.n = int(key["n"])
        state = None if restart else self._read_state()
        if state is not None and state["key"] != key:
            raise UserError(
                f"{self.dir}: holds an unfinished generation with other parameters "
                f"({_key_difference(state['key'], key)}); rerun with the same parameters to resume it, "
                f"or add --restart to discard it"
            )
        if state is None:
            self.remove()
            state = {"version": STATE_VERSION, "key": key, "chunk_size": int(chunk_size), "chunks": {}}
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"{self.dir}: cannot create: {e.strerror or e}") from None
            write_json(self.dir / STATE_FILE, state)
        self.chunk_size = int(state["chunk_size"])
        self.stats: dict[str, dict[str, Any]] = {
            k: v for k, v in state["chunks"].items() if self._chunk_path(int(k)).is_file()
        }

    def _read_state(self) -> dict[str, Any] | None:
        """The saved state, None when there is no store; a damaged one is a one-line error."""
        path = self.dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            ok = (state.get("version") == STATE_VERSION and isinstance(state.get("key"), dict)
                  and isinstance(state.get("chunks"), dict) and int(state["chunk_size"]) >= 1)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise UserError(f"{path}: unreadable generation state; add --restart to discard {self.dir}")
        return state

    def _chunk_path(self, i: int) -> Path:
        return self.dir / f"chunk_{i:05d}.npz"

    def ranges(self) -> list[tuple[int, int, int]]:
        """(chunk index, first trajectory, end trajectory) for every chunk."""
        return [(i, b0, min(self.n, b0 + self.chunk_size)) for i, b0 in enumerate(range(0, self.n, self.chunk_size))]

    def has(self, i: int) -> bool:
        """True when chunk i is complete on disk."""
        return str(i) in self.stats

    def trajectories_done(self) -> int:
        """How many trajectories the complete chunks hold."""
        return sum(b1 - b0 for i, b0, b1 in self.ranges() if self.has(i))

    def save(self, i: int, u: np.ndarray, a: np.ndarray, stats: dict[str, Any]) -> None:
        """Write chunk i (u: (b, T, H, W), a: (b, H, W)) atomically, then record it in the state."""
        try:
            with atomic_path(self._chunk_path(i)) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, u=u, a=a)
            self.stats[str(i)] = stats
            write_json(self.dir / STATE_FILE, {"version": STATE_VERSION, "key": self.key,
                                               "chunk_size": self.chunk_size, "chunks": self.stats})
        except OSError as e:
            raise UserError(f"{self.dir}: cannot write chunk {i}: {e.strerror or e}") from None

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(u, a) of chunk i."""
        path = self._chunk_path(i)
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["u"], z["a"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"{path}: damaged chunk ({type(e).__name__}); add --restart to regenerate") from None

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every chunk's (u, a), in trajectory order (all must be complete)."""
        for i, _, _ in self.ranges():
            yield self.load(i)

    def remove(self) -> None:
        """Delete the store's own files and, if then empty, its folder (other files are left alone)."""
        if not self.dir.is_dir():
            return
        for tmp in self.dir.glob(".*.tmp"):  # atomic_path's leftovers after a hard kill
            shutil.rmtree(tmp, ignore_errors=True)
        for p in [self.dir / STATE_FILE, *self.dir.glob("chunk_*.npz")]:
            p.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------ writers


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    return {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}


def _zip_entry(zf: zipfile.ZipFile, name: str) -> Any:
    """A writable, timestamp-free zip member (so identical data gives identical bytes)."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o600 << 16
    return zf.open(info, "w", force_zip64=True)


def _write_npz(tmp: Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]], shape: tuple[int, ...],
               dtype: np.dtype, times: np.ndarray, meta: str) -> None:
    """`u` (N, T, H, W) streamed chunk by chunk, then `a` (N, H, W), `t` (T,) and `meta` (a JSON string)."""
    initial = []
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        with _zip_entry(zf, "u.npy") as fh:
            np.lib.format.write_array_header_1_0(fh, _npy_header(shape, dtype))
            for u, a in chunks:
                fh.write(np.ascontiguousarray(u, dtype=dtype).tobytes())
                initial.append(np.asarray(a, dtype=dtype))
        for name, arr in (("a", np.concatenate(initial)), ("t", times), ("meta", np.array(meta))):
            with _zip_entry(zf, f"{name}.npy") as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


def _write_npy(tmp: Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]], shape: tuple[int, ...],
               dtype: np.dtype) -> None:
    """The bare (N, T, H, W) array, written chunk by chunk."""
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, _npy_header(shape, dtype))
        for u, _ in chunks:
            fh.write(np.ascontiguousarray(u, dtype=dtype).tobytes())


def _write_mat(tmp: Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]], shape: tuple[int, ...],
               dtype: np.dtype, times: np.ndarray, meta: str) -> None:
    """MATLAB v7.3 (HDF5) as FNO's files: u N×H×W×T, a N×H×W, t 1×T; HDF5 holds the axes reversed."""
    import h5py

    n, t, h, w = shape
    cls = "double" if dtype == np.float64 else "single"
    with h5py.File(tmp, "w", userblock_size=512, libver="earliest") as f:
        f.attrs["kdmobile_meta"] = meta
        u_ds = f.create_dataset("u", shape=(t, w, h, n), dtype=dtype, chunks=(t, w, h, 1), track_times=False)
        a_ds = f.create_dataset("a", shape=(w, h, n), dtype=dtype, chunks=(w, h, 1), track_times=False)
        f.create_dataset("t", data=times.reshape(t, 1), track_times=False)
        for ds, c in ((u_ds, cls), (a_ds, cls), (f["t"], "double" if times.dtype == np.float64 else "single")):
            ds.attrs["MATLAB_class"] = np.bytes_(c)
        b0 = 0
        for u, a in chunks:
            b1 = b0 + len(u)
            u_ds[..., b0:b1] = np.transpose(np.asarray(u, dtype=dtype), (1, 3, 2, 0))
            a_ds[..., b0:b1] = np.transpose(np.asarray(a, dtype=dtype), (2, 1, 0))
            b0 = b1
    header = _MAT_HEADER_TEXT.ljust(116).encode("ascii") + bytes(8) + b"\x00\x02IM"
    with open(tmp, "r+b") as fh:
        fh.write(header)


def write_dataset(path: Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int, int, int],
                  dtype: np.dtype, times: np.ndarray, meta: dict[str, Any]) -> Path:
    """Atomically write the chunks' trajectories: .npz `u` (N,T,H,W) + `a`, `t`, `meta`; .npy `u` only;
    .mat (v7.3) in FNO's layout `u` N×H×W×T, `a`, `t`. `meta["layout"]` is set to the file's layout."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"{path}: output must end in .npz, .npy or .mat, not {path.suffix or '(no extension)'!r}")
    dtype = np.dtype(dtype)
    meta_json = json.dumps({**meta, "layout": "N,H,W,T" if suffix == ".mat" else "N,T,H,W"},
                           sort_keys=True, default=str)
    try:
        with atomic_path(path) as tmp:
            if suffix == ".npz":
                _write_npz(tmp, chunks, shape, dtype, times, meta_json)
            elif suffix == ".npy":
                _write_npy(tmp, chunks, shape, dtype)
            else:
                _write_mat(tmp, chunks, shape, dtype, times, meta_json)
    except OSError as e:
        raise UserError(f"{path}: cannot write: {e.strerror or e}") from None
    return path
