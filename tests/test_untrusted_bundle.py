"""Untrusted bundles and inputs: an edited, re-sealed, linked, padded or hostile bundle is refused in one line by
predict, bench, export --verify and the runtime API; images and arrays that would exhaust memory or mislead are
refused or handled; Hypothesis fuzzes the manifest reader (issue 10)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kdmobile.bundle import load_bundle, validate_manifest, write_bundle
from kdmobile.errors import KDError
from kdmobile.runtime import ForecastPredictor, RetrievalPredictor, load_image
from kdmobile.untrusted import MAX_PIXELS, parse_json

from test_bundle import retrieval_files, retrieval_manifest
from untrusted_helpers import T_IN, fake_forecast_run, main, one_line_err, reseal


@pytest.fixture(scope="module")
def fc_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fc")
    run = fake_forecast_run(root)
    assert main(["export", run, "--out", root / "bundles"]) == 0
    return root / "bundles" / "fc-onnx-fp32"


@pytest.fixture(scope="module")
def rt_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rt")
    return write_bundle(root / "tiny-onnx-fp32", retrieval_manifest(), retrieval_files(root))


@pytest.fixture()
def image(tmp_path) -> Path:
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "img.png")
    return tmp_path / "img.png"


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _edit(bundle: Path, change, seal: bool = False) -> Path:
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))
    if seal:
        reseal(bundle)
    return bundle


def _refused_everywhere(bundle: Path, image: Path, tmp_path: Path, capsys, needle: str) -> None:
    """predict, bench, export --verify and the runtime API each refuse `bundle` in one line naming `needle`."""
    for args in (["predict", bundle, image], ["export", "--verify", bundle],
                 ["bench", bundle, "--no-teachers", "--out", tmp_path / "bench", "--no-progress"]):
        capsys.readouterr()
        assert main(args) == 2, args
        assert needle in one_line_err(capsys), args
    assert not (tmp_path / "bench").exists()  # no report written for a refused bundle
    with pytest.raises(KDError, match=needle.split("(")[0].strip()):
        RetrievalPredictor(load_bundle(bundle))


def test_edited_manifest_is_refused_everywhere(rt_bundle, image, tmp_path, capsys):
    b = _edit(_copy(rt_bundle, tmp_path / "b"), lambda m: m["retrieval"].update(logit_scale=1000.0))
    _refused_everywhere(b, image, tmp_path, capsys, "manifest.json changed after export")


def test_resealed_manifest_with_shapes_the_model_lacks_is_refused(rt_bundle, image, tmp_path, capsys):
    def wrong(m):
        m["input"]["shape"] = [1, 3, 24, 24]

    b = _edit(_copy(rt_bundle, tmp_path / "b"), wrong, seal=True)
    _refused_everywhere(b, image, tmp_path, capsys, "does not match the model file")

    def wrong_out(m):
        m["outputs"][0]["shape"] = [1, 9]

    b2 = _edit(_copy(rt_bundle, tmp_path / "b2"), wrong_out, seal=True)
    with pytest.raises(KDError, match="manifest output shape"):
        RetrievalPredictor(load_bundle(b2))


def test_symlinked_and_unlisted_files_are_refused(rt_bundle, image, tmp_path, capsys):
    linked = _copy(rt_bundle, tmp_path / "linked")
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(linked / "model.onnx", outside)  # identical bytes: the checksum alone would pass
    (linked / "model.onnx").unlink()
    (linked / "model.onnx").symlink_to(outside)
    _refused_everywhere(linked, image, tmp_path, capsys, "model.onnx is a symbolic link")
    extra = _copy(rt_bundle, tmp_path / "extra")
    (extra / "payload.py").write_text("print('hi')")
    _refused_everywhere(extra, image, tmp_path, capsys, "payload.py is not listed in the manifest")
    fifo = _copy(rt_bundle, tmp_path / "fifo")
    os.mkfifo(fifo / "x")  # reading it would block forever
    with pytest.raises(KDError, match="x is not a regular file"):
        load_bundle(fifo)


def test_oversized_and_deeply_nested_manifests_are_refused_unread(rt_bundle, tmp_path):
    deep = _copy(rt_bundle, tmp_path / "deep")
    (deep / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)  # 400 KB of nesting
    reseal(deep)
    with pytest.raises(KDError, match="nested too deeply"):
        load_bundle(deep)
    huge = _copy(rt_bundle, tmp_path / "huge")
    with open(huge / "manifest.json", "r+b") as f:
        f.truncate(300 << 20)  # 300 MB (sparse): refused from its size, never read
    with pytest.raises(KDError, match="over the 1048576-byte limit"):
        load_bundle(huge)


def test_labels_with_terminal_escapes_are_printed_escaped(tmp_path, image, capsys):
    evil = ["\x1b[2J\x1b[31mcat", "dog\nkdmobile: ok", "bird"]
    files = {**retrieval_files(tmp_path), "labels.json": json.dumps(evil).encode()}
    b = write_bundle(tmp_path / "ansi-onnx-fp32", retrieval_manifest(), files)
    assert main(["predict", b, image, "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mcat" in out and "dog\\nkdmobile: ok" in out
    assert main(["predict", b, image, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["top_k"][0]["label"] in evil  # exact in JSON


# ------------------------------------------------------------------------------------------- inputs
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height, with almost no pixel data (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_before_decoding(rt_bundle, tmp_path, capsys):
    bomb = _png_header_only(tmp_path / "bomb.png", 14000, 14000)
    assert main(["predict", rt_bundle, bomb]) == 2
    assert "refused before decoding" in one_line_err(capsys)
    side = int(MAX_PIXELS ** 0.5) + 1  # just over kdmobile's limit, under Pillow's own
    with pytest.raises(KDError, match="pixel limit"):
        load_image(_png_header_only(tmp_path / "big.png", side, side))
    from kdmobile.data.images import read_image

    with pytest.raises(KDError, match="cannot read image"):
        read_image(bomb)


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    a = load_image(tmp_path / "16.png")
    assert a.dtype == np.uint8 and a.shape == (8, 64, 3)
    assert (a == 255).mean() < 0.05 and abs(int(a[0, 32, 0]) - round(ramp[0, 32] / 257)) <= 1


def test_one_class_image_folder_is_refused(tmp_path):
    from kdmobile.data import load_dataset

    (tmp_path / "only").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / "only" / f"{i}.png")
    with pytest.raises(KDError, match="only one class"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_empty_forecast_array_is_one_line(fc_bundle, tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, T_IN, 8, 8), np.float32))
    assert main(["predict", fc_bundle, tmp_path / "empty.npy"]) == 2
    assert "forecast input must be" in one_line_err(capsys)
    with pytest.raises(KDError):
        ForecastPredictor(load_bundle(fc_bundle)).predict(np.zeros((0, T_IN, 8, 8), np.float32))
    assert not (tmp_path / "empty.forecast.npy").exists()


def test_forecast_bundle_with_a_wrong_declared_frame_size_is_refused(fc_bundle, tmp_path, capsys):
    def wrong(m):
        m["input"]["shape"] = [1, T_IN, 16, 16]
        m["forecast"]["height"] = m["forecast"]["width"] = 16

    b = _edit(_copy(fc_bundle, tmp_path / "b"), wrong, seal=True)
    np.save(tmp_path / "x.npy", np.zeros((T_IN, 16, 16), np.float32))
    for args in (["predict", b, tmp_path / "x.npy"], ["export", "--verify", b]):
        assert main(args) == 2
        assert "does not match the model file" in one_line_err(capsys)


# ------------------------------------------------------------------------------------------- fuzzing
_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=True)
                     | st.text(max_size=6), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                                                    c, max_size=4),
                     max_leaves=12)


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


_VALID = {**retrieval_manifest(), "schema_version": 2,
          "files": {"model.onnx": "0" * 64, "class_vectors.f32": "1" * 64, "labels.json": "2" * 64}}
_PATHS = _paths(_VALID)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_PATHS), _json, st.booleans())
def test_fuzz_mutated_manifest_only_raises_kderror(path, value, delete):
    m = copy.deepcopy(_VALID)
    node = m
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    try:
        validate_manifest(m)
    except KDError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_fuzz_arbitrary_json_only_raises_kderror(value):
    try:
        validate_manifest(value)
    except KDError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(alphabet="[]{}\":,0123456789.eE+-tfnrul \\x", max_size=300).map(str.encode))
def test_fuzz_manifest_bytes_parse_or_refuse(raw):
    try:
        parse_json(raw, "manifest.json")
    except KDError as e:
        assert "\n" not in str(e)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(_PATHS), _json)
def test_fuzz_sealed_bundle_loads_or_refuses_in_one_line(rt_bundle, path, value):
    with tempfile.TemporaryDirectory() as d:
        b = shutil.copytree(rt_bundle, Path(d) / "b")
        m = json.loads((b / "manifest.json").read_text())
        node = m
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        raw = json.dumps(m).encode()
        (b / "manifest.json").write_bytes(raw)
        reseal(b)
        try:
            bundle = load_bundle(b)
        except KDError as e:
            assert "\n" not in str(e)
            return
        try:
            RetrievalPredictor(bundle).topk([np.zeros((16, 16, 3), np.uint8)])
        except KDError as e:
            assert "\n" not in str(e)


IMPOSSIBLE = [
    ("negative logit scale", lambda m: m["retrieval"].update(logit_scale=-14.3), "logit_scale must be a finite"),
    ("zero logit scale", lambda m: m["retrieval"].update(logit_scale=0), "logit_scale must be a finite number > 0"),
    ("zero std", lambda m: m["input"].update(std=[0.0, 0.26, 0.27]), "std finite numbers > 0"),
    ("NaN mean", lambda m: m["input"].update(mean=[float("nan"), 0.4, 0.4]), "mean must be finite"),
    ("infinite logit scale", lambda m: m["retrieval"].update(logit_scale=float("inf")), "logit_scale"),
    ("inverted value range", lambda m: m["input"].update(value_range=[255, 0]), "value_range"),
]


@pytest.mark.parametrize("what,change,needle", IMPOSSIBLE, ids=[c[0] for c in IMPOSSIBLE])
def test_resealed_impossible_values_are_refused(rt_bundle, image, tmp_path, capsys, what, change, needle):
    """Issue 21 class 4: a re-sealed manifest with values no export writes is refused, not run (a negative scale
    inverted the ranking; a zero std printed every probability as nan with exit 0)."""
    b = _edit(_copy(rt_bundle, tmp_path / "b"), change, seal=True)
    _refused_everywhere(b, image, tmp_path, capsys, needle)
