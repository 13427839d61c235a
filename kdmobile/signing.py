"""Bundle signatures: who made a bundle, beyond the seal (no torch).

`bundle.sha256` lists the digest of every file, so a signature over its bytes covers the whole bundle. The signature
is ECDSA P-256 with SHA-256 because all three readers verify it with their platform's own library: Python
`cryptography`, `java.security` (Android API 26+) and WebCrypto. It is stored raw (r || s, 64 bytes, the form WebCrypto
produces and expects) and base64-encoded in `bundle.sig`, a small JSON file beside the seal:

    {"algorithm": "ECDSA-P256-SHA256", "key_id": "<16 hex>", "signs": SEAL, "signature": "<base64>"}

`key_id` is the first 16 hex digits of the sha256 of the public key's DER (SubjectPublicKeyInfo) encoding, so a
refusal can say which key signed. Keys are PEM files: PKCS#8 private keys (written 0600) and SPKI public keys.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

from kdmobile.bundle import SEAL, SIGNATURE
from kdmobile.errors import UserError, VerificationError
from kdmobile.fileio import atomic_path
from kdmobile.untrusted import parse_json, read_limited

ALGORITHM = "ECDSA-P256-SHA256"
MAX_SIGNATURE_BYTES = 4096
MAX_KEY_BYTES = 16 * 1024
MAX_TRUST_KEYS = 64


def _crypto() -> Any:
    """The `cryptography` package, or a one-line error saying how to install it."""
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, utils
    except ImportError:
        raise UserError("signing needs the `cryptography` package: pip install 'kdmobile[runtime]'") from None
    return hashes, serialization, ec, utils


def key_id(public_der: bytes) -> str:
    """A public key's short name: the first 16 hex digits of sha256(DER SubjectPublicKeyInfo)."""
    return hashlib.sha256(public_der).hexdigest()[:16]


def _public_der(key: Any) -> bytes:
    _, serialization, _, _ = _crypto()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def keygen(prefix: str | os.PathLike) -> tuple[Path, Path, str]:
    """A new P-256 key pair: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SPKI PEM); existing files are never
    replaced. Returns both paths and the key id."""
    _, serialization, ec, _ = _crypto()
    base = Path(prefix).expanduser()
    if base.name in ("", ".", "..") or str(prefix).endswith(("/", os.sep)) or base.is_dir():
        raise UserError(f"keygen {prefix}: give a file name prefix such as keys/team, not a directory")
    private, public = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for p in (private, public):
        if p.exists():
            raise UserError(f"{p} already exists (a key is never overwritten; choose another name)")
    if not base.parent.is_dir():
        raise UserError(f"{base.parent}: no such directory")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_path(private) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    with atomic_path(public) as tmp:
        tmp.write_bytes(pub)
    return private, public, key_id(_public_der(key.public_key()))


def _load_key(path: str | os.PathLike, private: bool) -> Any:
    """A P-256 key from a PEM file (size-limited); one line for a missing, malformed or other-curve key."""
    _, serialization, ec, _ = _crypto()
    p = Path(path).expanduser()
    what = "private key" if private else "public key"
    if not p.is_file():
        raise UserError(f"{p}: no such {what} file")
    raw = read_limited(p, str(p), MAX_KEY_BYTES)
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        key = (serialization.load_pem_private_key(raw, password=None) if private
               else serialization.load_pem_public_key(raw))
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise UserError(f"{p}: not a PEM {what} ({str(e).splitlines()[0][:100]})") from None
    pub = key.public_key() if private else key
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise UserError(f"{p}: not an ECDSA P-256 {what} (make one with `kdmobile keygen`)")
    return key


def sign_seal(seal: bytes, private_key: str | os.PathLike) -> bytes:
    """bundle.sig's bytes for the seal `seal`, signed with the PEM private key at `private_key`."""
    hashes, _, ec, utils = _crypto()
    key = _load_key(private_key, private=True)
    r, s = utils.decode_dss_signature(key.sign(seal, ec.ECDSA(hashes.SHA256())))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    doc = {"algorithm": ALGORITHM, "key_id": key_id(_public_der(key.public_key())), "signs": SEAL,
           "signature": base64.b64encode(sig).decode("ascii")}
    import json

    return (json.dumps(doc, indent=2) + "\n").encode("ascii")


def check_private_key(path: str | os.PathLike) -> str:
    """The key id of a usable signing key (checked before an export starts, so a bad --sign fails at once)."""
    return key_id(_public_der(_load_key(path, private=True).public_key()))


def trusted_keys(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """--trust PUBKEY files as {key id: public key}, each checked (count limited)."""
    if len(paths) > MAX_TRUST_KEYS:
        raise UserError(f"--trust: {len(paths)} keys, over the limit of {MAX_TRUST_KEYS}")
    keys = {}
    for p in paths:
        key = _load_key(p, private=False)
        keys[key_id(_public_der(key))] = key
    return keys


def verify_signature(root: Path, seal: bytes, trusted: dict[str, Any], where: str) -> str:
    """Refuse (one line) unless ROOT/bundle.sig is a valid signature of `seal` by one of the `trusted` keys; returns
    the signer's key id."""
    hashes, _, ec, utils = _crypto()
    from cryptography.exceptions import InvalidSignature

    path = root / SIGNATURE
    if not path.is_file():
        raise VerificationError(f"{where}: not signed ({SIGNATURE} missing) but a trust key was given")
    doc = parse_json(read_limited(path, f"{where}: {SIGNATURE}", MAX_SIGNATURE_BYTES), f"{where}: {SIGNATURE}")
    if not isinstance(doc, dict) or doc.get("algorithm") != ALGORITHM:
        raise VerificationError(f"{where}: {SIGNATURE} is not an {ALGORITHM} signature")
    kid = doc.get("key_id")
    if not (isinstance(kid, str) and len(kid) == 16 and all(c in "0123456789abcdef" for c in kid)):
        raise VerificationError(f"{where}: {SIGNATURE} is malformed (key_id must be 16 hex digits)")
    try:
        sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except ValueError:
        sig = b""
    if len(sig) != 64:
        raise VerificationError(f"{where}: {SIGNATURE} is malformed (expected a base64 64-byte r||s signature)")
    key = trusted.get(kid)
    if key is None:
        raise VerificationError(f"{where}: signed by key {kid}, which is not a trusted key "
                                f"(trusted: {', '.join(trusted) or 'none'})")
    der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, seal, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError(f"{where}: signature by key {kid} does not match {SEAL} "
                                "(the bundle was changed or re-sealed after signing)") from None
    return kid


def trust_pems(trusted: dict[str, Any] | None) -> list[str]:
    """Trusted keys as PEM text (for a subprocess that must open the same bundle with the same keys)."""
    if not trusted:
        return []
    _, serialization, _, _ = _crypto()
    return [k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            for k in (trusted or {}).values()]


def trust_of_pems(pems: Sequence[str]) -> dict[str, Any] | None:
    """The inverse of trust_pems (None for no keys)."""
    if not pems:
        return None
    _, serialization, _, _ = _crypto()
    keys = [serialization.load_pem_public_key(p.encode()) for p in pems]
    return {key_id(_public_der(k)): k for k in keys} or None


def trust_from(paths: Sequence[str | os.PathLike] | None) -> dict[str, Any] | None:
    """What load_bundle's `trust` takes from --trust flags: None when none was given (no signature required)."""
    return trusted_keys(paths) if paths else None
