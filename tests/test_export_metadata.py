"""The target table and the metadata inside every model file: one tiny forecaster exported to ONNX, TFLite and CoreML
carries the same keys and values in all three (the target key naming its own format), the TFLite file with its
metadata still runs in LiteRT, and each bundle's seal covers the file as it carries the metadata. Also: settings
validated with one-line errors, process-wide state restored after an export, the TFLite cache keyed safely."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdmobile import __version__
from kdmobile.bundle import load_bundle
from kdmobile.errors import KDError
from kdmobile.export import metadata, opcheck
from kdmobile.export import tflite as tfl
from kdmobile.export.exporter import export_run
from kdmobile.export.options import ExportOptions
from kdmobile.export.options import Thresholds
from kdmobile.fileio import sha256_file
from kdmobile.models.registry import create_model, register_model, save_model
from kdmobile.rundir import write_method, write_metrics
from kdmobile.runtime import backends
from kdmobile.targets import PRECISIONS, TARGETS, resolve

T_IN, T_OUT, H, W = 3, 2, 8, 8


@register_model("test_metadata_forecaster")
class MetaForecaster(nn.Module):
    """(B, T_in, H, W) -> (B, T_out, H, W): two 3x3 convolutions plus the last input frame."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(T_IN, 96, 3, padding=1)  # > 2048 weights: CoreML int8 quantizes it
        self.b = nn.Conv2d(96, T_OUT, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) + x[:, -1:]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """One fake SDKD run exported to every target at fp32, and to TFLite at int8 as well."""
    pytest.importorskip("onnx")
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("coremltools")
    root = tmp_path_factory.mktemp("meta")
    run = root / "meta"
    write_method(run, "sdkd")
    torch.manual_seed(0)
    save_model(run / "student.safetensors", create_model("test_metadata_forecaster"), extra={
        "task": "forecast", "frames_in": T_IN, "frames_out": T_OUT, "height": H, "width": W, "mean": 0.0,
        "std": 1.0})
    x = np.random.default_rng(0).standard_normal((12, T_IN, H, W)).astype(np.float32)
    np.savez(run / "heldout.npz", x_test=x[:8], y_test=x[:8, -T_OUT:], x_calib=x[8:])
    write_metrics(run, {"task": "forecast"})
    fastpath, level = torch.backends.mha.get_fastpath_enabled(), logging.getLogger().level
    out = root / "bundles"
    report = export_run(run, ExportOptions(targets=list(TARGETS), precisions=["fp32", "int8"], out=out),
                        log=lambda s: None)
    assert not report.failed, [a.error for a in report.failed]
    # process-wide state is as it was: the MHA fast path (CoreML) and the root logger level (ONNX int8)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath and logging.getLogger().level == level
    return {f"{a.target}-{a.precision}": a.bundle for a in report.artifacts}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_format_carries_the_same_metadata(bundles, precision):
    found = {t: metadata.read_metadata(load_bundle(bundles[f"{t}-{precision}"]).model_path) for t in TARGETS}
    expected = {"kdmobile_version": __version__, "kdmobile_head": "forecast", "kdmobile_run": "meta",
                "kdmobile_precision": precision, "input_name": "frames", "output_name": "forecast"}
    for target, meta in found.items():
        assert sorted(meta) == sorted(metadata.METADATA_KEYS), (target, meta)
        assert meta == {**expected, "kdmobile_target": target}, target


def test_coreml_description_names_the_task(bundles):
    import coremltools as ct

    spec = ct.models.MLModel(str(load_bundle(bundles["coreml-fp32"]).model_path), skip_model_load=True).get_spec()
    assert spec.description.metadata.shortDescription == "kdmobile forecast (fp32)"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tflite_with_metadata_runs_and_is_sealed(bundles, precision):
    tfl_bundle = load_bundle(bundles[f"tflite-{precision}"])  # checks the seal and every file's sha256
    onnx_bundle = load_bundle(bundles[f"onnx-{precision}"])
    assert tfl_bundle.manifest["files"]["model.tflite"] == sha256_file(tfl_bundle.model_path)
    assert metadata.read_tflite(tfl_bundle.model_path)["kdmobile_precision"] == precision  # the sealed file
    x = np.random.default_rng(1).standard_normal((1, T_IN, H, W)).astype(np.float32)
    lite = backends.open_backend(tfl_bundle)
    assert isinstance(lite, backends.LiteRTBackend)
    y = lite.run({"frames": x})[0]
    ref = backends.open_backend(onnx_bundle).run({"frames": x})[0]
    cosine = float(y.ravel() @ ref.ravel() / (np.linalg.norm(y) * np.linalg.norm(ref)))
    assert y.shape == (1, T_OUT, H, W) and (np.max(np.abs(y - ref)) < 1e-4 if precision == "fp32" else cosine > 0.99)
    assert tfl_bundle.manifest["verification"]["status"] == "ok"


def test_embedding_replaces_and_reads_back(bundles, tmp_path):
    data = load_bundle(bundles["tflite-fp32"]).model_path.read_bytes()
    again = metadata.embed_tflite(data, {"kdmobile_run": "other", "extra": "é"})
    path = tmp_path / "m.tflite"
    path.write_bytes(again)
    assert metadata.read_metadata(path) == {"kdmobile_run": "other", "extra": "é"}  # replaced, not appended
    assert len(again) - len(data) < 200
    with pytest.raises(KDError, match="not a model file"):
        metadata.read_metadata(tmp_path / "m.bin")


def test_the_target_table_is_the_one_source():
    assert tuple(TARGETS) == ("onnx", "tflite", "coreml", "executorch") and PRECISIONS == ("fp32", "fp16", "int8")
    for name, t in TARGETS.items():  # each row carries its code: converter, metadata reader, runtime backend
        assert callable(resolve(t.converter)) and callable(resolve(t.metadata_reader))
        assert t.model_file.endswith(t.suffix) and isinstance(resolve(t.runtime), type)
        assert set(t.runtime_packages) <= set(backends.available_backends())
    assert opcheck.unsupported({"aten.sort"}, "tflite") == ["aten.sort"] and not opcheck.unsupported(
        {"aten.sort"}, "onnx")
    code = "import sys, kdmobile.targets, kdmobile.export.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # the table and the CLI need no torch


def test_settings_are_validated_when_built(tmp_path):
    with pytest.raises(KDError, match=r"^unknown target 'tpu' \(choose onnx, tflite, coreml, executorch or all\)$"):
        ExportOptions(targets=["tpu"])
    with pytest.raises(KDError, match="^--calibration-samples 0 with int8"):
        ExportOptions(precisions=["int8"], calibration_samples=0)
    with pytest.raises(KDError, match=r"^--threshold-mse must be >= 0"):
        Thresholds(mse=-0.1)
    with pytest.raises(KDError, match="^export setting calibration_samples: "):
        ExportOptions(calibration_samples="many")
    (tmp_path / "file").write_text("")
    with pytest.raises(KDError, match="exists and is not a directory"):
        ExportOptions(out=tmp_path / "file")
    opts = ExportOptions()
    assert opts.targets == ["onnx"] and opts.thresholds == Thresholds(top1=1.0, mse=0.05)


def test_tflite_cache_is_one_exports_and_keyed_by_the_weights(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(tfl, "_convert_float", lambda model, example: calls.append(1) or b"flatbuffer")
    x = torch.zeros(1, 2)
    a = nn.Linear(2, 2)
    cache: dict = {}
    assert tfl.convert_float(a, x, cache) == tfl.convert_float(a, x, cache) and len(calls) == 1  # reused
    with torch.no_grad():
        a.weight.add_(1.0)  # other weights: converted again
    tfl.convert_float(a, x, cache)
    assert len(calls) == 2
    tfl.convert_float(a, x)  # no cache given (another export): always converted
    assert len(calls) == 3
