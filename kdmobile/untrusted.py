"""Limits and checks for files that may come from someone else: JSON, images, arrays, printed text (no torch).

Everything here turns a hostile or broken file into a one-line KDError before it can exhaust memory, the
recursion limit or the terminal.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.errors import KDError, UserError

MAX_JSON_BYTES = 1 << 20          # a manifest is a few KB; 1 MiB leaves room and refuses a 300 MB one unread
MAX_LABELS_BYTES = 64 << 20       # labels.json of a caption gallery can be large
MAX_JSON_DEPTH = 32               # a manifest nests 4 levels
MAX_PIXELS = 64 * 1024 * 1024     # 64 Mpx: more than any phone photo, far less than a decompression bomb
MAX_CLASSES = 100_000             # classes of a labelled set or a bundle (folders, CIFAR meta, labels, class vectors)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value, iteratively (no recursion)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def parse_json(raw: bytes, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON bytes with a nesting limit; one-line KDError naming `where` otherwise."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply (limit {max_depth})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None
    if _depth(obj) > max_depth:
        raise UserError(f"{where}: JSON nested too deeply (limit {max_depth})")
    return obj


def read_limited(path: str | os.PathLike, where: str, max_bytes: int = MAX_JSON_BYTES,
                 follow_links: bool = False) -> bytes:
    """A regular file's bytes, refusing (unread) one over `max_bytes`, or a symlink unless `follow_links` (a user's
    own settings file may be one; a bundle's files may not)."""
    import stat

    p = Path(path)
    if not follow_links and p.is_symlink():
        raise UserError(f"{where}: is a symbolic link (refused)")
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):  # before open(): opening a FIFO would block
            raise UserError(f"{where}: not a regular file (refused)")
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"{where}: not a regular file (refused)")
            if st.st_size > max_bytes:
                raise UserError(f"{where}: {st.st_size} bytes, over the {max_bytes}-byte limit (refused unread)")
            raw = f.read(max_bytes + 1)  # a file that grew since fstat is still read only up to the limit
    except OSError as e:
        raise UserError(f"{where}: unreadable ({e.strerror or e})") from None
    if len(raw) > max_bytes:
        raise UserError(f"{where}: over the {max_bytes}-byte limit (it grew while being read)")
    return raw


def read_json(path: str | os.PathLike, where: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file with size and depth limits."""
    where = where or str(path)
    return parse_json(read_limited(path, where, max_bytes), where)


def printable(text: str) -> str:
    """`text` with control characters (ANSI escapes, newlines) shown escaped, so a label cannot drive a terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Any:
    """Decode an image file to a PIL image in `mode`, refusing oversized images before decoding them.

    16-bit greyscale is scaled to 8 bits (Pillow's convert would saturate it to 255).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies
            im = Image.open(p)  # lazy: only the header is read here
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise UserError(f"{p}: {w}x{h} = {w * h} pixels, over the {MAX_PIXELS}-pixel limit (refused before "
                              "decoding)")
            if im.mode.startswith("I;16") or im.mode == "I":
                a = np.asarray(im, dtype=np.float64)
                im8 = Image.fromarray(np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8))
                return im8.convert(mode)
            return im.convert(mode)
    except KDError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{p}: not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{p}: refused before decoding ({e})") from None
    except (OSError, ValueError, SyntaxError, MemoryError) as e:  # truncated or malformed data
        raise UserError(f"{p}: unreadable image ({' '.join(str(e).split())[:160]})") from None


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles), read fully now; one-line KDError for a corrupt or truncated file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: missing (was the run finished?)")
    check_array_file(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("holds a single array, not an .npz archive")
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, EOF and format errors all mean "corrupt"
        raise UserError(f"{p}: unreadable ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    return only_arrays(arrays, p)


# ---------------------------------------------------------------- array files (.npy, .npz, .mat)
MEMORY_SHARE = 0.5         # a file's arrays may take at most half the memory available when it is read
FALLBACK_BUDGET = 8 << 30  # where /proc/meminfo cannot be read


def array_budget() -> int:
    """Bytes an input file's arrays may occupy once read: MEMORY_SHARE of the memory available now."""
    from kdmobile.fileio import available_memory

    avail = available_memory()
    return int(avail * MEMORY_SHARE) if avail else FALLBACK_BUDGET


def check_array_bytes(where: str | os.PathLike, declared: int, before: str = "reading") -> None:
    """Refuse, before reading (or allocating), arrays whose declared shapes need more than `array_budget()` bytes (a
    compressed .npz member or a shared-reference pickle is small on disk and huge in memory)."""
    budget = array_budget()
    if declared > budget:
        raise UserError(f"{where}: arrays of {declared / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB limit "
                        f"(half the memory available now; refused before {before})")


def _npy_header_bytes(f: Any, name: str) -> int:
    """Bytes the array of one .npy stream declares (its header only; the data is not read)."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"{name}: unsupported .npy version {version}")
    return math.prod(int(d) for d in shape) * max(dtype.itemsize, 1)


def _member_bytes(z: Any, info: Any) -> int:
    """Bytes numpy would allocate for one .npz member: its .npy header's shape, or (a member numpy returns as raw
    bytes, or one whose header cannot be read) its uncompressed size from the zip directory."""
    try:
        with z.open(info) as f:
            return max(_npy_header_bytes(f, info.filename), info.file_size)
    except Exception:  # noqa: BLE001 - no .npy magic, or unreadable: it still counts what it would inflate to
        return info.file_size


def declared_array_bytes(path: str | os.PathLike) -> int:
    """Bytes the arrays of an .npy or .npz file would take once read, from their headers (every member of an .npz,
    whatever its name), without decompressing any data."""
    import zipfile

    p = Path(path)
    with open(p, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            f.seek(0)
            return _npy_header_bytes(f, p.name)
    with zipfile.ZipFile(p) as z:
        return sum(_member_bytes(z, info) for info in z.infolist())


def check_array_file(path: str | os.PathLike) -> None:
    """The size rule for an .npy/.npz someone else wrote: what it declares within `array_budget()`. A file that is
    neither (not a zip, a corrupt .npy header) is left to the loader's own one-line error."""
    try:
        declared = declared_array_bytes(path)
    except Exception:  # noqa: BLE001 - np.load reports a file that is not an array file in the caller's words
        return
    check_array_bytes(path, declared)


def only_arrays(arrays: dict[str, Any], where: str | os.PathLike) -> dict[str, np.ndarray]:
    """Refuse an .npz member numpy returned as raw bytes (not a .npy array)."""
    for k, v in arrays.items():
        if not isinstance(v, np.ndarray):
            raise UserError(f"{where}: member {printable(k)!r} is not a NumPy array")
    return arrays


# ---------------------------------------------------------------- YAML (settings files, --set values)
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; 1 MiB is generous and refuses a 50 MB file unparsed
MAX_SET_CHARS = 64 * 1024


def _read_config(p: Path) -> str:
    """A config file's text: size-limited before reading (read_limited), UTF-8 or a one-line error."""
    raw = read_limited(p, f"{p} (a config file)", MAX_CONFIG_BYTES, follow_links=True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_yaml(text: str, where: str) -> Any:
    """safe_load (imported when a config is read, not when the CLI starts) with every failure as one line: syntax
    errors, tags (safe_load refuses them), too deep nesting, and aliases (refused: `*a` repeated through nested
    lists expands exponentially once the settings are walked; a config never needs them)."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("aliases (*name) are not allowed in kdmobile settings")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: a date like 2001-13-45, a huge int
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: not valid YAML ({first[:160]})") from None
    except RecursionError:
        raise UserError(f"{where}: YAML nested too deeply") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file read under the config limits (size, UTF-8, no tags or aliases, depth); one-line errors."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    return parse_yaml(_read_config(p), str(p))
