"""Whole-volume inference with a model trained on fixed-size cubes: the one implementation.

Training evaluation (``train.finetune.evaluate``), export scoring (``export.evaluate``) and the
server (``/v1/ct/segment``) all stitch volumes here, with the semantics an export records in its
manifest (:class:`WindowSpec`). The tiling is MONAI's ``sliding_window_inference``: windows of
``roi`` tile every axis with stride ``max(int(roi · (1 - overlap)), 1)``, the last one flush with
the end of the axis; an axis shorter than the roi is padded with ``pad_value`` (half before, the
rest after) and the output cropped back; overlapping window outputs are averaged with per-voxel
weights — ``"constant"`` (all ones) or ``"gaussian"`` (MONAI's importance map: σ = 0.125 · roi
per axis, centred at ``(roi - 1) / 2``, floored at max(its minimum, 1e-3) so no voxel weighs
nothing). What is averaged is whatever ``predict`` returns: for exports, probabilities (the
graph ends with its activation).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BLENDS = ("constant", "gaussian")
SIGMA_SCALE = 0.125  # MONAI's default for the Gaussian importance map
MIN_WEIGHT = 1e-3  # MONAI's floor of the Gaussian importance map
#: blend of a manifest written before the blend was recorded (the server's behaviour then)
LEGACY_BLEND = "constant"


@dataclass(frozen=True)
class WindowSpec:
    """How a volume is tiled and stitched; recorded in a manifest's ``inference`` section.

    Attributes:
        roi: window size ``(X, Y, Z)`` the model takes.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        blend: ``"constant"`` or ``"gaussian"`` (see the module docstring).
        pad_value: fill of axes shorter than the roi, in model-input units.
    """

    roi: tuple[int, ...]
    overlap: float = 0.5
    blend: str = "gaussian"
    pad_value: float = 0.0

    def __post_init__(self):
        roi = tuple(int(r) for r in self.roi)
        if not roi or min(roi) < 1:
            raise ValueError(f"roi must be positive sizes, got {list(self.roi)}")
        object.__setattr__(self, "roi", roi)
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if not math.isfinite(float(self.pad_value)):
            raise ValueError(f"pad_value must be finite, got {self.pad_value}")

    @classmethod
    def from_inference(cls, inference: Mapping, default_roi: Sequence[int]) -> WindowSpec:
        """From a manifest's ``inference`` dict; a manifest without ``blend`` predates it and
        was served with the constant blend."""
        return cls(
            tuple(inference.get("roi_size") or default_roi),
            float(inference.get("overlap", 0.5)),
            str(inference.get("blend", LEGACY_BLEND)),
            float(inference.get("pad_value", 0.0)),
        )

    def to_inference(self) -> dict:
        """The manifest keys of this spec."""
        return {
            "roi_size": list(self.roi),
            "overlap": float(self.overlap),
            "blend": self.blend,
            "pad_value": float(self.pad_value),
        }


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis of length ``size >= roi``."""
    if roi > size:
        raise ValueError(f"roi {roi} larger than the (padded) axis {size}")
    if roi == size:
        return [0]
    stride = max(int(roi * (1.0 - overlap)), 1)
    n = math.ceil((size - roi) / stride) + 1
    return sorted({min(i * stride, size - roi) for i in range(n)})


def blend_weights(roi: Sequence[int], blend: str) -> np.ndarray:
    """Per-voxel weights of one window, float32, strictly positive."""
    roi = tuple(int(r) for r in roi)
    if blend == "constant":
        return np.ones(roi, np.float32)
    if blend != "gaussian":
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    w = np.ones((), np.float32)
    for r in roi:
        i = np.arange(r, dtype=np.float32) - (r - 1) / 2.0
        w = w[..., None] * np.exp(i**2 / (-2.0 * (SIGMA_SCALE * r) ** 2)).astype(np.float32)
    return np.maximum(w, max(float(w.min()), MIN_WEIGHT)).astype(np.float32)


def sliding_window(
    volume: np.ndarray,
    spec: WindowSpec,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    batch: int = 4,
) -> np.ndarray:
    """Run ``predict`` on overlapping windows of ``volume`` and stitch the outputs.

    Args:
        volume: ``(C, X, Y, Z)`` model input of one study.
        spec: tiling and blending.
        predict: ``(B, C, *roi) -> (B, C_out, *roi)``.
        batch: windows per ``predict`` call (the model must not mix samples of a batch).

    Returns:
        ``(C_out, X, Y, Z)`` float32.

    Raises:
        ValueError: a volume of the wrong rank, ``batch < 1``, or a ``predict`` output of the
            wrong shape.
    """
    roi = spec.roi
    if volume.ndim != len(roi) + 1:
        raise ValueError(f"volume must be (C, X, Y, Z), got shape {tuple(volume.shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    spatial = volume.shape[1:]
    lo = [max(r - s, 0) // 2 for r, s in zip(roi, spatial, strict=True)]
    hi = [max(r - s, 0) - a for r, s, a in zip(roi, spatial, lo, strict=True)]
    x = volume
    if any(lo) or any(hi):
        pads = [(0, 0)] + list(zip(lo, hi, strict=True))
        x = np.pad(volume, pads, constant_values=spec.pad_value)
    axes = [window_starts(s, r, spec.overlap) for s, r in zip(x.shape[1:], roi, strict=True)]
    grid = list(itertools.product(*axes))
    weights = blend_weights(roi, spec.blend)
    constant = spec.blend == "constant"
    out = count = None
    for k in range(0, len(grid), batch):
        chunk = grid[k : k + batch]
        sl = [tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True)) for st in chunk]
        pred = np.asarray(predict(np.stack([x[(slice(None), *s)] for s in sl])))
        if pred.ndim != len(roi) + 2 or pred.shape[0] != len(chunk) or pred.shape[2:] != roi:
            raise ValueError(
                f"predict returned shape {tuple(pred.shape)} for {len(chunk)} windows of "
                f"{list(roi)}; expected (B, C_out, {', '.join(map(str, roi))})"
            )
        if out is None:
            out = np.zeros((pred.shape[1], *x.shape[1:]), np.float32)
            count = np.zeros(x.shape[1:], np.float32)
        for s, p in zip(sl, pred, strict=True):
            view = out[(slice(None), *s)]
            if constant:
                view += p
                count[s] += 1.0
            else:
                view += p * weights
                count[s] += weights
    out /= count
    crop = tuple(slice(a, a + s) for a, s in zip(lo, spatial, strict=True))
    return out[(slice(None), *crop)]
