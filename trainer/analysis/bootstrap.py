"""Medians with a bootstrap interval over units: universality's best matches, interpretability's
scores (issue 21: every headline median carries its interval)."""

from __future__ import annotations

from typing import Any

import numpy as np

N_BOOTSTRAP = 1000


def bootstrap_median(values: np.ndarray, n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """{"median", "ci": [lo, hi], "n"}: the median and its 95% percentile-bootstrap interval over
    units (resampled with replacement, a fixed seed so a re-run gives the same interval)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median": None, "ci": None, "n": 0}
    rng = np.random.default_rng(seed)
    medians = np.empty(n_resamples)
    for start in range(0, n_resamples, 100):  # bounded memory: 100 resamples of n at a time
        rows = min(100, n_resamples - start)
        medians[start : start + rows] = np.median(
            values[rng.integers(0, values.size, (rows, values.size))], 1
        )
    low, high = np.percentile(medians, [2.5, 97.5])
    return {"median": float(np.median(values)), "ci": [float(low), float(high)], "n": int(values.size)}
