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


# (what, settings argv built from tmp_path and the verb's KEY, a fragment of the one-line message)
CASES = [
    ("non-UTF-8 config", lambda t, k: ["--config", _write(t, b"x: \xff\xfe\n")], "not UTF-8"),
    ("config over the size limit", lambda t, k: ["--config", _write(t, b"#" * (MAX_CONFIG_BYTES + 1))],
     "refused unread"),
    ("config with a python tag", lambda t, k: ["--config", _write(t, b"x: !!python/object/apply:os.system [id]\n")],
     "not valid YAML"),
    ("config with aliases", lambda t, k: ["--config", _write(t, b"a: &x [1, 2]\nb: [*x, *x]\n")], "aliases"),
    ("deeply nested config", lambda t, k: ["--config", _write(t, b"x: " + b"[" * 5000 + b"]" * 5000)], "YAML"),
    ("config with an impossible date", lambda t, k: ["--config", _write(t, b"x: 2001-13-45\n")], "not valid YAML"),
    ("--set integer of 5000 digits", lambda t, k: ["--set", f"{k}=" + "9" * 5000], "--set {key}: not valid YAML"),
    ("config not a mapping", lambda t, k: ["--config", _write(t, b"- 1\n- 2\n")], "must be a YAML mapping"),
    ("--set value not YAML", lambda t, k: ["--set", f"{k}=[1"], "--set {key}: not valid YAML"),
    ("--set value with a tag", lambda t, k: ["--set", f"{k}=!!python/tuple [1]"], "--set {key}: not valid YAML"),
    ("--set value with an unknown tag", lambda t, k: ["--set", f"{k}=!foo 3"], "--set {key}: not valid YAML"),
    ("--set without =", lambda t, k: ["--set", k], "expected KEY=VALUE"),
    ("--set value too long", lambda t, k: ["--set", f"{k}=" + "x" * 70_000], "limit"),
]

# every verb that reads settings: (argv before the settings flags, argv after them, a setting it has); {out} is where
# it would write, {tmp} the test's folder
VERBS = {"train ammkd": (["train", "ammkd"], ["--out", "{out}", "--dry-run"], "seed"),
         "train sdkd": (["train", "sdkd"], ["--out", "{out}", "--dry-run"], "seed"),
         "export": (["export", "{tmp}/no-run"], ["--out", "{out}"], "calibration_samples"),
         "bench": (["bench", "{tmp}/no-run"], ["--out", "{out}", "--no-progress"], "runs")}


@pytest.mark.parametrize("verb", list(VERBS))
@pytest.mark.parametrize("what,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_settings_are_one_line(tmp_path: Path, capsys, verb, what, argv, fragment) -> None:
    out = tmp_path / "out"
    before, after, key = VERBS[verb]
    fill = lambda args: [a.format(out=out, tmp=tmp_path) for a in args]  # noqa: E731
    code = main([*fill(before), *argv(tmp_path, key), *fill(after)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("kdmobile: error:"), (what, err)
    assert fragment.format(key=key) in err[0], (what, err[0])
    assert not out.exists()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_set_value_loads_or_is_refused(value: str) -> None:
    try:
        load_config(AMMKDConfig, None, None, [f"name={value}", f"data.val_frac={value}"])
    except KDError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_any_config_file_loads_or_is_refused(tmp_path_factory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    path.write_bytes(raw)
    try:
        load_config(AMMKDConfig, str(path), None, None)
    except KDError as e:
        assert "\n" not in str(e)
