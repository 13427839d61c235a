"""Settings from files and --set: every bad input is one `kdmobile:` line with exit 2 and writes nothing (a table of
cases), and any --set text either loads or is refused as a KDError (property test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdmobile.cli import main
from kdmobile.config import MAX_CONFIG_BYTES, AMMKDConfig, load_config
from kdmobile.errors import KDError


def _write(tmp_path: Path, data: bytes) -> str:
    p = tmp_path / "cfg.yaml"
    p.write_bytes(data)
    return str(p)


# (what, argv after `train ammkd` built from tmp_path, a fragment of the one-line message)
CASES = [
    ("non-UTF-8 config", lambda t: ["--config", _write(t, b"seed: \xff\xfe\n")], "not UTF-8"),
    ("config over the size limit", lambda t: ["--config", _write(t, b"#" * (MAX_CONFIG_BYTES + 1))], "refused unread"),
    ("config with a python tag", lambda t: ["--config", _write(t, b"seed: !!python/object/apply:os.system [id]\n")],
     "not valid YAML"),
    ("config with aliases", lambda t: ["--config", _write(t, b"a: &x [1, 2]\nb: [*x, *x]\n")], "aliases"),
    ("deeply nested config", lambda t: ["--config", _write(t, b"seed: " + b"[" * 5000 + b"]" * 5000)], "YAML"),
    ("config not a mapping", lambda t: ["--config", _write(t, b"- 1\n- 2\n")], "must be a YAML mapping"),
    ("--set value not YAML", lambda t: ["--set", "seed=[1"], "--set seed: not valid YAML"),
    ("--set value with a tag", lambda t: ["--set", "seed=!!python/tuple [1]"], "--set seed: not valid YAML"),
    ("--set value with an unknown tag", lambda t: ["--set", "seed=!foo 3"], "--set seed: not valid YAML"),
    ("--set without =", lambda t: ["--set", "seed"], "expected KEY=VALUE"),
    ("--set value too long", lambda t: ["--set", "name=" + "x" * 70_000], "limit"),
]


@pytest.mark.parametrize("what,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_settings_are_one_line(tmp_path: Path, capsys, what, argv, fragment) -> None:
    out = tmp_path / "runs"
    code = main(["train", "ammkd", *argv(tmp_path), "--out", str(out), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("kdmobile: error:"), (what, err)
    assert fragment in err[0], (what, err[0])
    assert not out.exists()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_set_value_loads_or_is_refused(value: str) -> None:
    try:
        load_config(AMMKDConfig, None, None, [f"name={value}", f"data.val_frac={value}"])
    except KDError as e:
        assert "\n" not in str(e)
