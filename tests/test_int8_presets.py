"""ONNX int8 presets for exporting on one machine for another (`--int8-for`), apart from export's slow fixtures."""

from __future__ import annotations

import pytest

from kdmobile.errors import KDError
from kdmobile.export.quantize import resolve_int8_format


def test_int8_presets_for_another_machine():
    """--int8-for picks by preset (no measurement is possible for another machine); explicit formats win."""
    assert resolve_int8_format("auto", "x86-avx2")[0] == "w8a32"
    assert resolve_int8_format("auto", "x86-vnni")[0] == "u8s8"
    assert resolve_int8_format("auto", "arm64")[0] == "s8s8"
    assert resolve_int8_format("auto", "arm64-nodot")[0] == "u8s8"
    assert resolve_int8_format("dynamic", "arm64")[0] == "dynamic"
    assert resolve_int8_format("auto") is None  # measured on this host
    with pytest.raises(KDError, match="--int8-for 'riscv'"):
        resolve_int8_format("auto", "riscv")
