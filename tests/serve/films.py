"""Phantom films the serving tests share (a helper module, not a test module)."""

from __future__ import annotations

import numpy as np

from imaging.phantoms.radiograph import GAIN, GAMMA, MU_WATER, _resample, resample_taps


def lateral_film(ct, size=(160, 140)) -> np.ndarray:
    """A phantom lateral film: :func:`make_radiograph`'s projection along the left-right axis."""
    vol = ct.volume
    D, H, _ = vol.shape
    mu = np.maximum(MU_WATER * (1.0 + vol.voxels.astype(np.float64) / 1000.0), 0.0)
    line = mu.sum(axis=2) * vol.spacing[2]
    taps = resample_taps(D, size[0]), resample_taps(H, size[1])
    return np.clip((1.0 - np.exp(-GAIN * _resample(line, *taps))) ** GAMMA, 0, 1).astype("f4")
