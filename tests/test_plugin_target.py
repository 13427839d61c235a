"""A new target is one `register_target(Target(...))` (issue 22, "add a target"): registered here, outside the
package, it is exported, verified, predicted with and benched through the CLI with no change under kdmobile/."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from kdmobile import targets
from kdmobile.targets import TARGETS, Target, register_target
from untrusted_helpers import T_IN, fake_forecast_run, main


def toy_converter(job):
    """The toy target's converter: ONNX under another name (what a real plugin would do with its own tool)."""
    from kdmobile.export.jobs import onnx_job

    info = onnx_job(job)
    return {**info, "toy": {"converted_by": "tests/test_plugin_target.py"}}  # a section named after the target


@pytest.fixture()
def toy() -> Iterator[Target]:
    row = dataclasses.replace(TARGETS["onnx"], name="toy", model_file="model.toyx", backend="toy-runtime",
                              converter=toy_converter, metadata="as ONNX")
    register_target(row)
    yield row
    targets._REGISTRY.pop("toy")  # other tests see the built-in four again


def test_a_registered_target_goes_through_export_predict_and_bench(toy, tmp_path: Path, capsys) -> None:
    assert "toy" in targets.target_names()
    run = fake_forecast_run(tmp_path)
    assert main(["export", run, "--target", "toy", "--out", tmp_path / "bundles"]) == 0
    bundle = tmp_path / "bundles" / "fc-toy-fp32"
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["target"] == "toy" and m["model_file"] == "model.toyx" and (bundle / "model.toyx").is_file()
    assert m["toy"] == {"converted_by": "tests/test_plugin_target.py"}
    assert m["verification"]["status"] == "ok", m["verification"]
    window = tmp_path / "w.npy"
    np.save(window, np.zeros((T_IN, 8, 8), np.float32))
    assert main(["predict", bundle, window, "--out", tmp_path / "f.npy"]) == 0
    assert np.load(tmp_path / "f.npy").shape[1:] == (8, 8)
    assert main(["export", "--verify", bundle]) == 0
    capsys.readouterr()
    assert main(["bench", bundle, "--no-teachers", "--runs", "3", "--warmup", "1", "--out", tmp_path / "bench",
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert any(r.get("backend") == "toy-runtime" for r in report["rows"]), report["rows"]
