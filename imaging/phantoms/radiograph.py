"""``make_radiograph``: a digitally reconstructed PA chest radiograph of a phantom.

Rays run along the anterior-posterior axis (``H``) of the CT, so the film's rows are the CT slices
(superior at the top) and its columns the CT columns (patient right on the viewer's left, as a PA
film is hung). Resampling to the output size is a fixed linear filter applied with gathers, so every
output pixel depends on a known set of projected pixels; finding masks are carried through that
dependency exactly, which keeps "a finding changes the film only inside its mask" true bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..image import Image
from .ct import ChestPhantom

#: linear attenuation of water (1/mm) at a chest-film effective energy (~60 keV)
MU_WATER = 0.02
#: display: pixel = (1 - exp(-GAIN * line integral)) ** GAMMA, so lungs are dark and bone bright
GAIN = 0.3
GAMMA = 2.0


@dataclass
class Radiograph:
    """A synthetic PA chest radiograph, higher = denser (MONOCHROME2 convention).

    Attributes:
        pixels: float32 ``(H, W)`` in [0, 1].
        spacing: ``(row, col)`` pixel size in mm.
        masks: bool ``(H, W)``: per finding, the pixels whose value depends on any voxel of the
            finding's CT mask; ``"anatomy/<organ>"`` projections (pixels at least half covered).
        labels: 0/1 for every finding name (as the CT's).
        landmarks: float ``(2,)`` ``(row, col)`` pixel coordinates, the CT landmarks projected.
        seed: the patient seed.
    """

    pixels: np.ndarray
    spacing: tuple[float, float]
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    landmarks: dict[str, np.ndarray]
    seed: int
    meta: dict = field(default_factory=dict)

    def to_image(self, modality: str = "DX") -> Image:
        """The radiograph as an :class:`imaging.image.Image` (MONOCHROME2, spacing in mm)."""
        return Image(
            pixels=self.pixels.copy(),
            spacing=self.spacing,
            modality=modality,
            photometric="MONOCHROME2",
            window_center=0.5,
            window_width=1.0,
            # the identity on [0, 1] (LINEAR would be a step: DICOM's LINEAR uses width − 1)
            meta={**self.meta, "voi_function": "LINEAR_EXACT"},
        )


def resample_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangle-filter taps mapping ``n_in`` samples to ``n_out`` (antialiased when shrinking).

    Output sample ``i`` is centred on input coordinate ``(i + 0.5) * n_in / n_out - 0.5``.

    Returns:
        indices ``(n_out, K)`` and weights ``(n_out, K)`` (rows sum to 1, edges replicated).
    """
    scale = n_in / n_out
    support = max(1.0, scale)
    center = (np.arange(n_out) + 0.5) * scale - 0.5
    k = int(np.ceil(2 * support)) + 1
    j = np.floor(center - support).astype(int)[:, None] + 1 + np.arange(k)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs(j - center[:, None]) / support)
    w /= w.sum(axis=1, keepdims=True)
    return np.clip(j, 0, n_in - 1), w


def _resample(a: np.ndarray, taps_r, taps_c) -> np.ndarray:
    """Apply row then column taps to ``a`` ``(R, C)`` with gathers (no BLAS: exact zeros stay)."""
    (ir, wr), (ic, wc) = taps_r, taps_c
    rows = np.zeros((ir.shape[0], a.shape[1]), dtype=np.float64)
    for k in range(ir.shape[1]):
        rows += wr[:, k, None] * a[ir[:, k], :]
    out = np.zeros((ir.shape[0], ic.shape[0]), dtype=np.float64)
    for k in range(ic.shape[1]):
        out += wc[None, :, k] * rows[:, ic[:, k]]
    return out


def _depends(m: np.ndarray, taps_r, taps_c) -> np.ndarray:
    """Output pixels whose resampled value uses (non-zero weight) any True pixel of ``m``."""
    (ir, wr), (ic, wc) = taps_r, taps_c
    rows = np.zeros((ir.shape[0], m.shape[1]), dtype=bool)
    for k in range(ir.shape[1]):
        rows |= (wr[:, k, None] > 0) & m[ir[:, k], :]
    out = np.zeros((ir.shape[0], ic.shape[0]), dtype=bool)
    for k in range(ic.shape[1]):
        out |= (wc[None, :, k] > 0) & rows[:, ic[:, k]]
    return out


def voxel_to_pixel(dhw, ct_shape, size) -> np.ndarray:
    """Project CT voxel coordinates ``(..., 3)`` ``(d, h, w)`` to film ``(row, col)``."""
    dhw = np.asarray(dhw, dtype=float)
    D, _, W = ct_shape
    rows, cols = size
    r = (dhw[..., 0] + 0.5) * rows / D - 0.5
    c = (dhw[..., 2] + 0.5) * cols / W - 0.5
    return np.stack([r, c], axis=-1)


def make_radiograph(
    ct: ChestPhantom, size=(256, 256), *, gain: float = GAIN, gamma: float = GAMMA
) -> Radiograph:
    """Digitally reconstructed PA radiograph of ``ct`` (higher = denser, values in [0, 1]).

    ``mu = MU_WATER * (1 + HU / 1000)`` clipped at 0 is integrated along the anterior-posterior
    axis (mm), resampled to ``size`` and displayed as ``(1 - exp(-gain * integral)) ** gamma``
    (a fixed, monotonic log-domain mapping: never fitted to the image).

    Args:
        ct: a phantom from :func:`make_chest_ct`.
        size: output ``(rows, cols)``; ``None`` keeps the CT's ``(D, W)`` grid.
        gain / gamma: display gain and contrast.
    """
    vol = ct.volume
    D, _, W = vol.shape
    sd, sh, sw = vol.spacing
    rows, cols = (D, W) if size is None else (int(size[0]), int(size[1]))
    mu = np.maximum(MU_WATER * (1.0 + vol.voxels.astype(np.float64) / 1000.0), 0.0)
    line = mu.sum(axis=1) * sh  # (D, W) line integral along anterior-posterior rays
    taps_r, taps_c = resample_taps(D, rows), resample_taps(W, cols)
    pixels = (1.0 - np.exp(-gain * _resample(line, taps_r, taps_c))) ** gamma
    masks = {}
    for name, m in ct.masks.items():
        proj = m.any(axis=1)
        if name.startswith("anatomy/"):
            masks[name] = _resample(proj.astype(np.float64), taps_r, taps_c) >= 0.5
        else:
            masks[name] = _depends(proj, taps_r, taps_c)
    landmarks = {
        k: voxel_to_pixel(v, vol.shape, (rows, cols)).astype(float) for k, v in ct.landmarks.items()
    }
    return Radiograph(
        pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32),
        spacing=(D * sd / rows, W * sw / cols),
        masks=masks,
        labels=dict(ct.labels),
        landmarks=landmarks,
        seed=ct.seed,
        meta={"view": "PA", "gain": gain, "gamma": gamma, "mu_water_per_mm": MU_WATER},
    )
