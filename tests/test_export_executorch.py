"""ExecuTorch as a target end to end: a tiny AMMKD run exported to .pte (fp32, int8 through the XNNPACK quantizer),
verified by executorch.runtime against the PyTorch student, carrying kdmobile's metadata, run by `kdmobile predict`
and `kdmobile bench`; a truncated .pte refused by the seal and by the runtime, fp16 refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.runtime")
pytest.importorskip("torchao")

import kdmobile.cli as kcli  # noqa: E402
from kdmobile import __version__  # noqa: E402
from kdmobile.bundle import load_bundle  # noqa: E402
from kdmobile.errors import KDError, ToolError, UserError, VerificationError  # noqa: E402
from kdmobile.export import jobs, metadata, opcheck  # noqa: E402
from kdmobile.export.executorch import convert_executorch  # noqa: E402
from kdmobile.export.exporter import verify_existing  # noqa: E402
from kdmobile.export.options import Thresholds  # noqa: E402
from kdmobile.runtime import backends  # noqa: E402
from kdmobile.targets import TARGETS, resolve  # noqa: E402

from conftest import TINY_AMMKD  # noqa: E402


def main(args: list) -> int:
    """kdmobile's CLI in-process; argparse's own errors (SystemExit) become their exit code too."""
    try:
        return kcli.main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """One tiny AMMKD run (teachers as initialised, one student epoch) exported to executorch fp32 and int8."""
    root = tmp_path_factory.mktemp("et")
    assert main(["train", "ammkd", *TINY_AMMKD, "--teacher-epochs", "0", "--epochs", "1", "--out", root,
                 "--name", "tiny"]) == 0
    out = root / "bundles"
    assert main(["export", root / "tiny", "--target", "executorch", "--precision", "fp32,int8", "--out", out]) == 0
    return {"run": root / "tiny", **{p: out / f"tiny-executorch-{p}" for p in ("fp32", "int8")}}


def test_the_table_wires_executorch():
    t = TARGETS["executorch"]
    assert t.model_file == "model.pte" and t.suffix == ".pte" and t.precisions == ("fp32", "int8")
    assert resolve(t.converter) is jobs.executorch_job and t.deny_ops
    assert opcheck.unsupported({"aten.sort", "aten.kthvalue", "aten.topk"}, "executorch") == ["aten.kthvalue",
                                                                                            "aten.sort"]
    assert resolve(t.runtime) is backends.ExecuTorchBackend and "executorch" in backends.available_backends()
    code = "import sys, kdmobile.runtime.backends, kdmobile.export.metadata; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # the runtime still imports without torch


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bundle_verifies_against_the_student(exported, precision):
    b = load_bundle(exported[precision])  # the seal and every checksum
    m = b.manifest
    assert (b.target, b.precision, m["model_file"]) == ("executorch", precision, "model.pte")
    assert b.model_path == exported[precision] / TARGETS["executorch"].model_file
    assert m["export"]["versions"]["executorch"] == "1.5.1" and m["export"]["xnnpack_partitions"] >= 1
    v = m["verification"]
    par = v["parity"]
    assert v["metric"]["name"] == "top1" and v["samples"] == 40
    if precision == "fp32":
        assert m["quantization"]["format"] == "none"
        assert par["min_cosine"] > 0.99999 and par["max_abs_diff"] < 1e-4 and v["status"] == "ok", v
        assert v["metric"]["delta"] == 0
    else:
        assert m["quantization"]["format"] == "s8s8" and m["export"]["calibration_inputs"] > 0
        assert par["mean_cosine"] > 0.99, par  # int8 activations: close, not equal
        assert (v["status"] == "ok") != v["flagged"] and (v["flagged"] or abs(v["metric"]["delta"]) <= 1.0), v
        assert b.model_path.stat().st_size < 0.5 * (exported["fp32"] / "model.pte").stat().st_size


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_metadata_rides_in_the_pte(exported, precision):
    path = load_bundle(exported[precision]).model_path
    assert metadata.read_metadata(path) == {
        "kdmobile_version": __version__, "kdmobile_head": "retrieval", "kdmobile_run": "tiny",
        "kdmobile_target": "executorch", "kdmobile_precision": precision, "input_name": "image",
        "output_name": "embedding"}
    backend = backends.ExecuTorchBackend(path)
    assert backend.input_names == ["image"] and backend.input_shapes == {"image": (1, 3, 32, 32)}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (y,) = backend.run({"image": x})
    assert y.shape == (1, 16) and y.dtype == np.float32 and np.isclose(np.linalg.norm(y), 1.0, atol=1e-2)


def test_verify_again_from_the_run(exported):
    report = verify_existing(exported["fp32"], Thresholds(), run_dir=exported["run"])
    (art,) = report.artifacts
    assert art.verification["status"] == "ok" and art.verification["parity"]["min_cosine"] > 0.99999


def test_predict_and_bench_run_it(exported, tmp_path, capsys):
    from PIL import Image

    images = np.load(exported["run"] / "heldout.npz")["images_test"]
    png = tmp_path / "x.png"
    Image.fromarray(images[0]).save(png)
    capsys.readouterr()
    assert main(["predict", exported["int8"], png, "--top-k", "3", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    probs = [t["probability"] for t in result["top_k"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    out = tmp_path / "bench"
    assert main(["bench", exported["fp32"], exported["int8"], "--runs", "5", "--warmup", "1", "--no-teachers",
                 "--no-progress", "--out", out]) == 0
    rows = [r for r in json.loads((out / "report.json").read_text())["rows"] if r["batch"] == 1]
    assert {r["source"] for r in rows} == {str(exported["fp32"]), str(exported["int8"])}
    for r in rows:
        assert r["status"] == "ok" and r["backend"] == "executorch" and r["n_runs"] == 5 and r["p50_ms"] > 0, r
        assert r["metric"] is not None
    print({r["precision"]: round(r["p50_ms"], 4) for r in rows})  # shown with -s


def test_truncated_pte_is_refused(exported, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported["fp32"], bad)
    pte = bad / "model.pte"
    pte.write_bytes(pte.read_bytes()[: pte.stat().st_size // 2])
    with pytest.raises(VerificationError, match="model.pte"):
        load_bundle(bad)  # the seal sees it first
    with pytest.raises(UserError, match=r"^.*model\.pte: ExecuTorch cannot load the model \(") as e:
        backends.ExecuTorchBackend(pte)  # and the runtime itself, when handed the file directly
    assert "\n" not in str(e.value)


class _DataDependent(torch.nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_converter_failures_are_one_line(tmp_path):
    with pytest.raises(ToolError, match=r"^executorch fp32 conversion failed: \S") as e:
        convert_executorch(_DataDependent(), torch.zeros(1, 3, 8, 8), tmp_path / "m.pte", "fp32", None)
    assert "\n" not in str(e.value)
    with pytest.raises(KDError, match=r"^executorch: precision 'fp16' is not offered \(choose fp32, int8\)"):
        convert_executorch(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8), tmp_path / "m.pte", "fp16", None)
    with pytest.raises(KDError, match="int8 needs calibration data"):
        convert_executorch(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8), tmp_path / "m.pte", "int8", None)
    assert not (tmp_path / "m.pte").exists()
