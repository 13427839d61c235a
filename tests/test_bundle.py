"""The bundle contract: manifest round trip, atomic writes, and one-line refusals of damaged bundles."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from kdmobile.bundle import (SCHEMA_VERSION, load_bundle, read_class_vectors, seal_bundle, validate_manifest,
                             write_bundle, write_class_vectors)
from kdmobile.errors import KDError

torch = pytest.importorskip("torch")

LABELS = ["cat", "dog", "bird"]


class TinyEncoder(torch.nn.Module):
    """conv + pool + linear + L2-normalise: a stand-in image encoder (D=8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.fc(self.conv(x).relu().mean((2, 3))), dim=-1)


def export_onnx(path: Path) -> None:
    """Export TinyEncoder to ONNX (dynamic batch)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyEncoder().eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                          input_names=["image"], output_names=["embedding"],
                          dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}})


def class_vectors() -> np.ndarray:
    v = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def retrieval_manifest() -> dict:
    return {
        "head": "retrieval", "task": "classes", "target": "onnx", "precision": "fp32", "model_file": "model.onnx",
        "input": {"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32", "layout": "NCHW",
                  "value_range": [0, 255], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "outputs": [{"name": "embedding", "shape": [1, 8]}],
        "retrieval": {"class_vectors": {"file": "class_vectors.f32", "shape": [3, 8], "dtype": "float32",
                                        "byte_order": "little"},
                      "logit_scale": 10.0, "labels_file": "labels.json",
                      "prompt_templates": ["a photo of a {}."]},
        "quantization": {"method": "none"},
        "verification": {"max_abs_diff": 0.0},
        "source": {"run_dir": "runs/tiny", "method": "ammkd", "student": "tiny"},
    }


def retrieval_files(tmp_path: Path) -> dict:
    model = tmp_path / "src.onnx"
    export_onnx(model)
    return {"model.onnx": model,
            "class_vectors.f32": lambda p: write_class_vectors(p, class_vectors()),
            "labels.json": json.dumps(LABELS).encode()}


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "bundles" / "tiny-onnx-fp32", retrieval_manifest(), retrieval_files(tmp_path))


def test_manifest_round_trip(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    written = json.loads((bundle_dir / "manifest.json").read_text())
    assert b.manifest == written
    for k, v in retrieval_manifest().items():
        assert written[k] == v
    assert written["schema_version"] == SCHEMA_VERSION and written["kdmobile_version"] and written["created"]
    assert sorted(written["files"]) == ["class_vectors.f32", "labels.json", "model.onnx"]
    assert all(len(h) == 64 for h in written["files"].values())
    assert (b.head, b.target, b.precision, b.name) == ("retrieval", "onnx", "fp32", "tiny-onnx-fp32")
    assert b.model_path == bundle_dir / "model.onnx" and b.labels == LABELS
    np.testing.assert_array_equal(b.class_vectors, class_vectors())


def test_class_vectors_little_endian_and_normalised(tmp_path: Path) -> None:
    p = tmp_path / "cv.f32"
    assert write_class_vectors(p, class_vectors()) == (3, 8)
    np.testing.assert_array_equal(np.frombuffer(p.read_bytes(), dtype="<f4").reshape(3, 8), class_vectors())
    np.testing.assert_array_equal(read_class_vectors(p, [3, 8]), class_vectors())
    with pytest.raises(ValueError):
        write_class_vectors(tmp_path / "bad.f32", class_vectors() * 2)
    (tmp_path / "bad.f32").write_bytes((class_vectors() * 2).astype("<f4").tobytes())
    with pytest.raises(KDError, match="L2-normalised"):
        read_class_vectors(tmp_path / "bad.f32", (3, 8))
    with pytest.raises(KDError, match="expected 4x8"):
        read_class_vectors(p, (4, 8))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_schema_version_mismatch_refused(bundle_dir: Path) -> None:
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["schema_version"] = 1
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    seal_bundle(bundle_dir)
    with pytest.raises(KDError) as e:
        load_bundle(bundle_dir)
    assert f"schema_version 1 found, {SCHEMA_VERSION} expected" in _one_line(e)
    (bundle_dir / "bundle.sha256").unlink()  # a schema-1 bundle has no seal: still the schema message
    with pytest.raises(KDError, match=f"schema_version 1 found, {SCHEMA_VERSION} expected"):
        load_bundle(bundle_dir)


def test_one_changed_byte_refused_naming_the_file(bundle_dir: Path) -> None:
    model = bundle_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(KDError) as e:
        load_bundle(bundle_dir)
    assert _one_line(e) == f"bundle {bundle_dir}: checksum mismatch for model.onnx (file changed after export)"


def test_missing_file_refused(bundle_dir: Path) -> None:
    (bundle_dir / "labels.json").unlink()
    with pytest.raises(KDError) as e:
        load_bundle(bundle_dir)
    assert "listed file labels.json missing" in _one_line(e)


def test_extra_unlisted_file_refused(bundle_dir: Path) -> None:
    (bundle_dir / "README.txt").write_text("notes")
    with pytest.raises(KDError) as e:
        load_bundle(bundle_dir)
    assert "README.txt is not listed in the manifest" in _one_line(e)


def test_bad_paths_and_manifests_refused(tmp_path: Path, bundle_dir: Path) -> None:
    with pytest.raises(KDError, match="no such directory"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(KDError, match="not a directory"):
        load_bundle(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KDError, match="manifest.json missing"):
        load_bundle(tmp_path / "empty")
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(KDError, match="changed after export"):
        load_bundle(bundle_dir)
    seal_bundle_bytes(bundle_dir)
    with pytest.raises(KDError, match="not valid JSON"):
        load_bundle(bundle_dir)


def seal_bundle_bytes(root: Path) -> None:
    """Re-seal only the manifest's digest (what an attacker who edits a manifest would also do)."""
    import hashlib

    lines = (root / "bundle.sha256").read_text().splitlines()
    digest = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    (root / "bundle.sha256").write_text("\n".join(f"{digest}  manifest.json" if ln.endswith("  manifest.json")
                                                  else ln for ln in lines) + "\n")


def test_required_fields_listed_in_one_line() -> None:
    m = retrieval_manifest()
    m.update(schema_version=SCHEMA_VERSION, files={"model.onnx": "0" * 64})
    del m["input"]["mean"], m["retrieval"]["logit_scale"]
    with pytest.raises(KDError) as e:
        validate_manifest(m)
    assert _one_line(e) == "manifest: missing required fields: input.mean, retrieval.logit_scale"
    m = retrieval_manifest()
    m.update(schema_version=SCHEMA_VERSION, files={"model.onnx": "0" * 64}, precision="int4")
    with pytest.raises(KDError, match="precision='int4'"):
        validate_manifest(m)


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundles" / "tiny"

    def broken_writer(path: Path) -> None:
        path.write_bytes(b"partial")
        raise RuntimeError("export crashed")

    files = retrieval_files(tmp_path)
    with pytest.raises(RuntimeError, match="export crashed"):
        write_bundle(out, retrieval_manifest(), {**files, "class_vectors.f32": broken_writer})
    assert not out.exists() and list(out.parent.iterdir()) == []

    def failing_verify(bundle) -> dict:
        raise RuntimeError("parity failed")

    with pytest.raises(RuntimeError, match="parity failed"):
        write_bundle(out, retrieval_manifest(), files, verify=failing_verify)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_failed_rewrite_keeps_previous_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    before = (bundle_dir / "manifest.json").read_text()

    def boom(path: Path) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_bundle(bundle_dir, retrieval_manifest(), {"model.onnx": boom})
    assert (bundle_dir / "manifest.json").read_text() == before
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["tiny-onnx-fp32"]
    load_bundle(bundle_dir)


def test_verify_result_recorded(tmp_path: Path) -> None:
    seen = []

    def verify(bundle) -> dict:
        seen.append(bundle.name)
        return {"top1_agreement": 1.0}

    out = write_bundle(tmp_path / "b", retrieval_manifest(), retrieval_files(tmp_path), verify=verify)
    assert seen == ["b"]
    assert load_bundle(out).manifest["verification"] == {"max_abs_diff": 0.0, "top1_agreement": 1.0}


def test_directory_model_files_listed_by_relative_path(tmp_path: Path) -> None:
    pkg = tmp_path / "src.mlpackage"
    (pkg / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x00spec")
    m = {**retrieval_manifest(), "target": "coreml", "model_file": "model.mlpackage"}
    files = {**retrieval_files(tmp_path), "model.mlpackage": pkg}
    del files["model.onnx"]
    out = write_bundle(tmp_path / "b-coreml", m, files)
    listed = load_bundle(out).manifest["files"]
    assert {"model.mlpackage/Manifest.json", "model.mlpackage/Data/com.apple.CoreML/model.mlmodel"} <= set(listed)
    (out / "model.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x01spec")
    with pytest.raises(KDError, match="checksum mismatch for model.mlpackage/Data/com.apple.CoreML/model.mlmodel"):
        load_bundle(out)
