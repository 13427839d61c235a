"""Signed bundles (issue 21 class 6): `kdmobile keygen`, `export --sign KEY`, `--trust PUBKEY` on predict, bench and
export --verify. A signed bundle runs with its key trusted; one re-sealed after signing, signed by another key or not
signed at all is refused in one line once a trust key is given; unsigned bundles keep working without --trust."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kdmobile.bundle import load_bundle
from kdmobile.errors import KDError
from kdmobile.signing import trusted_keys
from untrusted_helpers import T_IN, fake_forecast_run, main, one_line_err, reseal


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("signed")
    assert main(["keygen", root / "team"]) == 0
    assert main(["keygen", root / "other"]) == 0
    run = fake_forecast_run(root)
    assert main(["export", run, "--out", root / "bundles", "--sign", root / "team.key"]) == 0
    assert main(["export", run, "--out", root / "plain"]) == 0
    window = root / "window.npy"
    np.save(window, np.zeros((T_IN, 8, 8), np.float32))
    return {"root": root, "bundle": root / "bundles" / "fc-onnx-fp32", "plain": root / "plain" / "fc-onnx-fp32",
            "window": window, "team": root / "team.pub", "other": root / "other.pub", "key": root / "team.key",
            "other_key": root / "other.key"}


def _verbs(bundle: Path, s: dict[str, Path], tmp: Path, trust: Path) -> list[list]:
    return [["predict", bundle, s["window"], "--out", tmp / "f.npy", "--trust", trust],
            ["export", "--verify", bundle, "--trust", trust],
            ["bench", bundle, "--no-teachers", "--runs", "2", "--warmup", "1", "--out", tmp / "bench",
             "--no-progress", "--trust", trust]]


def test_keys_are_private_and_never_overwritten(signed, capsys) -> None:
    assert signed["key"].stat().st_mode & 0o777 == 0o600
    before = signed["key"].read_bytes()
    assert main(["keygen", signed["root"] / "team"]) == 2
    assert "already exists" in one_line_err(capsys)
    assert signed["key"].read_bytes() == before


def test_signed_bundle_runs_with_its_key_trusted(signed, tmp_path, capsys) -> None:
    sig = json.loads((signed["bundle"] / "bundle.sig").read_text())
    assert sig["algorithm"] == "ECDSA-P256-SHA256" and sig["signs"] == "bundle.sha256"
    for argv in _verbs(signed["bundle"], signed, tmp_path, signed["team"]):
        assert main(argv) == 0, argv
    assert main(["predict", signed["bundle"], signed["window"], "--out", tmp_path / "g.npy"]) == 0  # no --trust
    assert main(["predict", signed["plain"], signed["window"], "--out", tmp_path / "h.npy"]) == 0  # unsigned


@pytest.mark.parametrize("case,fragment", [
    ("resealed", "does not match bundle.sha256"),
    ("other-key", "which is not a trusted key"),
    ("unsigned", "not signed (bundle.sig missing)"),
    ("garbled", "bundle.sig is malformed"),
])
def test_untrusted_bundles_are_refused_everywhere(signed, tmp_path, capsys, case, fragment) -> None:
    b = shutil.copytree(signed["plain" if case == "unsigned" else "bundle"], tmp_path / "b")
    if case == "resealed":  # edited and re-sealed by someone without the key: the old signature no longer matches
        m = json.loads((b / "manifest.json").read_text())
        m["forecast"]["std"] *= 2
        (b / "manifest.json").write_text(json.dumps(m))
        reseal(b)
    elif case == "other-key":  # re-signed by someone else's key
        from kdmobile.signing import sign_seal

        (b / "bundle.sig").write_bytes(sign_seal((b / "bundle.sha256").read_bytes(), signed["other_key"]))
    elif case == "garbled":
        doc = json.loads((b / "bundle.sig").read_text())
        doc["signature"] = doc["signature"][:-8]
        (b / "bundle.sig").write_text(json.dumps(doc))
    for argv in _verbs(b, signed, tmp_path, signed["team"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert fragment in one_line_err(capsys), argv
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "bench").exists()
    with pytest.raises(KDError, match=fragment.split("(")[0]):
        load_bundle(b, trusted_keys([signed["team"]]))


def test_signing_flags_are_checked_before_work(signed, tmp_path, capsys) -> None:
    (tmp_path / "bad.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    run = signed["root"] / "fc"
    cases = [(["export", run, "--out", tmp_path / "o", "--sign", tmp_path / "none.key"], "no such private key"),
             (["export", run, "--out", tmp_path / "o", "--sign", tmp_path / "bad.key"], "not a PEM private key"),
             (["export", run, "--out", tmp_path / "o", "--sign", signed["team"]], "not a PEM private key"),
             (["export", run, "--out", tmp_path / "o", "--trust", signed["team"]], "use it with --verify"),
             (["export", "--verify", signed["bundle"], "--sign", signed["key"]], "takes no --sign"),
             (["predict", signed["bundle"], signed["window"], "--trust", signed["key"]], "not a PEM public key")]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        assert fragment in one_line_err(capsys), argv
    assert not (tmp_path / "o").exists()


def test_export_says_which_stale_staging_it_removed(signed, tmp_path, capsys) -> None:
    """kill -9 during an export leaves .NAME.work.PID.* (issue 21 class 5): the next export removes it and says so."""
    out = tmp_path / "bundles"
    stale = out / ".fc-onnx-fp32.work.999999999.abcd"
    (stale / "inner").mkdir(parents=True)
    assert main(["export", signed["root"] / "fc", "--out", out]) == 0
    assert not stale.exists()
    assert f"removed {stale.name}: staging left in {out} by an export that was killed" in capsys.readouterr().out


def test_keygen_needs_a_file_name(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for prefix in (".", "..", str(tmp_path) + "/"):
        assert main(["keygen", prefix]) == 2
        assert "give a file name prefix" in one_line_err(capsys)
    assert list(tmp_path.iterdir()) == []
