"""Forecast metrics against hand-computed answers: MSE, MAE, FNO's relative L2 (whole sequence and per step)."""

from __future__ import annotations

import numpy as np
import pytest

from kdmobile.metrics import forecast_errors, per_step_mse, per_step_rel_l2


def test_relative_l2_known_answer() -> None:
    """Sample 0 is 1.5x its target (rel 0.5), sample 1 is exact (rel 0): rel_l2 = mean = 0.25."""
    target = np.stack([np.ones((2, 2, 2)), 2 * np.ones((2, 2, 2))]).astype(np.float32)
    pred = target.copy()
    pred[0] *= 1.5
    m = forecast_errors(pred, target)
    assert m["rel_l2"] == pytest.approx(0.25, abs=1e-7)
    assert m["mse"] == pytest.approx(0.125) and m["mae"] == pytest.approx(0.25)
    assert per_step_rel_l2(pred, target) == pytest.approx([0.25, 0.25])


def test_relative_l2_is_per_sample_over_the_whole_sequence() -> None:
    """Step 0 exact, step 1 off by 0.2 everywhere: per step [0, 0.2]; whole sequence sqrt(4·0.04)/sqrt(8)."""
    target = np.ones((1, 2, 2, 2))
    pred = target.copy()
    pred[:, 1] = 1.2
    assert forecast_errors(pred, target)["rel_l2"] == pytest.approx(0.4 / np.sqrt(8.0))
    assert per_step_rel_l2(pred, target) == pytest.approx([0.0, 0.2])
    assert per_step_mse(pred, target) == pytest.approx([0.0, 0.04])
    # Scale-free (unlike MSE), and a sample with a large norm does not dominate the mean.
    assert forecast_errors(10 * pred, 10 * target)["rel_l2"] == pytest.approx(0.4 / np.sqrt(8.0))
    big = np.concatenate([target, 100 * target])
    assert forecast_errors(np.concatenate([pred, 100 * target]), big)["rel_l2"] == pytest.approx(0.2 / np.sqrt(8.0))
