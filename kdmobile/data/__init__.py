"""Dataset loading by spec string, deterministic (stratified) splits, and the shared data location; no torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from kdmobile.data.captions import CaptionData, load_captions
from kdmobile.data.folders import ImageFiles, scan_imagefolder
from kdmobile.data.images import ClassData, load_cifar, load_digits
from kdmobile.errors import UserError

__all__ = [
    "CaptionData", "ClassData", "ImageFiles", "SPECS", "load_captions", "load_cifar", "load_dataset", "load_digits",
    "scan_imagefolder", "shared_data_dir", "split_dataset", "split_indices", "stratified_split",
]

SPECS = ("digits", "cifar10:PATH", "cifar100:PATH", "imagefolder:PATH", "captions:PATH")
_PATH_LOADERS = {"cifar10": load_cifar, "cifar100": load_cifar, "imagefolder": scan_imagefolder, "captions": load_captions}

D = TypeVar("D", ClassData, CaptionData, ImageFiles)


def load_dataset(spec: str, **kw: Any) -> ClassData | CaptionData | ImageFiles:
    """Load `digits`, `cifar10:PATH`, `cifar100:PATH`, `imagefolder:PATH` or `captions:PATH` (kw go to the loader)."""
    scheme, _, rest = spec.strip().partition(":")
    scheme, rest = scheme.strip().lower(), rest.strip()
    if scheme == "digits":
        if rest:
            raise UserError(f"dataset {spec!r}: digits is built in and takes no path; use 'digits'")
        return load_digits(**kw)
    if scheme not in _PATH_LOADERS:
        raise UserError(f"unknown dataset {spec!r}; valid: {', '.join(SPECS)}")
    if not rest:
        raise UserError(f"dataset {spec!r} needs a path: {scheme}:PATH")
    if scheme in ("cifar10", "cifar100"):
        kw.setdefault("name", scheme)
    data = _PATH_LOADERS[scheme](Path(os.path.expanduser(rest)), **kw)
    if (isinstance(data, ClassData) or (isinstance(data, ImageFiles) and data.captions is None)) \
            and len(np.unique(data.labels)) < 2:
        raise UserError(f"dataset {spec!r}: only one class has images; classifying or retrieving over a single class "
                      "is meaningless (give at least two)")
    return data


def shared_data_dir() -> Path | None:
    """$KDMOBILE_SHARED_DATA, else the first existing of <repo>/../shared/data and <repo>/shared/data, else None."""
    env = os.environ.get("KDMOBILE_SHARED_DATA")
    if env:
        return Path(os.path.expanduser(env))
    repo = Path(__file__).resolve().parent.parent.parent
    for cand in (repo.parent / "shared" / "data", repo / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def _check_fracs(val_frac: float, test_frac: float) -> None:
    """KDError unless both fractions are >= 0 and leave room for training data."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"split fractions must be >= 0 and sum to < 1, got val={val_frac} test={test_frac}")


def _counts(n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """(n_val, n_test) for n items: rounded, at least 1 each when n >= 3 and the fraction is > 0, train >= 1."""
    n_test, n_val = round(n * test_frac), round(n * val_frac)
    if n >= 3:
        n_test = min(max(n_test, int(test_frac > 0)), n - 1 - int(val_frac > 0))
        n_val = min(max(n_val, int(val_frac > 0)), n - 1 - n_test)
    else:
        n_test = min(n_test, max(n - 1, 0))
        n_val = min(n_val, max(n - 1 - n_test, 0))
    return n_val, n_test


def split_indices(n: int, seed: int, val_frac: float, test_frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint sorted (train, val, test) indices covering range(n), fixed by seed, for reproducible experiments."""
    _check_fracs(val_frac, test_frac)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = _counts(n, val_frac, test_frac)
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return np.sort(train), np.sort(val), np.sort(test)


def stratified_split(labels: np.ndarray, seed: int, val_frac: float, test_frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like split_indices but per class, so every class with >= 3 samples appears in train, val and test."""
    _check_fracs(val_frac, test_frac)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = idx[rng.permutation(len(idx))]
        n_val, n_test = _counts(len(idx), val_frac, test_frac)
        parts[2].append(perm[:n_test])
        parts[1].append(perm[n_test:n_test + n_val])
        parts[0].append(perm[n_test + n_val:])
    empty = np.zeros(0, np.int64)
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) if p else empty for p in parts)
    return train, val, test


def _truncate(idx: np.ndarray, k: int | None, seed: int, labels: np.ndarray | None) -> np.ndarray:
    """At most k of idx, chosen by seed; class proportions kept (largest remainder) when labels are given."""
    if k is None or k >= len(idx):
        return idx
    if k < 0:
        raise UserError(f"max_train/max_test must be >= 0, got {k}")
    perm = idx[np.random.default_rng([seed, 1]).permutation(len(idx))]
    if labels is None:
        return np.sort(perm[:k])
    lab = labels[perm]
    classes, counts = np.unique(lab, return_counts=True)
    exact = counts * k / len(idx)
    quota = np.floor(exact).astype(int)
    extra = np.argsort(-(exact - quota), kind="stable")[: k - int(quota.sum())]
    quota[extra] += 1
    chosen = [perm[lab == c][:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def split_dataset(
    data: D, seed: int, val_frac: float = 0.1, test_frac: float = 0.2,
    max_train: int | None = None, max_test: int | None = None,
) -> tuple[D, D, D]:
    """(train, val, test) subsets: stratified for labelled data, plain for CaptionData; max_* cut deterministically.
    A folder already split as train/val[/test] keeps its splits; without test/, its val/ is the test split and the
    validation split is drawn from train/ (val_frac of it)."""
    labelled = isinstance(data, ClassData) or (isinstance(data, ImageFiles) and data.captions is None)
    labels = data.labels if labelled else None
    if isinstance(data, ImageFiles) and data.given:
        train = data.given["train"]
        test = data.given.get("test", data.given.get("val"))
        if "test" in data.given and "val" in data.given:
            val = data.given["val"]
        else:
            keep, val, _ = stratified_split(data.labels[train], seed, val_frac, 0.0)
            train, val = train[keep], train[val]
    elif labels is not None:
        train, val, test = stratified_split(labels, seed, val_frac, test_frac)
    else:
        train, val, test = split_indices(len(data), seed, val_frac, test_frac)
    train = _truncate(train, max_train, seed, labels)
    test = _truncate(test, max_test, seed, labels)
    return data.subset(train), data.subset(val), data.subset(test)
