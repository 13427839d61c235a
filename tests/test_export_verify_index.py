"""Export verification samples: a held-out split stored class by class is verified on every class."""

from __future__ import annotations

import numpy as np


def test_verification_samples_cover_a_split_stored_class_by_class():
    from kdmobile.export.verify import VERIFY_SAMPLES, verification_index

    labels = np.repeat(np.arange(10), 200)  # a 2,000-image test split stored class by class, as split_dataset does
    idx = verification_index(len(labels))
    assert len(idx) == VERIFY_SAMPLES and idx[0] == 0 and idx[-1] == len(labels) - 1
    assert np.array_equal(np.bincount(labels[idx], minlength=10), np.full(10, 100))  # every class, evenly
    assert np.array_equal(verification_index(300), np.arange(300))
