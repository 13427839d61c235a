"""Runs are claimed atomically: two trainings started together with one --name write two intact run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kdmobile.rundir import claim_run_dir, new_run_dir
from tests.conftest import TINY_AMMKD


def test_claim_takes_the_next_name_when_the_pick_was_taken(tmp_path: Path) -> None:
    a, b = new_run_dir(tmp_path, "r", False), new_run_dir(tmp_path, "r", False)
    assert a == b == tmp_path / "r"  # both planned the same directory
    assert claim_run_dir(a, "r", False) == tmp_path / "r"
    assert claim_run_dir(b, "r", False) == tmp_path / "r2"
    assert claim_run_dir(tmp_path / "r", "r", True) == tmp_path / "r"  # resume continues the given one


def test_two_concurrent_trainings_with_one_name(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "kdmobile.cli", "train", "ammkd", *TINY_AMMKD, "--epochs", "1", "--out", str(out),
           "--name", "same"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-1500:] for r in results]
    assert sorted(d.name for d in out.iterdir()) == ["same", "same2"]
    for run in ("same", "same2"):
        log = [json.loads(line) for line in (out / run / "log.jsonl").read_text().splitlines()]
        assert sum(1 for r in log if r.get("event") == "metrics") == 1  # one run's records, not two interleaved
        assert (out / run / "metrics.json").is_file() and not (out / run / "INCOMPLETE").exists()


def _tree_hash(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_resume_refuses_a_finished_run_and_other_settings_before_writing(tmp_path: Path, capsys) -> None:
    import shutil

    from kdmobile.cli import main

    out = tmp_path / "runs"
    args = ["train", "ammkd", *TINY_AMMKD, "--epochs", "1", "--out", str(out)]
    assert main([*args, "--name", "done"]) == 0
    done = out / "done"
    before = _tree_hash(done)
    capsys.readouterr()
    assert main([*args, "--name", "done", "--resume"]) == 2
    assert "has finished" in capsys.readouterr().err and _tree_hash(done) == before
    cut = out / "cut"  # a run whose training stopped before metrics.json
    shutil.copytree(done, cut)
    (cut / "metrics.json").unlink()
    before = _tree_hash(cut)
    assert main([*args[:-2], "--epochs", "3", "--out", str(out), "--name", "cut", "--resume",
                 "--set", "temperature=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.epochs (1 -> 3)" in err and "temperature (4.0 -> 2.0)" in err and len(err.splitlines()) == 1
    assert _tree_hash(cut) == before  # nothing rewritten: not config.yaml, not heldout.npz, no INCOMPLETE marker
