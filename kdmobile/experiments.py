"""Bookkeeping of a seed-paired experiment (the AMMKD ablation's KD-loss search): a records file that makes a long
study resumable, the search grid, and each setting's gain over the no-KD student of the same seed. In the package so
that the benchmark scripts and the tests use one implementation (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.fileio import write_json
from kdmobile.table import format_table

# --search: complete loss settings (they do not move with the defaults), confidence weighting, the first two seeds.
SEARCH_WEIGHTING = "confidence"
SEARCH: dict[str, dict[str, Any]] = {
    **{f"kl{w:g}": {"loss.terms": {"ce": 1.0, "kl": w}, "temperature": 4.0} for w in (1.0, 3.0, 6.0, 10.0)},
    "ce0": {"loss.terms": {"ce": 0.0, "kl": 1.0}, "temperature": 4.0},  # pure KD, no label term
    **{f"kl1-T{t:g}": {"loss.terms": {"ce": 1.0, "kl": 1.0}, "temperature": t} for t in (1.0, 2.0, 8.0)},
}


class Records:
    """The per-run results file: written after every run, read to skip finished work."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"runs": {}}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data["runs"].get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data["runs"][key] = value
        write_json(self.path, self.data)


def search_rows(records: Records, metric: str) -> list[dict[str, Any]]:
    """One row per --search setting: its students' metric per seed and the gain over the no-KD student of each seed."""
    rows = []
    seeds = sorted({int(k.rsplit("/", 1)[1]) for k in records.data["runs"] if k.startswith("none/")})
    for name, setting in SEARCH.items():
        pairs = [(s, run["student"][metric], records.get(f"none/{s}")["student"][metric])
                 for s in seeds if (run := records.get(f"search:{name}/{s}"))]
        if pairs:
            vals, gains = [v for _, v, _ in pairs], [v - base for _, v, base in pairs]
            rows.append({"setting": name, "overrides": setting, "weighting": SEARCH_WEIGHTING, "metric": metric,
                         "seeds": [s for s, _, _ in pairs], "per_seed": vals, "mean": float(np.mean(vals)),
                         "gain_vs_none_per_seed": gains, "gain_vs_none": float(np.mean(gains))})
    return rows


def search_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the --search rows ('' when there are none)."""
    if not rows:
        return ""
    table = [[r["setting"], json.dumps(r["overrides"]), " / ".join(f"{v:.2f}" for v in r["per_seed"]),
              f"{r['mean']:.2f}", f"{r['gain_vs_none']:+.2f}"] for r in rows]
    return (f"\nSearch around the KD loss (`--search`; {SEARCH_WEIGHTING} weighting, seeds "
            f"{sorted({s for r in rows for s in r['seeds']})}, each against the no-KD student of its seed):\n\n"
            + format_table(["setting", "overrides", "per seed", "mean", "vs no KD"], table, markdown=True) + "\n")
