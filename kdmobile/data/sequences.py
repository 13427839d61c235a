"""Spatiotemporal sequence data: load (N, T, H, W) trajectories and cut normalised forecasting windows.

Reads `.npy`, `.npz` (key `u` or a single array) and the FNO `.mat` files (key `u` stored as
(N, H, W, T); MATLAB v5 through scipy, v7.3/HDF5 through h5py, which sees the axes reversed).
Every bad input is a one-line KDError naming the file. numpy only; torch is imported inside
`to_tensor_datasets`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.errors import KDError, UserError
from kdmobile.untrusted import check_array_bytes, check_array_file, only_arrays

SEQUENCE_SUFFIXES = (".npy", ".npz", ".mat")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

__all__ = [
    "load_sequences",
    "SequenceSpec",
    "SequenceSplits",
    "make_windows",
    "load_splits",
    "check_frames",
    "to_tensor_datasets",
]


def _one_line(e: BaseException) -> str:
    """An exception as a short single line (for KDError messages)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _is_hdf5(path: Path) -> bool:
    """True when the file carries an HDF5 signature at 0 or a power-of-two user block (MATLAB v7.3: 512)."""
    try:
        with open(path, "rb") as f:
            for offset in (0, 512, 1024, 2048, 4096):
                f.seek(offset)
                if f.read(8) == _HDF5_SIGNATURE:
                    return True
    except OSError:
        return False
    return False


def _read_npy(path: Path) -> np.ndarray:
    """An array from a .npy file (no pickles)."""
    check_array_file(path)
    arr = np.load(path, allow_pickle=False)
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{path}: not a .npy array")
    return arr


def _read_npz(path: Path) -> np.ndarray:
    """Key `u` from a .npz, or its only array."""
    check_array_file(path)
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):  # a .npy saved under a .npz name
        return loaded
    with loaded as z:
        keys = list(z.files)
        arrays = [k for k in keys if k != "meta"]
        if "u" not in keys and len(arrays) != 1:
            raise UserError(f"{path}: no array 'u' and not a single array (keys: {', '.join(keys) or 'none'})")
        key = "u" if "u" in keys else arrays[0]
        return only_arrays({key: z[key]}, path)[key]


def _mat_to_ntHW(arr: np.ndarray, path: Path) -> np.ndarray:
    """FNO layout (N, H, W, T) -> (N, T, H, W); a 3-D (H, W, T) is one trajectory."""
    if arr.ndim == 4:
        return np.transpose(arr, (0, 3, 1, 2))
    if arr.ndim == 3:
        return np.transpose(arr, (2, 0, 1))[None]
    raise UserError(f"{path}: 'u' must be 4-D (N, H, W, T) as in the FNO files, got shape {arr.shape}")


def _pick_variable(names: list[str], path: Path) -> str:
    """The FNO files' variable `u`, or the file's only variable."""
    if "u" in names:
        return "u"
    if len(names) == 1:
        return names[0]
    raise UserError(f"{path}: no variable 'u' (variables: {', '.join(names) or 'none'})")


_MAT_NUMERIC = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                "logical"}


def _read_mat_v5(path: Path) -> np.ndarray:
    """Variable `u` (or the only variable) from a MATLAB v4/v5/v7 file via scipy."""
    import scipy.io

    variables = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(path)}  # the caller words a parse error
    name = _pick_variable(list(variables), path)
    shape, cls = variables[name]
    if cls not in _MAT_NUMERIC:  # a cell or struct's contents are not in whosmat's shape: never read them
        raise UserError(f"{path}: variable {name!r} is a MATLAB {cls}, not a numeric array")
    check_array_bytes(path, 8 * math.prod(shape))  # read as float64 at most, the widest MATLAB number
    arr = scipy.io.loadmat(path, variable_names=[name])[name]  # only this variable is read
    if not isinstance(arr, np.ndarray) or arr.dtype == object or arr.dtype.names is not None:
        raise UserError(f"{path}: variable 'u' is not a numeric array")
    return _mat_to_ntHW(arr, path)


def _read_mat_v73(path: Path) -> np.ndarray:
    """Dataset `u` (or the only dataset) from a MATLAB v7.3 (HDF5) file; h5py sees (T, W, H, N)."""
    import h5py

    with h5py.File(path, "r") as f:
        obj = f[_pick_variable([k for k in f.keys() if not k.startswith("#")], path)]
        if not isinstance(obj, h5py.Dataset) or obj.dtype.names is not None or obj.dtype.kind not in "biuf":
            raise UserError(f"{path}: variable 'u' is not a numeric array")
        check_array_bytes(path, math.prod(obj.shape) * obj.dtype.itemsize)
        arr = obj[()]
    # MATLAB is column-major: reversing the axes restores MATLAB's (N, H, W, T) / (H, W, T).
    return _mat_to_ntHW(np.transpose(arr), path)


def _read_any(path: Path) -> np.ndarray:
    """Dispatch on the extension (and the HDF5 signature for .mat)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".npz":
        return _read_npz(path)
    if _is_hdf5(path):
        return _read_mat_v73(path)
    return _read_mat_v5(path)


def load_sequences(path: str | os.PathLike) -> np.ndarray:
    """Trajectories (N, T, H, W) float32 from .npy / .npz / FNO .mat; a 3-D (T, H, W) array is N=1."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SEQUENCE_SUFFIXES:
        raise UserError(f"{p}: unsupported file type {p.suffix or '(no extension)'!r} (use .npy, .npz or .mat)")
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if not p.is_file():
        raise UserError(f"{p}: not a regular file")
    try:
        arr = _read_any(p)
    except KDError:
        raise
    except MemoryError:
        raise UserError(f"{p}: not enough memory to load the array") from None
    except Exception as e:  # corrupt/unreadable files raise many types (OSError, ValueError, zip, HDF5, scipy)
        raise UserError(f"{p}: cannot read as {suffix} array ({type(e).__name__}: {_one_line(e)})") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise UserError(f"{p}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise UserError(f"{p}: expected a 4-D array (N, T, H, W) or 3-D (T, H, W), got shape {arr.shape}")
    if arr.size == 0:
        raise UserError(f"{p}: the array is empty (shape {arr.shape})")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(out.size - np.count_nonzero(finite))
        raise UserError(f"{p}: contains {bad} non-finite values (NaN/Inf, or too large for float32)")
    return out


def _check_frac(name: str, value: float) -> None:
    """A split fraction must lie in [0, 1)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise UserError(f"{name} must be in [0, 1), got {value!r}")


def _check_pos_int(name: str, value: int) -> None:
    """A positive integer option."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class SequenceSpec:
    """How to turn trajectories into forecasting windows: frames in/out, split fractions, seed, stride."""

    frames_in: int = 10
    frames_out: int = 10
    val_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0
    stride: int = 1

    def __post_init__(self) -> None:
        """Validate at construction so a bad flag fails before any data is read."""
        _check_pos_int("frames_in", self.frames_in)
        _check_pos_int("frames_out", self.frames_out)
        _check_pos_int("stride", self.stride)
        _check_frac("val_frac", self.val_frac)
        _check_frac("test_frac", self.test_frac)
        if self.val_frac + self.test_frac >= 1.0:
            raise UserError(f"val_frac + test_frac must be < 1, got {self.val_frac} + {self.test_frac}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def window(self) -> int:
        """Frames per window (input + target)."""
        return self.frames_in + self.frames_out


@dataclass
class SequenceSplits:
    """Normalised windows (M, frames, H, W) per split, the train statistics, and which trajectories went where."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    mean: float
    std: float
    train_traj: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_traj: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test_traj: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Map normalised values back to the data's units."""
        return np.asarray(x) * self.std + self.mean

    def stats(self) -> dict[str, Any]:
        """A JSON-friendly summary (sizes and normalisation) for run metadata."""
        return {
            "mean": float(self.mean),
            "std": float(self.std),
            "windows": {"train": len(self.train_x), "val": len(self.val_x), "test": len(self.test_x)},
            "trajectories": {
                "train": self.train_traj.tolist(),
                "val": self.val_traj.tolist(),
                "test": self.test_traj.tolist(),
            },
        }


def check_frames(array: np.ndarray, spec: SequenceSpec, source: str | os.PathLike | None = None) -> None:
    """Refuse (KDError) data with fewer frames than one window needs, saying how many are needed and present."""
    t = int(array.shape[1]) if array.ndim == 4 else int(array.shape[0]) if array.ndim == 3 else 0
    if t < spec.window:
        where = f"{source}: " if source is not None else ""
        raise UserError(
            f"{where}too few frames: frames_in + frames_out = {spec.frames_in} + {spec.frames_out} "
            f"= {spec.window} frames needed, the data has {t}"
        )


def _split_counts(n: int, spec: SequenceSpec) -> tuple[int, int, int]:
    """(train, val, test) trajectory counts: rounded fractions, at least one for a non-zero fraction when
    possible, and always at least one training trajectory."""
    n_val = int(round(spec.val_frac * n))
    n_test = int(round(spec.test_frac * n))
    if spec.val_frac > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    if spec.test_frac > 0 and n_test == 0 and n - n_val >= 2:
        n_test = 1
    while n - n_val - n_test < 1:
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def _windows(
    data: np.ndarray, ids: np.ndarray, spec: SequenceSpec, mean: float, std: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut normalised (x, y) windows (M, frames, H, W) from trajectories `ids`, in trajectory then start order."""
    _, t, h, w = data.shape
    starts = np.arange(0, t - spec.window + 1, spec.stride)
    m = len(ids) * len(starts)
    x = np.empty((m, spec.frames_in, h, w), dtype=np.float32)
    y = np.empty((m, spec.frames_out, h, w), dtype=np.float32)
    k = 0
    for i in ids:
        traj = ((data[i].astype(np.float64) - mean) / std).astype(np.float32)
        for s in starts:
            x[k] = traj[s : s + spec.frames_in]
            y[k] = traj[s + spec.frames_in : s + spec.window]
            k += 1
    return x, y


def _train_stats(data: np.ndarray, ids: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std over every value of trajectories `ids`, accumulated per trajectory in float64."""
    count = len(ids) * int(np.prod(data.shape[1:]))
    mean = sum(float(np.sum(data[i], dtype=np.float64)) for i in ids) / count
    var = sum(float(np.sum((data[i].astype(np.float64) - mean) ** 2)) for i in ids) / count
    return mean, math.sqrt(var)


def make_windows(
    array: np.ndarray, spec: SequenceSpec, source: str | os.PathLike | None = None
) -> SequenceSplits:
    """Split trajectories (not windows, so nothing leaks) into train/val/test, cut windows, normalise by train stats.

    The mean and std are over every frame of the training trajectories (float64 accumulation);
    windows are copies, (M, frames, H, W) float32, M = trajectories × (1 + (T - window) // stride).
    """
    arr = np.asarray(array)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        where = f"{source}: " if source is not None else ""
        raise UserError(f"{where}expected a 4-D array (N, T, H, W), got shape {arr.shape}")
    check_frames(arr, spec, source)
    n = arr.shape[0]
    n_train, n_val, n_test = _split_counts(n, spec)
    order = np.random.default_rng(spec.seed).permutation(n)
    train_ids = np.sort(order[:n_train])
    val_ids = np.sort(order[n_train : n_train + n_val])
    test_ids = np.sort(order[n_train + n_val :])
    mean, std = _train_stats(arr, train_ids)
    if not (math.isfinite(std) and std > 0):
        where = f"{source}: " if source is not None else ""
        raise UserError(f"{where}the training trajectories are constant (std = {std}); cannot normalise")
    tx, ty = _windows(arr, train_ids, spec, mean, std)
    vx, vy = _windows(arr, val_ids, spec, mean, std)
    sx, sy = _windows(arr, test_ids, spec, mean, std)
    return SequenceSplits(
        train_x=tx, train_y=ty, val_x=vx, val_y=vy, test_x=sx, test_y=sy,
        mean=mean, std=std,
        train_traj=train_ids.astype(np.int64), val_traj=val_ids.astype(np.int64), test_traj=test_ids.astype(np.int64),
    )


def load_splits(path: str | os.PathLike, spec: SequenceSpec | None = None) -> SequenceSplits:
    """load_sequences + make_windows, with errors naming the file."""
    spec = spec if spec is not None else SequenceSpec()
    return make_windows(load_sequences(path), spec, source=path)


def to_tensor_datasets(splits: SequenceSplits) -> dict[str, Any]:
    """torch TensorDatasets {"train", "val", "test"} of (x, y) windows (torch imported here only)."""
    import torch
    from torch.utils.data import TensorDataset

    return {
        name: TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        for name, x, y in (
            ("train", splits.train_x, splits.train_y),
            ("val", splits.val_x, splits.val_y),
            ("test", splits.test_x, splits.test_y),
        )
    }
