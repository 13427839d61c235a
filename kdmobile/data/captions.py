"""Image-caption datasets (Flickr8k .npz subset, Karpathy and COCO caption JSON) as uint8 RGB arrays; no torch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdmobile.data.folders import ImageFiles, caption_files
from kdmobile.data.images import Samples, as_index, check_images, existing, read_npz
from kdmobile.errors import UserError
from kdmobile.untrusted import check_array_bytes, parse_json, read_limited

# A caption file is read whole: Karpathy's dataset_coco.json is 145 MB; 512 MiB is room for any such file and still
# refuses a stray multi-GB one unread.
MAX_CAPTIONS_JSON_BYTES = 512 << 20
JSON_GROWTH = 25  # parsed JSON takes up to ~21x its text in Python objects (a file of `[[],[],...]`); checked first



@dataclass
class CaptionData(Samples):
    """Images (N,H,W,3) uint8 RGB, each with one or more reference captions."""

    TARGETS = "caption lists"
    captions: list[list[str]]
    name: str

    def targets(self) -> list[list[str]]:
        return self.captions

    def subset(self, idx: np.ndarray) -> CaptionData:
        """The samples at `idx` (integer indices or a boolean mask), same name."""
        i = as_index(idx)
        return CaptionData(self.images[i], [list(self.captions[j]) for j in i.tolist()], self.name)


def load_captions(
    path: str | os.PathLike,
    size: int | None = None,
    image_root: str | os.PathLike | None = None,
    limit: int | None = None,
) -> CaptionData | ImageFiles:
    """Caption data from a Flickr-style .npz (or its directory, in memory) or a Karpathy/COCO JSON with images beside
    it (a file list: photos are decoded where they are used, at the run's size, like an image folder's).

    .npz images are kept unless `size` is given (center square crop, bicubic). `image_root` overrides the JSON's
    directory as the image base; `limit` keeps the first N images. Images with no captions in a JSON file are skipped.
    """
    p = existing(path, "captions")
    if size is not None and (not isinstance(size, (int, np.integer)) or size <= 0):
        raise UserError(f"captions: image size must be a positive int, got {size!r}")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit <= 0):
        raise UserError(f"captions: limit must be a positive int, got {limit!r}")
    if p.is_dir():
        p = _npz_in(p)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _load_npz(p, size, limit)
    if suffix == ".json":
        return _load_json(p, image_root, limit)
    raise UserError(f"captions: {p}: expected a .npz, a Karpathy/COCO .json, or a directory holding one .npz")


def square(img: Image.Image, size: int) -> Image.Image:
    """Center square crop then bicubic resize to size x size (the Flickr8k subset's preprocessing)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    return img if s == size else img.resize((size, size), Image.Resampling.BICUBIC)


def _npz_in(d: Path) -> Path:
    """The single .npz inside directory `d`."""
    found = sorted(f for f in d.glob("*.npz") if f.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"captions: {d}: no .npz file in this directory (pass the .npz or a Karpathy/COCO .json)")
    raise UserError(f"captions: {d}: several .npz files ({', '.join(f.name for f in found)}); pass one of them")


def _load_npz(p: Path, size: int | None, limit: int | None) -> CaptionData:
    """Flickr8k subset format: images (N,H,W,3) uint8 and captions, a 0-d string holding a JSON list of lists."""
    arrays = read_npz(p, ("images", "captions"))
    images, raw = arrays["images"], arrays["captions"]
    check_images(images, p)
    if raw.ndim != 0 or raw.dtype.kind not in "US":
        raise UserError(f"{p}: 'captions' must be a 0-d string holding a JSON list of caption lists, got {raw.dtype} {raw.shape}")
    text = raw.item()
    caps = parse_json(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"), f"{p}: 'captions'")
    captions = _check_captions(caps, len(images), p)
    if limit is not None:
        images, captions = images[:limit], captions[:limit]
    if size is not None and images.shape[1:3] != (size, size):
        images = np.stack([np.asarray(square(Image.fromarray(im), size)) for im in images])
    return CaptionData(images, captions, p.stem)


def _check_captions(caps: Any, n: int, src: Path) -> list[list[str]]:
    """`caps` checked to be n non-empty lists of strings."""
    if not isinstance(caps, list):
        raise UserError(f"{src}: 'captions' must be a JSON list of caption lists, got {type(caps).__name__}")
    if len(caps) != n:
        raise UserError(f"{src}: {n} images but {len(caps)} caption lists")
    for i, c in enumerate(caps):
        if not isinstance(c, list) or not c or not all(isinstance(s, str) for s in c):
            raise UserError(f"{src}: captions[{i}] must be a non-empty list of strings")
    return [list(c) for c in caps]


def _load_json(p: Path, image_root: str | os.PathLike | None, limit: int | None) -> ImageFiles:
    """Karpathy dataset_*.json or COCO captions_*.json as a file list (images are decoded where they are used);
    images resolved against `image_root` or the JSON's folder."""
    if p.is_file():
        check_array_bytes(f"{p} (parsed)", p.stat().st_size * JSON_GROWTH, "parsing")
    obj = parse_json(read_limited(p, str(p), MAX_CAPTIONS_JSON_BYTES), str(p))
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise UserError(f"{p}: expected a JSON object with an 'images' list (Karpathy dataset_*.json or COCO captions_*.json)")
    entries = _coco_entries(obj, p) if "annotations" in obj else _karpathy_entries(obj["images"], p)
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise UserError(f"{p}: dataset is empty (no images with captions)")
    root = Path(os.path.expanduser(os.fspath(image_root))) if image_root is not None else p.parent
    for rel, _ in entries:  # a stat per image: a wrong root fails now, not in a DataLoader worker later
        if not (root / rel).is_file():
            raise UserError(f"{p}: image file {root / rel} not found (images are resolved relative to {root})")
    return caption_files(root, [rel for rel, _ in entries], [caps for _, caps in entries], p.stem)


def _karpathy_entries(items: list[Any], p: Path) -> list[tuple[str, list[str]]]:
    """(relative image path, captions) per Karpathy entry: filepath/filename and sentences[].raw (or tokens)."""
    out: list[tuple[str, list[str]]] = []
    for j, im in enumerate(items):
        if not isinstance(im, dict) or not isinstance(im.get("filename"), str):
            raise UserError(f"{p}: images[{j}] must be an object with a 'filename' string")
        sentences = im.get("sentences")
        if not isinstance(sentences, list):
            raise UserError(f"{p}: images[{j}] has no 'sentences' list (Karpathy format) and the file has no 'annotations' (COCO format)")
        caps = []
        for k, s in enumerate(sentences):
            raw = s.get("raw") if isinstance(s, dict) else None
            if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                raw = " ".join(str(t) for t in s["tokens"])
            if not isinstance(raw, str):
                raise UserError(f"{p}: images[{j}].sentences[{k}] has no 'raw' string")
            caps.append(raw)
        filepath = im.get("filepath")
        if filepath is not None and not isinstance(filepath, str):
            raise UserError(f"{p}: images[{j}].filepath must be a string")
        if caps:
            out.append((str(Path(filepath) / im["filename"]) if filepath else im["filename"], caps))
    return out


def _coco_entries(obj: dict[str, Any], p: Path) -> list[tuple[str, list[str]]]:
    """(file_name, captions) per COCO image, captions grouped from `annotations` in file order."""
    anns = obj["annotations"]
    if not isinstance(anns, list):
        raise UserError(f"{p}: 'annotations' must be a list")
    by_id: dict[Any, int] = {}
    names: list[str] = []
    for j, im in enumerate(obj["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not isinstance(im.get("id"), (int, str)):
            raise UserError(f"{p}: images[{j}] must be an object with 'id' and 'file_name'")
        if im["id"] in by_id:
            raise UserError(f"{p}: images[{j}] repeats image id {im['id']!r}")
        by_id[im["id"]] = j
        names.append(im["file_name"])
    caps: list[list[str]] = [[] for _ in names]
    for k, a in enumerate(anns):
        if not isinstance(a, dict) or not isinstance(a.get("caption"), str) or "image_id" not in a:
            raise UserError(f"{p}: annotations[{k}] must be an object with 'image_id' and 'caption'")
        j = by_id.get(a["image_id"]) if isinstance(a["image_id"], (int, str)) else None
        if j is None:
            raise UserError(f"{p}: annotations[{k}] refers to unknown image_id {a['image_id']!r}")
        caps[j].append(a["caption"])
    return [(n, c) for n, c in zip(names, caps) if c]
