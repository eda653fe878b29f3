"""Summaries over training seeds shared by the method benchmarks: mean and 95 % t-interval."""

from __future__ import annotations

import numpy as np

#: Two-sided 95 % Student t quantiles by degrees of freedom (n seeds − 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_interval(values) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over seeds; a single seed has no interval (NaN bounds)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def fmt_interval(values, digits: int = 3) -> str:
    """``mean [lo, hi]`` (just the mean for one seed)."""
    m, lo, hi = seed_interval(values)
    if np.isnan(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
