"""The AMMKD ablation's --search rows: each setting's students against the no-KD student of the same seed."""
from __future__ import annotations

from pathlib import Path

import pytest

from kdmobile import experiments as ablation
from kdmobile.experiments import Records


def _rec(top1: float) -> dict:
    return {"student": {"top1": top1}}


def test_search_rows_gain_per_seed(tmp_path: Path) -> None:
    records = Records(tmp_path / "r.json")
    records.data["runs"] = {"none/0": _rec(40.0), "none/1": _rec(42.0), "search:kl10/0": _rec(45.0),
                            "search:kl10/1": _rec(46.0), "search:kl3/2": _rec(50.0),  # no no-KD student of seed 2
                            "confidence/0": _rec(99.0)}
    rows = ablation.search_rows(records, "top1")
    assert [r["setting"] for r in rows] == ["kl10"]
    row = rows[0]
    assert row["seeds"] == [0, 1] and row["per_seed"] == [45.0, 46.0]
    assert row["gain_vs_none_per_seed"] == [5.0, 4.0] and row["gain_vs_none"] == pytest.approx(4.5)
    assert row["overrides"] == ablation.SEARCH["kl10"] and row["overrides"]["loss.terms"]["kl"] == 10.0
    table = ablation.search_table(rows)
    assert "| kl10" in table and "+4.50" in table
    assert ablation.search_table([]) == ""


def test_search_settings_are_complete_configs() -> None:
    """Every setting names its KL weight and temperature, so it does not move when the defaults change."""
    from kdmobile.config import AMMKDConfig, load_config

    for name, setting in ablation.SEARCH.items():
        assert {"loss.terms", "temperature"} <= set(setting), name
        cfg = load_config(AMMKDConfig, None, setting)
        assert cfg.temperature == setting["temperature"]
        assert cfg.loss.terms["kl"] == setting["loss.terms"]["kl"]
