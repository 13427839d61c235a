"""The bundle contract: manifest schema, atomic writer and checked reader (shared by export and runtime; no torch).

A bundle is sealed as a whole: `bundle.sha256` (sha256sum format, so `sha256sum -c bundle.sha256` works) lists the
digest of manifest.json and of every file; the reader checks that seal before it trusts a byte of the manifest,
and refuses symbolic links, files the manifest does not list, and oversized or deeply nested JSON.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import numpy as np

from kdmobile import __version__
from kdmobile.contracts.manifest import SCHEMA_VERSION, check_fields
from kdmobile.errors import KDError, VerificationError
from kdmobile.fileio import atomic_path, sha256_file
from kdmobile.targets import TARGETS
from kdmobile.untrusted import MAX_LABELS_BYTES, parse_json, read_json, read_limited

MANIFEST = "manifest.json"
SEAL = "bundle.sha256"
SIGNATURE = "bundle.sig"  # kdmobile.signing: optional, beside the seal, signs its bytes
MAX_FILES = 10_000
NORM_TOL = 1e-3  # max |‖row‖₂ − 1| accepted for class vectors

# A staged file: a writer called with the destination path, an existing file/directory to copy, or raw bytes.
FileSource = Union[Callable[[Path], None], str, os.PathLike, bytes]

_NUM = (int, float)


def _is_type(value: Any, typ: Any) -> bool:
    """isinstance that does not accept a JSON boolean as a number."""
    return isinstance(value, typ) and not isinstance(value, bool)


def validate_manifest(manifest: Any, where: str = "manifest") -> None:
    """The manifest's fields, types and allowed values (the typed model in kdmobile.contracts.manifest), then the
    cross-field checks; one VerificationError listing every problem."""
    check_fields(manifest, where)
    problems = _consistency(manifest)
    if problems:
        raise VerificationError(f"{where}: invalid manifest: {'; '.join(problems)}")


def _consistency(m: dict) -> list[str]:
    """Cross-field checks: shapes, model suffix, files listed, output names."""
    out: list[str] = []
    inp = m["input"]
    shape = inp["shape"]
    if len(shape) != 4 or not all(_is_type(s, int) and s > 0 for s in shape):
        out.append(f"input.shape {shape} should be 4 positive ints")
    elif not all(_is_type(v, _NUM) for v in [*inp["mean"], *inp["std"]]):
        out.append("input.mean/std should be numbers")
    elif inp["layout"] == "NCHW" and not (len(inp["mean"]) == len(inp["std"]) == shape[1]):
        out.append(f"input.mean/std should have {shape[1]} entries (one per channel)")
    vr = inp["value_range"]
    if len(vr) != 2 or not all(_is_type(v, _NUM) for v in vr) or not vr[0] < vr[1]:
        out.append("input.value_range should be [lo, hi] with lo < hi")
    if not all(isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("shape"), list)
               for o in m["outputs"]) or not m["outputs"]:
        out.append("outputs should be a non-empty list of {name, shape}")
    elif not all(_is_type(d, int) and d > 0 for o in m["outputs"] for d in o["shape"]):
        out.append("outputs shapes should be positive ints")
    if not m["model_file"].endswith(TARGETS[m["target"]].suffix):
        out.append(f"model_file {m['model_file']!r} does not match target {m['target']}")
    listed = m["files"]
    if not any(f == m["model_file"] or f.startswith(m["model_file"] + "/") for f in listed):
        out.append(f"model_file {m['model_file']} is not listed in files")
    for rel, digest in listed.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            out.append(f"files entry {rel!r} escapes the bundle")
        if not (isinstance(digest, str) and len(digest) == 64):
            out.append(f"files entry {rel!r} should map to a sha256 hex digest")
    out += _HEAD_CHECKS[m["head"]](m, shape, listed)
    return out


def _retrieval_problems(m: dict[str, Any], shape: list[Any], listed: dict[str, Any]) -> list[str]:
    """A retrieval bundle's gallery: a [K, D] class-vector file and its labels, both listed."""
    out = []
    r = m["retrieval"]
    cv_shape = r["class_vectors"]["shape"]
    if len(cv_shape) != 2 or not all(_is_type(d, int) and d > 0 for d in cv_shape):
        out.append("retrieval.class_vectors.shape should be [K, D] positive ints")
    for f in (r["class_vectors"]["file"], r["labels_file"]):
        if f not in listed:
            out.append(f"{f} is not listed in files")
    return out


def _forecast_problems(m: dict[str, Any], shape: list[Any], listed: dict[str, Any]) -> list[str]:
    """A forecast bundle's input: NTHW windows of frames_in frames, a positive std."""
    out = []
    fc = m["forecast"]
    if m["input"]["layout"] != "NTHW" or shape[1:2] != [fc["frames_in"]]:
        out.append("forecast input should be NTHW with T = forecast.frames_in")
    if fc["std"] <= 0:
        out.append("forecast.std should be > 0")
    return out


_HEAD_CHECKS = {"retrieval": _retrieval_problems, "forecast": _forecast_problems}  # one per contracts HEADS


def _bundle_files(root: Path) -> dict[str, str]:
    """sha256 of every file under root (posix relative paths, sorted), except the top-level manifest."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in (MANIFEST, SEAL, SIGNATURE):
            files[rel] = sha256_file(p)
    return files


def seal_bundle(root: str | os.PathLike) -> None:
    """Write bundle.sha256: the digest of manifest.json and of every file it lists, in sha256sum format."""
    r = Path(root)
    manifest = json.loads((r / MANIFEST).read_text())
    lines = [f"{sha256_file(r / MANIFEST)}  {MANIFEST}"]
    lines += [f"{sha256_file(r / rel)}  {rel}" for rel in sorted(manifest["files"])]
    (r / SEAL).write_text("\n".join(lines) + "\n")


def _stage(dest: Path, source: FileSource) -> None:
    """Put one file (or directory) into the staging directory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, bytes):
        dest.write_bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        src = Path(source)
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copyfile(src, dest)
    else:
        source(dest)
    if not dest.exists():
        raise RuntimeError(f"staging {dest.name}: the writer produced no file")


def _write_manifest(path: Path, manifest: dict) -> None:
    """Write manifest.json, pretty-printed."""
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def write_bundle(
    out_dir: str | os.PathLike,
    manifest: Mapping[str, Any],
    files: Mapping[str, FileSource],
    verify: Callable[["Bundle"], Mapping[str, Any]] | None = None,
    sign: str | os.PathLike | None = None,
) -> Path:
    """Stage `files` (name -> writer/source), checksum them, write manifest.json and rename into place atomically.

    Fills schema_version, kdmobile_version, created and files. `verify`, if given, is called with the staged,
    loaded Bundle before the rename; its result is merged into manifest["verification"]. `sign`, a PEM private key,
    signs the final seal (bundle.sig). Any exception (in a writer, validation, verify or signing) leaves nothing
    under `out_dir`.
    """
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for rel, source in files.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts or rel in (MANIFEST, SEAL, SIGNATURE):
                raise ValueError(f"cannot stage {rel!r} in a bundle")
            _stage(tmp / rel, source)
        created = manifest.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        m = {"schema_version": SCHEMA_VERSION, "kdmobile_version": __version__, "created": created,
             **{k: v for k, v in manifest.items() if k not in ("schema_version", "kdmobile_version", "created",
                                                               "files")},
             "files": _bundle_files(tmp)}
        validate_manifest(m, where=f"bundle {out}")
        _write_manifest(tmp / MANIFEST, m)
        seal_bundle(tmp)
        if verify is not None:
            result = verify(load_bundle(tmp))
            m["verification"] = {**m.get("verification", {}), **dict(result)}
            _write_manifest(tmp / MANIFEST, m)
            seal_bundle(tmp)
        if sign is not None:
            from kdmobile.signing import sign_seal

            (tmp / SIGNATURE).write_bytes(sign_seal((tmp / SEAL).read_bytes(), sign))
    return out


def write_class_vectors(path: str | os.PathLike, array: np.ndarray) -> tuple[int, int]:
    """Write (K, D) L2-normalised rows as little-endian float32, row-major; return the shape."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"class vectors must be a non-empty (K, D) array, got shape {a.shape}")
    norms = np.linalg.norm(a, axis=1)
    if not np.all(np.isfinite(a)) or np.max(np.abs(norms - 1.0)) > NORM_TOL:
        raise ValueError("class vectors must be finite with L2-normalised rows")
    Path(path).write_bytes(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return (int(a.shape[0]), int(a.shape[1]))


def read_class_vectors(path: str | os.PathLike, shape: tuple[int, int] | list[int]) -> np.ndarray:
    """Read (K, D) little-endian float32 class vectors and check size and L2-normalised rows."""
    k, d = (int(s) for s in shape)
    p = Path(path)
    if not p.is_file():
        raise VerificationError(f"{p}: class vectors file missing")
    size = p.stat().st_size
    if size != k * d * 4:  # checked before reading: the manifest's shape bounds what is read
        raise VerificationError(f"{p}: {size} bytes, expected {k}x{d} float32 = {k * d * 4}")
    raw = p.read_bytes()
    a = np.frombuffer(raw, dtype="<f4").reshape(k, d).astype(np.float32)
    if not np.all(np.isfinite(a)) or np.max(np.abs(np.linalg.norm(a, axis=1) - 1.0)) > NORM_TOL:
        raise VerificationError(f"{p}: class vectors are not finite L2-normalised rows")
    return a


@dataclass
class Bundle:
    """A loaded, checked bundle: its directory and manifest, with typed accessors."""

    path: Path
    manifest: dict[str, Any]
    trust: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)  # the keys it was checked with
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def head(self) -> str:
        """What the bundle outputs: retrieval | forecast."""
        return self.manifest["head"]

    @property
    def task(self) -> str:
        """What its outputs are scored as: classes | captions | forecast (kdmobile.tasks)."""
        return self.manifest["task"]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def input(self) -> dict[str, Any]:
        return self.manifest["input"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.manifest["outputs"]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    @property
    def labels(self) -> list[str]:
        """Class names from labels.json (retrieval only), one per class vector."""
        if "labels" not in self._cache:
            r = self._retrieval()
            labels = read_json(self.path / r["labels_file"], f"bundle {self.path}: {r['labels_file']}",
                               MAX_LABELS_BYTES)
            k = r["class_vectors"]["shape"][0]
            if not (isinstance(labels, list) and all(isinstance(s, str) for s in labels) and len(labels) == k):
                raise VerificationError(f"bundle {self.path}: {r['labels_file']} should list {k} class names")
            self._cache["labels"] = labels
        return self._cache["labels"]

    @property
    def class_vectors(self) -> np.ndarray:
        """(K, D) float32 L2-normalised class vectors (retrieval only)."""
        if "class_vectors" not in self._cache:
            cv = self._retrieval()["class_vectors"]
            self._cache["class_vectors"] = read_class_vectors(self.path / cv["file"], cv["shape"])
        return self._cache["class_vectors"]

    def _retrieval(self) -> dict[str, Any]:
        if "retrieval" not in self.manifest:
            raise VerificationError(f"bundle {self.path}: a {self.head} bundle has no labels or class vectors")
        return self.manifest["retrieval"]


def _walk(root: Path, where: str) -> set[str]:
    """Relative paths of every regular file under root; KDError for a symbolic link or a special file."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                raise VerificationError(f"{where}: {rel} is a symbolic link (a bundle holds only its own files)")
            if name in filenames and not stat.S_ISREG(mode):
                raise VerificationError(f"{where}: {rel} is not a regular file")
            if name in filenames:
                found.add(rel)
        if len(found) > MAX_FILES:
            raise VerificationError(f"{where}: more than {MAX_FILES} files; not a bundle")
    return found


def _read_seal(root: Path, where: str) -> tuple[bytes, dict[str, str]]:
    """bundle.sha256's bytes and its {relative path: hex digest}; KDError if missing or malformed."""
    raw = read_limited(root / SEAL, f"{where}: {SEAL}", 4 << 20)
    seal: dict[str, str] = {}
    for line in raw.decode("utf-8", errors="replace").splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or rel in seal:
            raise VerificationError(f"{where}: {SEAL} is malformed (expected 'SHA256  PATH' lines)")
        seal[rel] = digest
    if MANIFEST not in seal:
        raise VerificationError(f"{where}: {SEAL} does not cover {MANIFEST}")
    return raw, seal


def _old_schema(mpath: Path, where: str) -> None:
    """For an unsealed bundle: the schema-version refusal, when the manifest states an older version."""
    try:
        found = parse_json(read_limited(mpath, where), where).get("schema_version")
    except (KDError, AttributeError):
        return
    if found != SCHEMA_VERSION:
        raise VerificationError(f"{where}: schema_version {found} found, {SCHEMA_VERSION} expected "
                      f"(re-export the bundle with this kdmobile version)")


def load_bundle(path: str | os.PathLike, trust: Mapping[str, Any] | None = None) -> Bundle:
    """Open a bundle, refusing it with one line unless the seal, manifest, schema version and every file check out.

    Order: no links or special files; the seal; with `trust` (kdmobile.signing.trusted_keys), bundle.sig must be a
    signature of the seal by one of those keys; the manifest's digest against the seal (before parsing it); size
    and depth limits; schema and fields; the listed files are exactly the files present; every file's digest.
    """
    root = Path(path)
    where = f"bundle {root}"
    if not root.exists():
        raise VerificationError(f"{where}: no such directory")
    if not root.is_dir():
        raise VerificationError(f"{where}: not a directory (a bundle is a directory holding manifest.json)")
    mpath = root / MANIFEST
    present = _walk(root, where)
    if MANIFEST not in present:
        raise VerificationError(f"{where}: manifest.json missing")
    if SEAL not in present:
        _old_schema(mpath, where)
        raise VerificationError(f"{where}: {SEAL} missing (the bundle is not sealed; re-export it with this kdmobile version)")
    seal_bytes, seal = _read_seal(root, where)
    if trust is not None:
        from kdmobile.signing import verify_signature

        verify_signature(root, seal_bytes, dict(trust), where)
    raw = read_limited(mpath, f"{where}: {MANIFEST}")
    if hashlib.sha256(raw).hexdigest() != seal[MANIFEST]:
        raise VerificationError(f"{where}: {MANIFEST} changed after export (its digest does not match {SEAL})")
    manifest = parse_json(raw, f"{where}: {MANIFEST}")
    if not isinstance(manifest, dict):
        raise VerificationError(f"{where}: manifest.json must hold a JSON object")
    found = manifest.get("schema_version")
    if found != SCHEMA_VERSION:
        raise VerificationError(f"{where}: schema_version {found} found, {SCHEMA_VERSION} expected "
                      f"(re-export the bundle with this kdmobile version)")
    validate_manifest(manifest, where)
    listed = manifest["files"]
    missing = sorted(set(listed) - present)
    if missing:
        raise VerificationError(f"{where}: listed file {missing[0]} missing")
    unlisted = sorted(present - set(listed) - {MANIFEST, SEAL, SIGNATURE})
    if unlisted:
        raise VerificationError(f"{where}: {unlisted[0]} is not listed in the manifest (a sealed bundle holds only its own "
                      "files; remove it or re-export)")
    if set(seal) != set(listed) | {MANIFEST}:
        raise VerificationError(f"{where}: {SEAL} and {MANIFEST} list different files")
    for rel, digest in listed.items():
        actual = sha256_file(root / rel)
        if actual != digest or seal[rel] != digest:
            raise VerificationError(f"{where}: checksum mismatch for {rel} (file changed after export)")
    return Bundle(path=root, manifest=manifest, trust=trust)
