"""The torch-free runtime: predictors against torch, backends, latency/memory measurement, no torch import."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdmobile.bundle import load_bundle, write_bundle, write_class_vectors
from kdmobile.errors import KDError
from kdmobile.runtime import (ForecastPredictor, RetrievalPredictor, available_backends, host_info,
                              latency_stats, load_bundle as runtime_load_bundle, open_backend)
from kdmobile.runtime.backends import LiteRTBackend, OnnxBackend, TorchBackend
from kdmobile.runtime.measure import measure_peak_rss, time_callable
from kdmobile.runtime.predictors import load_image

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "bird"]
MEAN, STD = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
H = W = 16
T_IN, T_OUT, FH, FW = 4, 3, 8, 8
F_MEAN, F_STD = 0.5, 2.0


class TinyEncoder(torch.nn.Module):
    """conv + pool + linear + L2-normalise: a stand-in image encoder (D=8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.fc(self.conv(x).relu().mean((2, 3))), dim=-1)


class TinyForecaster(torch.nn.Module):
    """(N, T_in, H, W) -> (N, T_out, H, W) with two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(T_IN, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, T_OUT, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) + x[:, -1:]


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, inp: str, out: str, dynamic: bool) -> None:
    axes = {inp: {0: "batch"}, out: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[inp], output_names=[out],
                          dynamic_axes=axes)


def _class_vectors() -> np.ndarray:
    v = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _retrieval_manifest(target: str = "onnx", model_file: str = "model.onnx") -> dict:
    return {
        "head": "retrieval", "task": "classes", "target": target, "precision": "fp32", "model_file": model_file,
        "input": {"name": "image", "shape": [1, 3, H, W], "dtype": "float32", "layout": "NCHW",
                  "value_range": [0, 255], "mean": MEAN, "std": STD},
        "outputs": [{"name": "embedding", "shape": [1, 8]}],
        "retrieval": {"class_vectors": {"file": "class_vectors.f32", "shape": [3, 8], "dtype": "float32",
                                        "byte_order": "little"},
                      "logit_scale": 20.0, "labels_file": "labels.json", "prompt_templates": ["a photo of a {}."]},
    }


def _retrieval_files(model_src) -> dict:
    return {"class_vectors.f32": lambda p: write_class_vectors(p, _class_vectors()),
            "labels.json": json.dumps(LABELS).encode(), **model_src}


@pytest.fixture(scope="module")
def encoder() -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder().eval()


@pytest.fixture(scope="module")
def forecaster() -> TinyForecaster:
    torch.manual_seed(0)
    return TinyForecaster().eval()


@pytest.fixture(scope="module")
def retrieval_bundle(tmp_path_factory, encoder) -> Path:
    d = tmp_path_factory.mktemp("retrieval")
    writer = lambda p: _export(encoder, torch.randn(1, 3, H, W), p, "image", "embedding", dynamic=True)  # noqa: E731
    return write_bundle(d / "enc-onnx-fp32", _retrieval_manifest(), _retrieval_files({"model.onnx": writer}))


@pytest.fixture(scope="module")
def retrieval_bundle_static(tmp_path_factory, encoder) -> Path:
    d = tmp_path_factory.mktemp("retrieval_static")
    writer = lambda p: _export(encoder, torch.randn(1, 3, H, W), p, "image", "embedding", dynamic=False)  # noqa: E731
    return write_bundle(d / "enc-static", _retrieval_manifest(), _retrieval_files({"model.onnx": writer}))


@pytest.fixture(scope="module")
def forecast_bundle(tmp_path_factory, forecaster) -> Path:
    d = tmp_path_factory.mktemp("forecast")
    manifest = {
        "head": "forecast", "task": "forecast", "target": "onnx", "precision": "fp32", "model_file": "model.onnx",
        "input": {"name": "frames", "shape": [1, T_IN, FH, FW], "dtype": "float32", "layout": "NTHW",
                  "value_range": [-10.0, 10.0], "mean": [F_MEAN], "std": [F_STD]},
        "outputs": [{"name": "forecast", "shape": [1, T_OUT, FH, FW]}],
        "forecast": {"frames_in": T_IN, "frames_out": T_OUT, "mean": F_MEAN, "std": F_STD},
    }
    writer = lambda p: _export(forecaster, torch.randn(1, T_IN, FH, FW), p, "frames", "forecast", False)  # noqa: E731
    return write_bundle(d / "fc-onnx-fp32", manifest, {"model.onnx": writer})


def _random_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8) for i in range(n)]


def _torch_scores(encoder: TinyEncoder, images: list[np.ndarray]) -> np.ndarray:
    """Reference: Pillow bilinear resize, /255, per-channel normalise, torch model, scaled cosine."""
    x = np.stack([np.asarray(Image.fromarray(im).resize((W, H), Image.BILINEAR), np.float32) for im in images])
    x = (torch.from_numpy(x).permute(0, 3, 1, 2) / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None]
    with torch.no_grad():
        emb = encoder(x.float()).numpy()
    return 20.0 * emb @ _class_vectors().T


def test_retrieval_topk_matches_torch(retrieval_bundle: Path, encoder: TinyEncoder) -> None:
    images = _random_images(6)
    pred = RetrievalPredictor(runtime_load_bundle(retrieval_bundle))
    assert pred.batched
    ref = _torch_scores(encoder, images)
    np.testing.assert_allclose(pred.scores(images), ref, atol=1e-4)
    top = pred.topk(images, k=2)
    ref_order = np.argsort(-ref, axis=1)[:, :2]
    assert [[label for label, _ in row] for row in top] == [[LABELS[j] for j in row] for row in ref_order]
    ref_p = np.exp(ref - ref.max(1, keepdims=True))
    ref_p /= ref_p.sum(1, keepdims=True)
    np.testing.assert_allclose([row[0][1] for row in top], ref_p.max(1), atol=1e-4)
    assert len(pred.topk(images[:1], k=10)[0]) == 3  # k clipped to the number of classes
    emb = pred.embed(images)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_retrieval_static_batch_loops(retrieval_bundle: Path, retrieval_bundle_static: Path) -> None:
    images = _random_images(3, seed=5)
    static = RetrievalPredictor(load_bundle(retrieval_bundle_static))
    assert not static.batched
    np.testing.assert_allclose(static.embed(images), RetrievalPredictor(load_bundle(retrieval_bundle)).embed(images),
                               atol=1e-6)
    pil = [Image.fromarray(im) for im in images]
    np.testing.assert_allclose(static.embed(pil), static.embed(images), atol=1e-6)


def test_torch_backend_plugs_into_predictor(retrieval_bundle: Path, encoder: TinyEncoder) -> None:
    bundle = load_bundle(retrieval_bundle)
    images = _random_images(4, seed=6)
    eager = RetrievalPredictor(bundle, backend=TorchBackend(encoder, ["image"]))
    np.testing.assert_allclose(eager.scores(images), RetrievalPredictor(bundle).scores(images), atol=1e-4)


def test_text_to_image_ranking(retrieval_bundle: Path) -> None:
    pred = RetrievalPredictor(load_bundle(retrieval_bundle))
    gallery = pred.embed(_random_images(5, seed=2))
    ranked = pred.text_to_image(gallery[[3, 1]] * 2.0, gallery, k=3)  # captions equal to gallery items 3 and 1
    assert [r[0][0] for r in ranked] == [3, 1]
    assert ranked[0][0][1] == pytest.approx(1.0, abs=1e-5) and len(ranked[0]) == 3
    with pytest.raises(KDError, match="dimension"):
        pred.text_to_image(np.ones((1, 4), np.float32), gallery, k=1)


def test_load_image_errors(tmp_path: Path) -> None:
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    with pytest.raises(KDError) as e:
        load_image(txt)
    assert str(e.value) == f"{txt}: not an image (cannot identify image file)"
    with pytest.raises(KDError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    png = tmp_path / "ok.png"
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(png)
    assert load_image(png).shape == (5, 7, 3)


def test_retrieval_rejects_wrong_inputs(retrieval_bundle: Path, forecast_bundle: Path) -> None:
    pred = RetrievalPredictor(load_bundle(retrieval_bundle))
    with pytest.raises(KDError, match="uint8"):
        pred.embed([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(KDError, match="not a retrieval bundle"):
        RetrievalPredictor(load_bundle(forecast_bundle))


def test_forecast_matches_torch(forecast_bundle: Path, forecaster: TinyForecaster) -> None:
    pred = ForecastPredictor(load_bundle(forecast_bundle))
    frames = np.random.default_rng(3).normal(F_MEAN, F_STD, size=(2, T_IN, FH, FW)).astype(np.float32)

    def ref(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return forecaster(torch.from_numpy((x - F_MEAN) / F_STD)).numpy() * F_STD + F_MEAN

    np.testing.assert_allclose(pred.predict(frames), ref(frames), atol=1e-5)
    np.testing.assert_allclose(pred.predict(frames[0]), ref(frames[:1])[0], atol=1e-5)

    out = pred.rollout(frames, steps=3)
    assert out.shape == (2, 3 * T_OUT, FH, FW) and pred.rollout(frames[0], steps=2).shape == (2 * T_OUT, FH, FW)
    history = frames
    for step in range(3):
        y = ref(history[:, -T_IN:])
        np.testing.assert_allclose(out[:, step * T_OUT:(step + 1) * T_OUT], y, atol=1e-4)
        history = np.concatenate([history, y], axis=1)


def test_forecast_shape_errors(forecast_bundle: Path) -> None:
    pred = ForecastPredictor(load_bundle(forecast_bundle))
    for bad in (np.zeros((T_IN + 1, FH, FW)), np.zeros((T_IN, FH, FW + 1)), np.zeros((FH, FW))):
        with pytest.raises(KDError) as e:
            pred.predict(bad)
        assert "forecast input must be (T_in=4, 8, 8)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(KDError, match="steps"):
        pred.rollout(np.zeros((T_IN, FH, FW)), steps=0)


def test_onnx_backend_properties(retrieval_bundle: Path) -> None:
    backend = open_backend(load_bundle(retrieval_bundle), threads=2)
    assert isinstance(backend, OnnxBackend) and backend.input_names == ["image"]
    assert backend.input_shapes["image"] == (None, 3, H, W)
    assert backend.session.get_session_options().intra_op_num_threads == 2
    assert backend.run({"image": np.zeros((2, 3, H, W), np.float32)})[0].shape == (2, 8)


def test_litert_backend(tmp_path: Path, encoder: TinyEncoder, retrieval_bundle: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    litert_torch = pytest.importorskip("litert_torch")
    src = tmp_path / "enc.tflite"
    litert_torch.convert(encoder, (torch.randn(1, 3, H, W),)).export(str(src))
    out = write_bundle(tmp_path / "enc-tflite-fp32", _retrieval_manifest("tflite", "model.tflite"),
                       _retrieval_files({"model.tflite": src}))
    bundle = load_bundle(out)
    backend = open_backend(bundle)
    assert isinstance(backend, LiteRTBackend)
    images = _random_images(3, seed=4)
    lite, ref = RetrievalPredictor(bundle), RetrievalPredictor(load_bundle(retrieval_bundle))
    np.testing.assert_allclose(lite.scores(images), ref.scores(images), atol=1e-4)
    assert [[c for c, _ in r] for r in lite.topk(images, 3)] == [[c for c, _ in r] for r in ref.topk(images, 3)]
    x = lite.preprocess(images)  # batch 3 into a batch-1 .tflite: resized on demand, then back to 1
    batched = backend.run({"image": x})[0]
    np.testing.assert_allclose(batched, np.concatenate([backend.run({"image": x[i:i + 1]})[0] for i in range(3)]),
                               atol=1e-6)
    with pytest.raises(KDError, match="expects shape"):
        backend.run({"image": np.zeros((1, 3, H + 1, W), np.float32)})


@pytest.mark.skipif(platform.system() == "Darwin", reason="CoreML predicts on macOS")
def test_coreml_off_macos_refused(tmp_path: Path) -> None:
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    (pkg / "Manifest.json").write_text("{}")
    out = write_bundle(tmp_path / "b", _retrieval_manifest("coreml", "model.mlpackage"),
                       _retrieval_files({"model.mlpackage": pkg}))
    with pytest.raises(KDError, match="CoreML prediction needs macOS; this bundle was validated at export only"):
        open_backend(load_bundle(out))


def test_available_backends() -> None:
    found = available_backends()
    assert found["onnxruntime"] and set(found) >= {"onnxruntime", "ai_edge_litert", "tflite_runtime", "coremltools"}


def test_latency_stats_against_numpy() -> None:
    samples = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0, 3.5, 8.9, 7.0, 100.0]
    s = latency_stats(samples)
    a = np.array(samples)
    assert s["n"] == 11 and s["min"] == 1.0 and s["max"] == 100.0
    assert s["mean"] == pytest.approx(a.mean()) and s["std"] == pytest.approx(a.std())
    for q in (50, 90, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(a, q))
    assert latency_stats([2.0])["p99"] == 2.0
    with pytest.raises(ValueError):
        latency_stats([])


def test_time_callable() -> None:
    calls = []
    times = time_callable(lambda: calls.append(1), warmup=2, runs=5)
    assert len(calls) == 7 and len(times) == 5 and all(t >= 0 for t in times)


def test_measure_peak_rss() -> None:
    def allocate() -> None:
        a = np.ones(25_000_000)  # 200 MB, touched
        a += 1.0
        del a

    assert measure_peak_rss(allocate) >= 150e6
    assert 0 <= measure_peak_rss(lambda: None) < 50e6


def test_host_info_keys() -> None:
    info = host_info()
    assert {"cpu", "isa", "cores", "python", "numpy", "onnxruntime", "ai_edge_litert", "gpu"} <= set(info)
    assert set(info["isa"]) == {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx"}
    assert all(isinstance(v, bool) for v in info["isa"].values()) and info["cores"] >= 1


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


def test_imports_without_torch(retrieval_bundle: Path, forecast_bundle: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, kdmobile.bundle, kdmobile.runtime\n"
        "from kdmobile.runtime import load_bundle, RetrievalPredictor, ForecastPredictor, host_info\n"
        "import kdmobile.runtime.backends, kdmobile.runtime.predictors, kdmobile.runtime.measure\n"
        f"r = RetrievalPredictor(load_bundle({str(retrieval_bundle)!r}))\n"
        "print(r.topk([np.zeros((9, 9, 3), np.uint8)], k=1))\n"
        f"f = ForecastPredictor(load_bundle({str(forecast_bundle)!r}))\n"
        f"print(f.rollout(np.zeros(({T_IN}, {FH}, {FW})), 2).shape); host_info(); print('ok')\n"
    )
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_runtime_never_imports_torch() -> None:
    code = ("import sys, kdmobile.runtime, kdmobile.runtime.backends, kdmobile.runtime.predictors, "
            "kdmobile.runtime.measure, kdmobile.bundle\n"
            "kdmobile.runtime.available_backends(); kdmobile.runtime.host_info()\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
