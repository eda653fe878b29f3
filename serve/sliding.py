"""Whole-volume inference with a model trained on fixed-size cubes (NumPy).

The same tiling as MONAI's ``sliding_window_inference`` with constant blending: windows of the
model's cube size tile every axis with stride ``int(roi · (1 - overlap))``, the last one flush
with the end; an axis shorter than the cube is padded (half before, half after) with ``pad_value``
and the result cropped back; overlapping outputs are averaged.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np


def starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis of length ``size >= roi``."""
    if roi >= size:
        return [0]
    stride = max(int(roi * (1.0 - overlap)), 1)
    n = math.ceil((size - roi) / stride) + 1
    return sorted({min(i * stride, size - roi) for i in range(n)})


def sliding_window(
    volume: np.ndarray,
    roi: Sequence[int],
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    overlap: float = 0.5,
    batch: int = 4,
    pad_value: float = 0.0,
) -> np.ndarray:
    """``(C, X, Y, Z)`` → ``(C_out, X, Y, Z)`` by tiling with ``roi`` cubes.

    Args:
        predict: ``(B, C, *roi) -> (B, C_out, *roi)``.
    """
    roi = tuple(int(r) for r in roi)
    spatial = volume.shape[1:]
    lo = [max(r - s, 0) // 2 for r, s in zip(roi, spatial, strict=True)]
    hi = [max(r - s, 0) - a for r, s, a in zip(roi, spatial, lo, strict=True)]
    x = np.pad(volume, [(0, 0)] + list(zip(lo, hi, strict=True)), constant_values=pad_value)
    axes = [starts(s, r, overlap) for s, r in zip(x.shape[1:], roi, strict=True)]
    grid = list(itertools.product(*axes))
    out = count = None
    for k in range(0, len(grid), batch):
        chunk = grid[k : k + batch]
        sl = [tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True)) for st in chunk]
        pred = predict(np.stack([x[(slice(None), *s)] for s in sl]))
        if out is None:
            out = np.zeros((pred.shape[1], *x.shape[1:]), np.float32)
            count = np.zeros(x.shape[1:], np.float32)
        for s, p in zip(sl, pred, strict=True):
            out[(slice(None), *s)] += p
            count[s] += 1.0
    out /= count
    crop = tuple(slice(a, a + s) for a, s in zip(lo, spatial, strict=True))
    return out[(slice(None), *crop)]
