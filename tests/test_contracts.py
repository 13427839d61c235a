"""The typed contracts: the manifest schema shipped to the Android demo is current, the readers agree on the
schema version, and the held-out set and student card refuse what does not fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from kdmobile.bundle import SCHEMA_VERSION
from kdmobile.contracts.heldout import HeldOut, read_heldout, write_heldout
from kdmobile.contracts.manifest import check_fields, json_schema
from kdmobile.contracts.student import student_card
from kdmobile.errors import KDError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "android_demo" / "manifest.schema.json"


def test_shipped_schema_is_generated_from_the_model() -> None:
    shipped = json.loads(SCHEMA_FILE.read_text())
    assert shipped == json.loads(json.dumps(json_schema())), (
        "android_demo/manifest.schema.json is stale: regenerate it with "
        "`python -c \"from kdmobile.contracts.manifest import write_json_schema as w; "
        "w('android_demo/manifest.schema.json')\"`")
    both = {d["properties"]["head"]["const"] for d in shipped["$defs"].values() if "head" in d.get("properties", {})}
    assert both == {"retrieval", "forecast"}


def test_java_and_js_readers_read_this_schema_version() -> None:
    js = (ROOT / "android_demo/web/kdcore.js").read_text()
    java = (ROOT / "android_demo/core/src/main/java/org/kdmobile/core/BundleManifest.java").read_text()
    assert int(re.search(r"SCHEMA_VERSION = (\d+);", js).group(1)) == SCHEMA_VERSION
    assert int(re.search(r"int SCHEMA_VERSION = (\d+);", java).group(1)) == SCHEMA_VERSION


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(target="tensorrt"), "target='tensorrt' (expected one of onnx, tflite, coreml, executorch)"),
    (lambda m: m["input"].update(shape="1,3,8,8"), "input.shape should be list"),
    (lambda m: m["forecast"].update(std=True), "forecast.std should be a number"),
    (lambda m: m["forecast"].pop("frames_out"), "missing required fields: forecast.frames_out"),
])
def test_manifest_problems_are_one_line(change, message) -> None:
    m = {"schema_version": SCHEMA_VERSION, "head": "forecast", "task": "forecast", "target": "onnx", "precision": "fp32",
         "model_file": "model.onnx", "outputs": [{"name": "forecast", "shape": [1, 2, 8, 8]}],
         "files": {"model.onnx": "0" * 64},
         "input": {"name": "frames", "shape": [1, 2, 8, 8], "dtype": "float32", "layout": "NTHW",
                   "value_range": [-1, 1], "mean": [0.0], "std": [1.0]},
         "forecast": {"frames_in": 2, "frames_out": 2, "mean": 0.0, "std": 1.0}}
    check_fields(m)
    change(m)
    with pytest.raises(KDError) as e:
        check_fields(m)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_heldout_round_trip_and_refusals(tmp_path: Path) -> None:
    images = np.zeros((4, 8, 8, 3), np.uint8)
    held = HeldOut(images_test=images, labels_test=np.arange(4), images_calib=images[:2],
                   caption_owner_test=None)
    write_heldout(tmp_path, held)
    back = read_heldout(tmp_path)
    assert back.task == "classes" and np.array_equal(back.labels_test, np.arange(4))
    assert np.array_equal(back.calibration(), images[:2])
    np.savez(tmp_path / "heldout.npz", images_test=images, labels_test=np.arange(3))
    with pytest.raises(KDError, match="labels_test should be 4 integers in 0..99999"):
        read_heldout(tmp_path)
    np.savez(tmp_path / "heldout.npz", x_test=np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(KDError, match="y_test"):
        read_heldout(tmp_path)
    (tmp_path / "heldout.npz").unlink()
    with pytest.raises(KDError, match="heldout.npz missing"):
        read_heldout(tmp_path)


def test_student_card_defaults_and_refusals() -> None:
    card = student_card({"task": "classes", "image_size": 32}, "ammkd", "s.safetensors")
    assert card.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert student_card({"mean": 2.0, "std": 3.0}, "sdkd", "f").frame_std == 3.0
    with pytest.raises(KDError, match="an sdkd student should have task 'forecast'"):
        student_card({"task": "classes"}, "sdkd", "f")
    with pytest.raises(KDError, match="unknown task 'video'"):
        student_card({"task": "video"}, "ammkd", "f")
