"""Patient-to-patient variation of phantom films: scale, rotation, position and exposure.

The phantom CT stretches every thorax to fill its field of view, so films of different seeds
differ little in where the anatomy sits (position alone matched 57 % of landmarks across
"patients" in issue #18's audit). :func:`vary_radiograph` moves a film as real patients and
exposures differ: a similarity transform about the film centre (scale, in-plane rotation,
shift) and a display gamma, with landmarks and masks moved along. A correspondence benchmark
on varied films cannot be won by predicting the same pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .radiograph import Radiograph


@dataclass(frozen=True)
class Variation:
    """Ranges of the per-patient draw (uniform): ``scale`` and ``gamma`` in log space."""

    scale: tuple[float, float] = (0.85, 1.15)  # thorax size against the film
    rotate_deg: float = 8.0  # ± in-plane rotation (patient not square to the detector)
    shift: float = 0.06  # ± fraction of the side, per axis (positioning)
    gamma: tuple[float, float] = (0.75, 1.33)  # exposure / processing: pixels ** gamma


def _matrix(rng: np.random.Generator, v: Variation) -> tuple[np.ndarray, float]:
    s = float(np.exp(rng.uniform(np.log(v.scale[0]), np.log(v.scale[1]))))
    a = np.deg2rad(rng.uniform(-v.rotate_deg, v.rotate_deg))
    shift = rng.uniform(-v.shift, v.shift, 2)
    g = float(np.exp(rng.uniform(np.log(v.gamma[0]), np.log(v.gamma[1]))))
    m = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.concatenate([m, shift[:, None]], axis=1), g


def _sample(image: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    """Sample ``image`` (H, W) at float ``coords`` (2, H, W) (row, col); 0 outside."""
    h, w = image.shape
    r, c = coords
    if order == 0:
        ri, ci = np.rint(r).astype(np.int64), np.rint(c).astype(np.int64)
        ok = (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
        out = np.zeros(r.shape, image.dtype)
        out[ok] = image[ri[ok], ci[ok]]
        return out
    r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    fr, fc = (r - r0).astype(np.float32), (c - c0).astype(np.float32)
    out = np.zeros(r.shape, np.float32)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr, cc = r0 + dr, c0 + dc
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            out[ok] += (wr * wc)[ok] * image[rr[ok], cc[ok]]
    return out


def vary_radiograph(
    xray: Radiograph, rng: np.random.Generator, variation: Variation = Variation()
) -> Radiograph:
    """``xray`` as another patient's film: one draw of :class:`Variation` from ``rng``.

    Film coordinates ``p`` (row, col) about the centre ``c`` map to ``c + M (p - c) + t·side``;
    pixels are resampled bilinearly (0 = air beyond the original film), masks by nearest
    neighbour, and every landmark is moved by the same map (it may leave the film).
    """
    h, w = xray.pixels.shape
    affine, gamma = _matrix(rng, variation)
    m, t = affine[:, :2], affine[:, 2] * np.array([h, w])
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    inv = np.linalg.inv(m)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.stack([rows, cols]).reshape(2, -1) - (centre + t)[:, None]
    src = (inv @ out + centre[:, None]).reshape(2, h, w)
    pixels = np.clip(_sample(xray.pixels.astype(np.float32), src, 1), 0.0, 1.0) ** gamma
    masks = {k: _sample(v.astype(np.uint8), src, 0).astype(bool) for k, v in xray.masks.items()}
    landmarks = {
        k: (m @ (np.asarray(p, float) - centre) + centre + t) for k, p in xray.landmarks.items()
    }
    meta = dict(xray.meta, variation={"affine": affine.tolist(), "gamma": gamma})
    scale = float(np.sqrt(abs(np.linalg.det(m))))  # anatomy grows: fewer mm per pixel
    spacing = (xray.spacing[0] / scale, xray.spacing[1] / scale)
    return replace(
        xray, pixels=pixels.astype(np.float32), spacing=spacing, masks=masks,
        landmarks=landmarks, meta=meta,
    )  # fmt: skip
