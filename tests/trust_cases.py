"""Bundles every reader must refuse or accept alike (Python, the Java core, the web page): impossible values in a
re-sealed manifest, and signatures (issue 21 classes 4 and 6). Written as data: (name, how to make it, what the
refusal names); the builders start from a real exported retrieval bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from kdmobile.bundle import seal_bundle
from kdmobile.fileio import sha256_file
from kdmobile.signing import keygen, sign_seal


def _rewrite(bundle: Path, change: Callable[[dict[str, Any]], None], raw: dict[str, str] | None = None) -> None:
    """Edit manifest.json and re-seal the bundle as someone without a signing key can (`raw`: placeholder -> JSON
    text, for numbers json.dumps cannot write, such as 1e400)."""
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    text = json.dumps(m, indent=2)
    for placeholder, literal in (raw or {}).items():
        text = text.replace(json.dumps(placeholder), literal)
    (bundle / "manifest.json").write_text(text + "\n")
    seal_bundle(bundle)


def _short_labels(bundle: Path) -> None:
    labels = json.loads((bundle / "labels.json").read_text())
    (bundle / "labels.json").write_text(json.dumps(labels[:-1]))
    _rewrite(bundle, lambda m: m["files"].update({"labels.json": sha256_file(bundle / "labels.json")}))


def _set_input(**values: Any) -> Callable[[Path], None]:
    return lambda b: _rewrite(b, lambda m: m["input"].update(values))


def _first(key: str, value: Any) -> Callable[[Path], None]:
    return lambda b: _rewrite(b, lambda m: m["input"][key].__setitem__(0, value))


# (name, builder, fragment every reader's message contains)
IMPOSSIBLE: list[tuple[str, Callable[[Path], None], str]] = [
    ("negative-scale", lambda b: _rewrite(b, lambda m: m["retrieval"].update(logit_scale=-14.2)), "logit_scale"),
    ("zero-scale", lambda b: _rewrite(b, lambda m: m["retrieval"].update(logit_scale=0)), "logit_scale"),
    ("zero-std", _first("std", 0.0), "std"),
    ("denormal-std", _first("std", 1e-50), "std"),  # 0 once cast to float32, as every reader computes
    ("infinite-mean", lambda b: _rewrite(b, lambda m: m["input"]["mean"].__setitem__(0, "INF"), {"INF": "1e400"}),
     "mean"),
    ("inverted-range", _set_input(value_range=[255, 0]), "value_range"),
    ("huge-input", _set_input(shape=[1, 3, 60000, 60000]), "shape"),
    ("fractional-shape", _set_input(shape=[1, 3, 32.5, 32]), "shape"),
    ("huge-class-vectors", lambda b: _rewrite(b, lambda m: m["retrieval"]["class_vectors"].update(
        shape=[10, 1_000_000])), "shape"),
    ("short-labels", _short_labels, "labels"),
]


def build_impossible(src: Path, root: Path) -> list[tuple[str, Path, str]]:
    """Each IMPOSSIBLE case as a re-sealed copy of the bundle `src` under root/NAME."""
    out = []
    for name, build, fragment in IMPOSSIBLE:
        dest = shutil.copytree(src, root / name)
        build(dest)
        out.append((name, dest, fragment))
    return out


def build_signed(src: Path, root: Path) -> dict[str, Any]:
    """Keys team/other and copies of `src`: signed by team, re-sealed after signing, signed by other, unsigned, and
    a garbled signature; with the fragment each refusal (trusting team only) names."""
    root.mkdir(parents=True, exist_ok=True)
    team_key, team_pub, _ = keygen(root / "team")
    other_key, other_pub, _ = keygen(root / "other")

    def copy(name: str, key: Path | None) -> Path:
        dest = shutil.copytree(src, root / name)
        (dest / "bundle.sig").unlink(missing_ok=True)
        if key is not None:
            (dest / "bundle.sig").write_bytes(sign_seal((dest / "bundle.sha256").read_bytes(), key))
        return dest

    signed = copy("signed", team_key)
    resealed = copy("resealed", team_key)
    _rewrite(resealed, lambda m: m["retrieval"].update(logit_scale=50.0))  # a valid value, but not the signer's
    def edit_sig(name: str, **change: str) -> Path:
        dest = copy(name, team_key)
        doc = json.loads((dest / "bundle.sig").read_text())
        doc.update({k: v(doc[k]) if callable(v) else v for k, v in change.items()})
        (dest / "bundle.sig").write_text(json.dumps(doc))
        return dest

    return {"trust": team_pub, "other_pub": other_pub, "signed": signed,
            "refused": [("resealed", resealed, "does not match bundle.sha256"),
                        ("other-key", copy("other-key", other_key), "which is not a trusted key"),
                        ("unsigned", copy("unsigned", None), "not signed (bundle.sig missing)"),
                        ("garbled", edit_sig("garbled", signature=lambda s: s[:-8]), "bundle.sig is malformed"),
                        ("unpadded", edit_sig("unpadded", signature=lambda s: s.rstrip("=")), "bundle.sig is malformed"),
                        ("escaped-key-id", edit_sig("escaped-key-id", key_id="\x1b[31mfeedfacefeedface"),
                         "key_id must be 16 hex digits")]}
