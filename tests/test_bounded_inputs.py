"""Sizes a user controls are checked against stated limits before anything is allocated or written (issue 21 class 1)
and outputs never replace an input (class 3): each case ends in one `kdmobile:` line, exit 2, quickly, with no new
files. The cases are data: (argv with {out}/{bundle}/{input} placeholders, message fragment)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pytest

from untrusted_helpers import T_IN, fake_forecast_run, main, one_line_err

NS = ["data", "navier-stokes", "--out", "{out}/ns.npz", "--no-progress"]
CASES = [
    ([*NS, "--n", "1000000000"], "GiB"),
    ([*NS, "--t-final", "1e9"], "over the limit"),
    ([*NS, "--t-final", "1e9", "--record-every", "1e8"], "solver steps"),
    ([*NS, "--res", "100000"], "--res: 100000 is over the limit"),
    ([*NS, "--threads", "100000"], "--threads: 100000 is over the limit"),
    ([*NS, "--res", "2048", "--batch-size", "100000", "--n", "100000"], "GiB"),
    (["predict", "{bundle}", "{input}", "--threads", "100000"], "--threads must be between 1 and"),
    (["predict", "{bundle}", "{input}", "--steps", "100000000"], "--steps must be between 1 and"),
    (["predict", "{bundle}", "{input}", "--out", "{input}"], "that is an input of this command"),
    (["train", "ammkd", "--image-size", "100000", "--out", "{out}/runs", "--dry-run"], "less than or equal to 4096"),
    (["train", "ammkd", "--image-size", "4096", "--out", "{out}/runs", "--dry-run"], "refused before allocating"),
    (["train", "ammkd", "--batch-size", "100000000", "--out", "{out}/runs"], "less than or equal to 65536"),
    (["train", "ammkd", "--set", "embed_dim=10000000", "--out", "{out}/runs"], "less than or equal to 65536"),
    (["train", "ammkd", "--epochs", "1000000000", "--out", "{out}/runs"], "less than or equal to 100000"),
    (["train", "sdkd", "--set", "data.res=100000", "--out", "{out}/runs"], "less than or equal to 4096"),
    (["train", "sdkd", "--set", "data.frames_in=1000000", "--out", "{out}/runs"], "less than or equal to 10000"),
    (["bench", "{bundle}", "--threads", "100000", "--out", "{out}/b"], "--threads must be between 1 and 256"),
    (["bench", "{bundle}", "--batch", "100000", "--out", "{out}/b"], "each between 1 and 4096"),
    (["bench", "{bundle}", "--runs", "1000000000", "--out", "{out}/b"], "--runs must be between 1 and"),
]


@pytest.fixture(scope="module")
def forecast(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bounded")
    run = fake_forecast_run(root)
    assert main(["export", run, "--out", root / "bundles"]) == 0
    window = root / "window.npy"
    np.save(window, np.zeros((T_IN, 8, 8), np.float32))
    return {"bundle": root / "bundles" / "fc-onnx-fp32", "input": window}


@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(a for a in c[0] if "{" not in a and a not in NS) for c in CASES])
def test_oversized_request_is_refused_before_allocating(tmp_path: Path, capsys, forecast, argv, fragment) -> None:
    out = tmp_path / "out"
    out.mkdir()
    before = {p: p.stat().st_mtime_ns for p in (forecast["input"],)}
    args = [a.format(out=out, bundle=forecast["bundle"], input=forecast["input"]) for a in argv]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - started < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak < 2 << 30
    assert fragment in one_line_err(capsys)
    assert list(out.iterdir()) == []  # no OUT.parts/, no partial file
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the input was not replaced
