"""The DICOM VOI transform (PS3.3 C.11.2) of a decoded :class:`~imaging.image.Image`, scaled to
[0, 1] with higher = denser: what a radiograph model reads, in training and serving alike.

:func:`to_unit` follows pydicom's ``apply_voi_lut(arr, ds)`` (``prefer_lut=True``) on the
modality values, divided by its output range:

1. a **VOI LUT Sequence** (its first item) when the file has one: the value ``v`` is looked up
   at ``clip(floor(v − first mapped), 0, entries − 1)`` and divided by ``2**bits − 1`` (``bits``
   from the LUT Descriptor);
2. else the first **window** (Window Center/Width) with its **VOI LUT Function**: ``LINEAR``
   (C.11.2.1.2: center ``c − 0.5``, width ``w − 1``, so ``w`` must be ≥ 1), ``LINEAR_EXACT``
   (C.11.2.1.3.2) or ``SIGMOID`` (C.11.2.1.3.1);
3. else **min–max** over the frame.

A MONOCHROME1 image's pixels are already inverted by :func:`imaging.dicom.read_image`
(``pixel = K − modality value``, its window center mirrored the same way), whereas the VOI
transform applies to the un-inverted values and a display inverts its output: for MONOCHROME1
the result is ``1 −`` pydicom's normalised output, computed on our pixels directly.

The decoder records the VOI attributes in ``Image.meta`` as JSON-able values (the server ships
them between processes): ``voi_function`` (``"LINEAR"`` when absent or unknown), ``voi_lut``
(``None`` or ``{"first_mapped": int, "bits": int, "data": base64 of little-endian uint16}``,
at most 65536 entries) and ``monochrome1_mirror`` (``K`` above; ``None`` unless MONOCHROME1, and
for MONOCHROME1 with a Modality LUT Sequence, where no such ``K`` exists and the VOI LUT is not
used). Malformed values there are ignored: the next rule applies.
"""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np

from .image import Image

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
#: a LUT Descriptor's first value is a US: at most 65536 entries (0 stands for 65536)
MAX_LUT_ENTRIES = 65536
#: LUT entry depths accepted (PS3.3 C.11.2.1.1: 8 or 10–16; 9 is harmless and accepted)
LUT_BITS = range(8, 17)


def to_unit(image: Image) -> np.ndarray:
    """The first frame of ``image`` → ``(H, W)`` float32 in [0, 1], higher = denser.

    VOI LUT Sequence if the image carries one, else its window with its VOI LUT Function, else
    min–max (see the module docstring); a window LINEAR cannot use (width < 1) falls back to
    min–max too. Never raises for odd metadata.
    """
    pixels = image.pixels[0] if image.pixels.ndim == 3 else image.pixels
    pixels = np.asarray(pixels, dtype=np.float32)
    meta = image.meta if isinstance(image.meta, dict) else {}
    inverted = image.photometric == "MONOCHROME1"
    lut = unpack_lut(meta.get("voi_lut"))
    mirror = _finite(meta.get("monochrome1_mirror"))
    if lut is not None and (not inverted or mirror is not None):
        first, bits, data = lut
        return _apply_lut(pixels, first, bits, data, mirror if inverted else None)
    center, width = _finite(image.window_center), _finite(image.window_width)
    function = meta.get("voi_function")
    function = function if function in VOI_FUNCTIONS else "LINEAR"
    if center is not None and width is not None:
        out = _apply_window(pixels, center, width, function, inverted)
        if out is not None:
            return out
    return min_max_unit(pixels)


def min_max_unit(pixels: np.ndarray) -> np.ndarray:
    """``(p − min) / (max − min)`` as float32; zeros for a constant image."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.size == 0:
        return pixels.copy()
    lo, hi = float(pixels.min()), float(pixels.max())
    if not hi > lo:
        return np.zeros_like(pixels)
    if math.isfinite(float(np.float32(hi - lo))):
        out = np.subtract(pixels, np.float32(lo), dtype=np.float32)
        out /= np.float32(hi - lo)
    else:  # a range past float32 (float pixel data): computed in float64
        out = ((pixels.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def _apply_window(
    pixels: np.ndarray, center: float, width: float, function: str, inverted: bool
) -> np.ndarray | None:
    """PS3.3 C.11.2.1.2/C.11.2.1.3 normalised to [0, 1]; None where the window is unusable.

    On MONOCHROME1 pixels ``p = K − v`` with ``center = K − c``, ``1 − f(v)`` is the same
    expression in ``p`` for LINEAR_EXACT and SIGMOID; LINEAR's half-pixel shift changes sign
    and its step (width 1) includes the threshold on the other side.
    """
    if function == "SIGMOID":
        if width <= 0:
            return None
        out = np.subtract(pixels, np.float32(center), dtype=np.float32)
        out *= np.float32(-4.0 / width)
        with np.errstate(over="ignore"):
            np.exp(out, out=out)
        out += np.float32(1.0)
        return np.reciprocal(out, out=out)  # exp overflow: 1 / inf = 0
    if function == "LINEAR":
        if width < 1:
            return None
        center, width = (center + 0.5 if inverted else center - 0.5), width - 1
        if width == 0:  # a step at the center
            step = np.greater_equal(pixels, center) if inverted else np.greater(pixels, center)
            return step.astype(np.float32)
    elif width <= 0:  # LINEAR_EXACT
        return None
    out = np.subtract(pixels, np.float32(center - width / 2), dtype=np.float32)
    out /= np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def _apply_lut(
    pixels: np.ndarray, first: int, bits: int, data: np.ndarray, mirror: float | None
) -> np.ndarray:
    """Look up each pixel as pydicom's ``apply_voi`` does, normalised by ``2**bits − 1``; with
    ``mirror`` (MONOCHROME1), at the modality value ``mirror − p`` and inverted."""
    table = np.minimum(data.astype(np.float32) / np.float32(2**bits - 1), np.float32(1.0))
    if mirror is None:
        index = np.subtract(pixels, np.float32(first), dtype=np.float32)
    else:
        table = np.float32(1.0) - table
        index = np.subtract(np.float32(mirror - first), pixels, dtype=np.float32)
    np.clip(index, 0, len(table) - 1, out=index)  # then truncation is floor, as pydicom's
    return table[index.astype(np.uint16)]  # at most 65536 entries


def pack_lut(first_mapped: int, bits: int, data: np.ndarray) -> dict:
    """A VOI LUT as ``Image.meta["voi_lut"]`` holds it (JSON-able, 2.7 bytes an entry)."""
    raw = np.asarray(data, dtype="<u2").tobytes()
    return {
        "first_mapped": int(first_mapped),
        "bits": int(bits),
        "data": base64.b64encode(raw).decode("ascii"),
    }


def unpack_lut(value) -> tuple[int, int, np.ndarray] | None:
    """``(first_mapped, bits, uint16 entries)`` of a :func:`pack_lut` dict, None if malformed."""
    if not isinstance(value, dict):
        return None
    first, bits, data = value.get("first_mapped"), value.get("bits"), value.get("data")
    if type(first) is not int or type(bits) is not int or not isinstance(data, str):
        return None
    if bits not in LUT_BITS or abs(first) > 2**32 or len(data) > 4 * MAX_LUT_ENTRIES:
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw or len(raw) % 2 or len(raw) > 2 * MAX_LUT_ENTRIES:
        return None
    return first, bits, np.frombuffer(raw, dtype="<u2")


def _finite(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
