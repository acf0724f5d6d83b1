"""Comparisons of log-mel rows shared by the tests."""

from __future__ import annotations

import numpy as np


def assert_same_power(a: np.ndarray, b: np.ndarray) -> None:
    """dB rows from two FFT implementations: equal in power up to float16 rounding (2%) plus
    float32 FFT error, which is relative to the row's peak, not to each bin."""
    pa, pb = 10.0 ** (a.astype(np.float64) / 10), 10.0 ** (b.astype(np.float64) / 10)
    peak = np.maximum(pa, pb).max(axis=(-2, -1), keepdims=True)
    assert (np.abs(pa - pb) <= 0.02 * np.maximum(pa, pb) + 1e-6 * peak).all()
