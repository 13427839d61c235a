"""`kdmobile export`: every target x precision on a tiny real AMMKD run and a fake SDKD run, the manifest, checksums,
atomicity under interruption, bad flags, operator checks, --classes, --strict and --verify."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kdmobile.cli as kcli
from kdmobile.bundle import load_bundle, validate_manifest
from kdmobile.data.transforms import normalise
from kdmobile.errors import KDError
from kdmobile.export import cli as export_cli
from kdmobile.export import exporter as ex
from target_helpers import set_converter
from kdmobile.export.opcheck import traced_ops, unsupported
from kdmobile.models import load_model
from kdmobile.models.registry import create_model, register_model, save_model
from kdmobile.rundir import write_method, write_metrics
from kdmobile.runtime import RetrievalPredictor

from conftest import TINY_AMMKD

T_IN, T_OUT, FH, FW = 4, 2, 8, 8
F_MEAN, F_STD = 0.5, 2.0


def _ensure_export_verb() -> None:
    """Register `export` with the CLI unless the lead's one-liner in kdmobile/cli.py already does."""
    if export_cli.register in kcli._EXTRA_VERBS:
        return
    sub = next(a for a in kcli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "export" not in sub.choices:
        kcli._EXTRA_VERBS.append(export_cli.register)


_ensure_export_verb()


def main(args: list[str]) -> int:
    """kdmobile's CLI in-process; argparse's own errors (SystemExit) become their exit code too."""
    try:
        return kcli.main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)


# ------------------------------------------------------------------------------------------------ fixtures
@register_model("test_tiny_forecaster")
class TinyForecaster(nn.Module):
    """(B, T_in, H, W) -> (B, T_out, H, W): two 3x3 convolutions plus the last input frame."""

    def __init__(self, frames_in: int = T_IN, frames_out: int = T_OUT, hidden: int = 16) -> None:
        super().__init__()
        self.a = nn.Conv2d(frames_in, hidden, 3, padding=1)
        self.b = nn.Conv2d(hidden, frames_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) + x[:, -1:]


@register_model("test_fft_forecaster")
class FFTForecaster(nn.Module):
    """A forecaster that (wrongly) keeps an FFT in its forward pass: export must refuse it before converting."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(T_IN, T_OUT, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft2(x)
        return self.conv(torch.fft.irfft2(spec * 0.5, s=x.shape[-2:]))


def _fake_sdkd(root: Path, name: str, model_name: str = "test_tiny_forecaster") -> Path:
    """A run directory with the SDKD contract: method.json, student.safetensors (forecast extra) and heldout.npz."""
    run = root / name
    write_method(run, "sdkd")
    torch.manual_seed(0)
    model = create_model(model_name)
    save_model(run / "student.safetensors", model, extra={
        "task": "forecast", "frames_in": T_IN, "frames_out": T_OUT, "height": FH, "width": FW, "mean": F_MEAN,
        "std": F_STD})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, T_IN, FH, FW)).astype(np.float32)
    y = (x[:, -T_OUT:] * 0.9 + 0.1 * rng.standard_normal((24, T_OUT, FH, FW))).astype(np.float32)
    np.savez(run / "heldout.npz", x_test=x[:16], y_test=y[:16], x_calib=x[16:])
    write_metrics(run, {"task": "forecast"})
    return run


@pytest.fixture(scope="module")
def ammkd_run(tmp_path_factory) -> Path:
    """One tiny real AMMKD run per session (both teacher families, teachers as initialised, one student epoch:
    the export path does not care how well it was trained, and this keeps the file well under two minutes)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "ammkd", *TINY_AMMKD, "--teacher-epochs", "0", "--epochs", "1", "--out", root,
                 "--name", "tiny"]) == 0
    return root / "tiny"


@pytest.fixture(scope="module")
def sdkd_run(tmp_path_factory) -> Path:
    return _fake_sdkd(tmp_path_factory.mktemp("sdkd"), "fc")


@pytest.fixture(scope="module")
def onnx_bundles(ammkd_run, tmp_path_factory) -> dict[str, Path]:
    """ONNX fp32 / fp16 / int8 (auto) through the CLI, plus every explicit int8 format through the API."""
    out = tmp_path_factory.mktemp("bundles")
    assert main(["export", ammkd_run, "--target", "onnx", "--precision", "all", "--out", out]) == 0
    bundles = {p: out / f"tiny-onnx-{p}" for p in ("fp32", "fp16", "int8")}
    run = ex.load_run(ammkd_run)
    for fmt in ("s8s8", "u8s8", "dynamic", "w8a32"):
        opts = ex.ExportOptions(targets=["onnx"], precisions=["int8"], out=out / fmt, int8_format=fmt,
                                calibration_samples=32)
        art = ex.Exporter(run, opts, log=lambda s: None).export_one("onnx", "int8")
        bundles[fmt] = art.bundle
    return bundles


# ------------------------------------------------------------------------------------------------- ONNX
def test_onnx_precisions_and_int8_formats_match_the_student(ammkd_run, onnx_bundles):
    student, extra = load_model(ammkd_run / "student.safetensors")
    images = np.load(ammkd_run / "heldout.npz")["images_test"]
    with torch.no_grad():
        ref = student(torch.from_numpy(normalise(images, tuple(extra["mean"]), tuple(extra["std"])))).numpy()
    min_cos = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.999, "w8a32": 0.999, "s8s8": 0.98, "u8s8": 0.98,
               "dynamic": 0.98}
    sizes = {}
    for key, path in onnx_bundles.items():
        bundle = load_bundle(path)
        emb = RetrievalPredictor(bundle).embed(list(images))  # the phone-side code path, independently of verify
        cos = float(np.mean(np.sum(emb * ref, axis=1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)))
        assert cos >= min_cos[key], (key, cos)
        v = bundle.manifest["verification"]
        assert v["parity"]["mean_cosine"] >= min_cos[key] and v["metric"]["name"] == "top1"
        assert abs(v["parity"]["mean_cosine"] - cos) < 1e-4
        q = bundle.manifest["quantization"]
        if key in ("s8s8", "u8s8", "dynamic", "w8a32"):
            assert q["format"] == key and q["requested"] == key
        sizes[key] = bundle.model_path.stat().st_size
    auto = load_bundle(onnx_bundles["int8"]).manifest["quantization"]
    assert auto["requested"] == "auto" and "isa" in auto and auto["chosen_by"].startswith("measurement")
    cands = auto["candidates"]  # every candidate timed side by side; the kept one is the fastest close to fp32
    assert set(cands) == {"w8a32", "u8s8", "s8s8", "dynamic"} and auto["format"] in cands
    close = [f for f, c in cands.items() if c["mean_cosine_vs_fp32"] >= 0.99]
    assert auto["format"] == min(close, key=lambda f: cands[f]["p50_ms"])
    assert all(c["p50_ms"] > 0 and c["speedup_vs_fp32"] > 0 for c in cands.values()) and auto["fp32_p50_ms"] > 0
    shipped = load_bundle(onnx_bundles["int8"]).model_path.stat().st_size  # the kept candidate + kdmobile metadata
    assert 0 <= shipped - cands[auto["format"]]["size_bytes"] < 4096
    assert sizes["int8"] < sizes["fp32"] / 2.5 and sizes["fp16"] < sizes["fp32"] * 0.6
    import onnx

    for fmt in ("s8s8", "u8s8"):
        bundle = load_bundle(onnx_bundles[fmt])
        q = bundle.manifest["quantization"]
        assert q["calibration_samples"] == 32 and len(q["float_nodes"]) == 1  # the RGB stem stays fp32
        graph = onnx.load(str(bundle.model_path)).graph
        stem = next(n for n in graph.node if n.name == q["float_nodes"][0])
        assert stem.op_type == "Conv" and not any(n.op_type == "DequantizeLinear" and n.output[0] == stem.input[1]
                                                  for n in graph.node)  # its weight is a float initializer
        assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 4  # the rest is quantized
    # dynamic batch: one call for the whole held-out split
    import onnxruntime as ort

    shape = ort.InferenceSession(str(onnx_bundles["fp32"] / "model.onnx")).get_inputs()[0].shape
    assert not isinstance(shape[0], int)


def test_manifest_schema_and_class_vectors(ammkd_run, onnx_bundles, capsys):
    bundle = load_bundle(onnx_bundles["fp32"])
    m = bundle.manifest
    validate_manifest(m)
    assert m["head"] == "retrieval" and m["target"] == "onnx" and m["precision"] == "fp32"
    assert m["input"]["name"] == "image" and m["input"]["shape"] == [1, 3, 32, 32] and m["input"]["layout"] == "NCHW"
    assert m["outputs"][0]["name"] == "embedding"
    assert set(m["files"]) == {"model.onnx", "class_vectors.f32", "labels.json"}
    assert m["source"]["run_dir"] == str(ammkd_run.resolve()) and m["source"]["method"] == "ammkd"
    assert m["export"]["opset"] >= 17 and m["quantization"] == {"format": "none"}
    student, extra = load_model(ammkd_run / "student.safetensors")
    assert bundle.labels == extra["labels"]
    assert m["retrieval"]["prompt_templates"] == extra["templates"]
    assert abs(m["retrieval"]["logit_scale"] - float(student.scale().detach())) < 1e-5
    # the bundled vectors are the student's fusion of the teachers' class vectors, as stored by training
    np.testing.assert_allclose(bundle.class_vectors, np.load(ammkd_run / "student_class_vectors.npy"), atol=1e-5)
    v = m["verification"]
    assert {"parity", "metric", "flagged", "status", "samples", "thresholds"} <= set(v)
    assert v["status"] == "ok" and not v["flagged"] and v["preprocess_max_abs_diff"] < 1e-5
    assert abs(v["metric"]["delta"]) < 1e-9
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(bundle.model_path)).metadata_props}
    assert meta["kdmobile_head"] == "retrieval" and meta["kdmobile_precision"] == "fp32"


def test_a_changed_byte_is_refused_with_the_file_named(onnx_bundles, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(onnx_bundles["fp32"], copy)
    raw = bytearray((copy / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(raw))
    with pytest.raises(KDError, match="model.onnx"):
        load_bundle(copy)
    assert main(["export", "--verify", copy]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checksum mismatch for model.onnx" in err


def test_verify_reruns_against_the_run_or_random_inputs(onnx_bundles, ammkd_run, tmp_path, capsys):
    assert main(["export", "--verify", onnx_bundles["int8"], "--run", str(ammkd_run), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "pytorch" in out and "onnx" in out and "top1" in out
    copy = tmp_path / "moved"
    shutil.copytree(onnx_bundles["int8"], copy)
    assert main(["export", "--verify", copy]) == 0  # without --run: the bundle against itself only
    out = capsys.readouterr().out
    assert "random inputs" in out and "no --run DIR given" in out and "pytorch" not in out


# ----------------------------------------------------------------------------------------- TFLite / CoreML
@pytest.fixture(scope="module")
def other_bundles(ammkd_run, tmp_path_factory) -> tuple[Path, str]:
    """TFLite and CoreML in every precision, in one CLI call (one opcheck and one PyTorch reference)."""
    targets = ["tflite", "coreml"]
    out = tmp_path_factory.mktemp("other")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["export", ammkd_run, "--target", ",".join(targets), "--precision", "all", "--out", out,
                   "--calibration-samples", "16"])
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tflite_bundles(other_bundles, precision):
    out, _ = other_bundles
    path = out / f"tiny-tflite-{precision}"
    b = load_bundle(path)
    v = b.manifest["verification"]
    assert b.manifest["model_file"] == "model.tflite" and v["status"] == "ok", v
    assert v["parity"]["mean_cosine"] > (0.9999 if precision == "fp32" else 0.99)
    assert v["metric"]["name"] == "top1" and b.manifest["quantization"]["format"]
    if precision == "fp32":  # int8 pays in size whichever recipe auto's timing picks (static 2.2x, dynamic 2.5x
        # smaller on this tiny student; the two tie on speed here, so a loaded machine may pick either)
        assert b.model_path.stat().st_size > 2.0 * (out / "tiny-tflite-int8" / "model.tflite").stat().st_size


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_coreml_bundles_have_their_spec_validated(other_bundles, precision):
    out, table = other_bundles
    path = out / f"tiny-coreml-{precision}"
    b = load_bundle(path)
    v = b.manifest["verification"]
    assert b.model_path.is_dir() and b.model_path.name == "model.mlpackage"
    assert v["status"].startswith("spec ok") and not v["flagged"] and v["spec"]["inputs"][0][1] == [1, 3, 32, 32]
    assert b.manifest["coreml"]["validated"] is True and "macOS" in table


# ------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def classes_file(tmp_path):
    def make(text: str) -> Path:
        p = tmp_path / "classes.txt"
        p.write_text(text)
        return p
    return make


def test_bad_flag_combinations_are_one_line_exit_2(ammkd_run, sdkd_run, onnx_bundles, tmp_path, classes_file,
                                                   capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    not_run = tmp_path / "plain"
    not_run.mkdir()
    no_student = tmp_path / "nostudent"
    write_method(no_student, "ammkd")
    (no_student / "INCOMPLETE").unlink()  # a finished-looking run without its student
    unfinished = tmp_path / "unfinished"
    write_method(unfinished, "ammkd")
    good = classes_file("cat\ndog\n")
    cases = [
        (["export"], "give a run directory"),
        (["export", sdkd_run, "--classes", good], "--classes"),
        (["export", "--verify", onnx_bundles["fp32"], "--target", "onnx"], "--target"),
        (["export", ammkd_run, "--verify", onnx_bundles["fp32"]], "--verify"),
        (["export", ammkd_run, "--precision", "int8", "--calibration-samples", "0"], "calibration"),
        (["export", ammkd_run, "--target", "tpu"], "unknown target 'tpu'"),
        (["export", ammkd_run, "--precision", "int4"], "unknown precision 'int4'"),
        (["export", tmp_path / "missing"], "no such run directory"),
        (["export", not_run], "not a kdmobile run directory"),
        (["export", no_student], "student.safetensors missing"),
        (["export", unfinished], "training did not finish"),
        (["export", ammkd_run, "--threshold-top1", "-1"], "--threshold-top1"),
        (["export", ammkd_run, "--int8-format", "int3"], "--int8-format"),
        (["export", ammkd_run, "--classes", tmp_path / "nope.txt"], "no such file"),
        (["export", ammkd_run, "--classes", classes_file("\n \n")], "no class names"),
    ]
    for args, needle in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, (args, err)
    assert main(["export", ammkd_run, "--classes", classes_file("cat\ndog\ncat\n")]) == 2
    assert "duplicate class names: cat" in capsys.readouterr().err
    assert not (tmp_path / "bundles").exists()  # nothing above reached a converter


def test_opcheck_refuses_fft_before_converting(tmp_path, monkeypatch, capsys):
    run = _fake_sdkd(tmp_path, "fftrun", "test_fft_forecaster")
    called = []
    set_converter(monkeypatch, "onnx", lambda job: called.append(job))
    assert main(["export", run, "--target", "onnx,tflite", "--out", tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model uses operators onnx cannot take: aten._fft_c2r, aten._fft_r2c" in err
    assert "tflite cannot take" in err and not called


def test_opcheck_deny_lists():
    ops = traced_ops(TinyForecaster().eval(), torch.zeros(1, T_IN, FH, FW))
    assert "aten.convolution" in ops and all(not unsupported(ops, t) for t in ("onnx", "tflite", "coreml"))
    assert unsupported({"aten.sort", "aten.add"}, "tflite") == ["aten.sort"]
    assert unsupported({"aten.sort"}, "onnx") == []
    assert unsupported({"aten.view_as_complex"}, "coreml") == ["aten.view_as_complex"]


# ------------------------------------------------------------------------------------------- new classes
class _FixedEmbedding:
    """A backend stub that returns one chosen embedding for every image (to probe the runtime's scoring)."""

    input_names = ["image"]

    def __init__(self, emb: np.ndarray, size: int) -> None:
        self.emb = emb.astype(np.float32)
        self.input_shapes = {"image": (None, 3, size, size)}

    def run(self, inputs):
        n = len(next(iter(inputs.values())))
        return [np.repeat(self.emb[None], n, axis=0)]


def test_new_classes_come_from_the_teachers_text_encoders(ammkd_run, tmp_path, classes_file, capsys):
    from kdmobile.models.clip_teacher import load_teacher

    names = ["cat", "sailing boat", "tree"]
    assert main(["export", ammkd_run, "--classes", classes_file("\n".join(names) + "\n"), "--out", tmp_path]) == 0
    assert "n/a (new classes)" in capsys.readouterr().out
    b = load_bundle(tmp_path / "tiny-onnx-fp32")
    student, extra = load_model(ammkd_run / "student.safetensors")
    with torch.no_grad():
        per_teacher = [load_teacher(ammkd_run / "teachers" / f"{t}.safetensors").class_vectors(names, extra["templates"])
                       for t in extra["teachers"]]
        expected = student.fuse_text(per_teacher).numpy()
    assert b.labels == names and b.class_vectors.shape == expected.shape
    np.testing.assert_allclose(b.class_vectors, expected, atol=1e-5)
    v = b.manifest["verification"]
    assert v["metric"]["name"] is None and "new classes" in v["metric"]["note"]
    assert v["parity"]["mean_cosine"] > 0.9999 and v["status"].startswith("ok (parity only")
    assert b.manifest["retrieval"]["class_source"] == "classes file classes.txt"
    # a query embedding equal to a class's vector ranks that class first through the runtime's scoring
    image = np.zeros((32, 32, 3), np.uint8)
    for i, name in enumerate(names):
        pred = RetrievalPredictor(b, backend=_FixedEmbedding(b.class_vectors[i], 32))
        assert pred.topk([image], k=1)[0][0][0] == name


def test_caption_run_bundles_the_caption_gallery_and_gates_on_recall(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    images = np.repeat((digits.images[:120, :, :, None] / 16 * 255).astype(np.uint8), 3, axis=3)
    captions = [[f"a handwritten {names[t]}", f"the digit {names[t]}"] for t in digits.target[:120]]
    np.savez(tmp_path / "caps.npz", images=images, captions=np.array(json.dumps(captions)))
    assert main(["train", "ammkd", *TINY_AMMKD, "--teacher-epochs", "0", "--epochs", "1", "--image-size", "16",
                 "--data", f"captions:{tmp_path / 'caps.npz'}", "--out", tmp_path, "--name", "caps"]) == 0
    assert main(["export", tmp_path / "caps", "--out", tmp_path / "b"]) == 0
    b = load_bundle(tmp_path / "b" / "caps-onnx-fp32")
    held = np.load(tmp_path / "caps" / "heldout.npz")
    assert b.manifest["task"] == "captions" and b.labels == [str(c) for c in held["captions_test"]]
    v = b.manifest["verification"]
    assert v["metric"]["name"] == "R@1" and "t2i_R@5" in v["metric"]["all"] and v["status"] == "ok"
