"""Shared fixtures: tiny configurations that exercise the real code paths in seconds."""

from __future__ import annotations

import os

import pytest

# One thread: tiny models gain nothing from a second one, and with any other process on the 2 cores OpenMP's
# spin-waiting made a tiny run 3x slower at 2 threads (31.8 s vs 9.6 s measured here).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The smallest AMMKD run that still goes through both stages, both teacher families and adaptive weighting.
TINY_AMMKD = ["--teachers", "kd-vit-tiny,kd-rn-tiny", "--teacher-epochs", "1", "--epochs", "2",
              "--max-train", "96", "--max-test", "40", "--no-progress", "--set", "embed_dim=16",
              "--set", "student=mobilenetv3_small_050", "--batch-size", "32", "--set", "teacher_train.batch_size=32",
              "--set", "health.drop_weak=false"]  # 1-epoch teachers are weak; the tests exercise the KD path anyway


@pytest.fixture
def tiny_ammkd_args(tmp_path):
    """CLI arguments for a tiny AMMKD run writing under tmp_path/runs."""
    return ["train", "ammkd", *TINY_AMMKD, "--out", str(tmp_path / "runs")]
