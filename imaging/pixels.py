"""Pixel-value transforms that turn stored DICOM values into physically meaningful floats.

These are the documented rules of :func:`imaging.dicom.read_image`, kept separate so that tests and
other readers apply exactly the same ones:

1. **Colour → grayscale** (only when colour input is accepted): pydicom's ``pixel_array`` yields RGB
   for RGB and YBR_* data (YCbCr is converted by pydicom); PALETTE COLOR goes through its
   lookup table.
   The gray value is the ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``.
2. **MONOCHROME1 inversion** in the stored-value domain over the ``BitsStored`` range
   (``v → 2**BitsStored − 1 − v`` unsigned, ``v → −1 − v`` two's complement), so that afterwards
   higher always means denser, as in MONOCHROME2.
3. **Modality LUT**: ``RescaleSlope · v + RescaleIntercept`` (CT → Hounsfield units), taken from the
   top-level attributes or, for enhanced multi-frame objects, from the functional groups; a Modality
   LUT Sequence is applied with pydicom's ``apply_modality_lut``.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

#: ITU-R BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

GRAY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
COLOR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


def to_luma(rgb: np.ndarray) -> np.ndarray:
    """Return BT.601 luma (float32) of an ``(..., 3)`` RGB array."""
    return (rgb.astype(np.float64) @ LUMA_WEIGHTS).astype(np.float32)


def invert_monochrome1(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Invert stored MONOCHROME1 values over the ``bits_stored`` range so higher means denser.

    Integer in, integer out (int32; int64 for 32-bit data): a Modality LUT can still index with it.
    """
    wide = arr.astype(np.int32 if bits_stored < 32 else np.int64)
    return -1 - wide if signed else (2**bits_stored - 1) - wide


def invert_monochrome1_float(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """:func:`invert_monochrome1` computed straight into float32 (one pass; exact for values of up
    to 24 bits), for when no Modality LUT needs integer indices."""
    return np.subtract(monochrome1_pivot(bits_stored, signed), arr, dtype=np.float32)


def monochrome1_pivot(bits_stored: int, signed: bool) -> float:
    """The stored-value sum ``v + v'`` preserved by :func:`invert_monochrome1`."""
    return -1.0 if signed else float(2**bits_stored - 1)


def rescale_parameters(ds: Dataset, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(slope, intercept)`` arrays of shape ``(n_frames,)``; identity when absent.

    Looks, in order, at the top-level RescaleSlope/Intercept, the shared functional groups and the
    per-frame functional groups of enhanced multi-frame objects.
    """
    slope = np.ones(n_frames)
    intercept = np.zeros(n_frames)

    def from_item(item: Dataset) -> tuple[float, float] | None:
        if "RescaleSlope" in item or "RescaleIntercept" in item:
            return float(item.get("RescaleSlope", 1.0) or 1.0), float(
                item.get("RescaleIntercept", 0.0) or 0.0
            )
        seq = item.get("PixelValueTransformationSequence")
        if seq:
            return from_item(seq[0])
        return None

    top = from_item(ds)
    if top is not None:
        slope[:], intercept[:] = top
        return slope, intercept
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        found = from_item(shared[0])
        if found is not None:
            slope[:], intercept[:] = found
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) == n_frames:
        for k, item in enumerate(per_frame):
            found = from_item(item)
            if found is not None:
                slope[k], intercept[k] = found
    return slope, intercept


def apply_rescale_frames(arr: np.ndarray, slope: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Apply per-frame linear rescale to ``(F, H, W)`` or ``(H, W)`` (one frame) stored values.

    Values of up to 24 bits are exact in float32, so the arithmetic stays in float32 for them
    (half the memory traffic of float64, and no float64 detour: the factors are applied as Python
    floats or float32, which NumPy does not promote); wider data is computed in float64.
    """
    if arr.dtype.kind in "iu":
        exact32 = arr.dtype.itemsize <= 2 or np.abs(arr).max(initial=0) < 2**24
    else:
        exact32 = arr.dtype == np.float32
    dtype = np.float32 if exact32 else np.float64
    if np.all(slope == 1) and np.all(intercept == 0):
        return arr.astype(dtype, copy=False)
    out = arr.astype(dtype, copy=True)  # our own buffer: scaled in place
    if out.ndim == 2 or np.all(slope == slope[0]) and np.all(intercept == intercept[0]):
        if slope[0] != 1:
            out *= dtype(slope[0])
        if intercept[0] != 0:
            out += dtype(intercept[0])
        return out
    out *= slope.astype(dtype)[:, None, None]
    out += intercept.astype(dtype)[:, None, None]
    return out
