"""Impossible manifests and bundle signatures, read alike by Python, the Java core and the web page in headless
Chromium (issue 21 acceptance 3 and 4). The cases are data (tests/trust_cases.py); the JS and Java limits are
checked against manifest.schema.json, the one statement of them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kdmobile.bundle import load_bundle
from kdmobile.errors import KDError
from kdmobile.runtime.predictors import RetrievalPredictor
from kdmobile.signing import trusted_keys

from test_android_demo import DEMO, require_tools
from test_predict import build_tiny
from trust_cases import build_impossible, build_signed

from browser import run_page  # noqa: E402 (test_android_demo puts android_demo/ on sys.path)
from serve import DemoServer  # noqa: E402


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    require_tools()
    src = build_tiny(tmp_path_factory.getbasetemp() / "kd_tiny_runs")["a_onnx"]
    root = tmp_path_factory.mktemp("trust")
    impossible = build_impossible(src, root / "impossible")
    signing = build_signed(src, root / "signed")
    (root / "cases.json").write_text(json.dumps({"images": [], "k": 5}))
    doc = {"impossible": [{"name": n, "bundle": str(b), "expect": e} for n, b, e in impossible],
           "untrusted": [{"name": n, "bundle": str(b), "expect": e} for n, b, e in signing["refused"]],
           "signed": str(signing["signed"]), "trust": str(signing["trust"]), "other_pub": str(signing["other_pub"]),
           "schema": str(DEMO / "manifest.schema.json")}
    (root / "trust.json").write_text(json.dumps(doc, indent=2))
    return {"root": root, "doc": doc, "impossible": impossible, **signing}


def _python_load(bundle: Path, trust: Path | None = None) -> None:
    """What predict does before it runs anything: the bundle (and signature), then the retrieval head."""
    RetrievalPredictor(load_bundle(bundle, trusted_keys([trust]) if trust else None)).labels  # noqa: B018


def test_python_refuses_impossible_and_untrusted_bundles(cases) -> None:
    for name, bundle, fragment in cases["impossible"]:
        with pytest.raises(KDError, match=fragment):
            _python_load(bundle)
    _python_load(cases["signed"], cases["trust"])
    for name, bundle, fragment in cases["refused"]:
        with pytest.raises(KDError) as err:
            _python_load(bundle, cases["trust"])
        assert fragment in str(err.value), name


def test_java_core_refuses_them_alike(cases, tmp_path) -> None:
    done = subprocess.run([str(DEMO / "core" / "run_tests.sh"), str(cases["root"]), "TrustTest"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KDM_CORE_BUILD": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "OK (3 tests)" in done.stdout


def test_page_limits_are_the_schemas() -> None:
    out = subprocess.run(["node", "--input-type=module", "-e",
                          "import('./kdcore.js').then((m) => console.log(JSON.stringify(m.LIMITS)))"],
                         cwd=DEMO / "web", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    limits = json.loads(out.stdout)
    defs = json.loads((DEMO / "manifest.schema.json").read_text())["$defs"]
    shape = defs["InputSpec"]["properties"]["shape"]
    cv = defs["ClassVectorsSpec"]["properties"]["shape"]
    assert limits == {"MAX_DIM": shape["items"]["maximum"], "MAX_INPUT_ELEMENTS": shape["x-kdmobile-max-elements"],
                      "MAX_CLASSES": cv["prefixItems"][0]["maximum"], "MAX_EMBED_DIM": cv["prefixItems"][1]["maximum"],
                      "MAX_CLASS_VECTOR_ELEMENTS": cv["x-kdmobile-max-elements"]}


def test_page_refuses_them_alike_in_chromium(cases) -> None:
    bundles = {n: b for n, b, _ in cases["impossible"] + cases["refused"]}
    bundles["signed"] = cases["signed"]
    with DemoServer(bundles, fixtures=cases["root"] / "signed") as srv:
        (cases["root"] / "signed" / "cases.json").write_text(json.dumps({"images": [], "k": 5}))
        trust = "/fixtures/team.pub"
        for name, page_trust in (("signed", trust), ("signed", None)):
            report = run_page(srv, f"/bundles/{name}/", "/fixtures/cases.json", runs=2, trust=page_trust)
            assert report["ok"], report
        problems = []
        for name, _, fragment in cases["impossible"] + cases["refused"]:
            report = run_page(srv, f"/bundles/{name}/", "/fixtures/cases.json", runs=2,
                              trust=trust if (name, fragment) in {(n, f) for n, _, f in cases["refused"]} else None)
            if report.get("ok") or report.get("kind") != "bundle" or fragment not in report.get("error", ""):
                problems.append(f"{name}: {report}")
        assert problems == []
