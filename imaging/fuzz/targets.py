"""The imaging layer's entry points as fuzz targets, each checking its contract on success.

A target returns on success, raises the layer's typed error unchanged, and raises
``AssertionError`` (a campaign *failure*) when a typed error's message carries a patient
identifier of the seed corpus or a result breaks its documented shape, type or range.
"""

from __future__ import annotations

import numpy as np

from ..dicom import read_image
from ..errors import ImagingError
from ..image import Image, Volume
from ..preprocess import radiograph_to_unit
from ..series import read_series
from .cases import make_case, make_series_case
from .corpus import corpus_identifiers


def _check_private(exc: ImagingError) -> None:
    if any(s in str(exc) for s in corpus_identifiers()):
        raise AssertionError(f"a {exc.code} message carries a patient identifier") from None


def read_image_checked(data: bytes) -> Image:
    """``read_image``: float32 ``(H, W)`` or ``(F, H, W)`` pixels, or a private typed error."""
    try:
        image = read_image(data)
    except ImagingError as exc:
        _check_private(exc)
        raise
    assert image.pixels.dtype == np.float32 and image.pixels.ndim in (2, 3), image.pixels.shape
    assert min(image.pixels.shape) >= 1, image.pixels.shape
    assert np.all(np.isfinite(image.pixels)), "non-finite pixels"
    return image


def read_series_checked(files: list[bytes]) -> Volume:
    """``read_series``: a float32 ``(D, H, W)`` volume with a finite affine."""
    try:
        volume = read_series(files)
    except ImagingError as exc:
        _check_private(exc)
        raise
    assert volume.voxels.ndim == 3 and volume.voxels.dtype == np.float32, volume.voxels.shape
    assert np.all(np.isfinite(volume.affine)), "non-finite affine"
    return volume


def radiograph_unit_checked(data: bytes) -> np.ndarray:
    """``radiograph_to_unit`` after a successful read: float32 ``(H, W)`` in [0, 1]."""
    unit = radiograph_to_unit(read_image_checked(data))
    assert unit.ndim == 2 and unit.dtype == np.float32, unit.shape
    assert np.all((unit >= 0) & (unit <= 1)), "values outside [0, 1] (or NaN)"
    return unit


#: name → (target, case generator) for the campaigns of the test suite and ``bench.fuzz``
TARGETS = {
    "read_image": (read_image_checked, make_case),
    "read_series": (read_series_checked, make_series_case),
    "radiograph_to_unit": (radiograph_unit_checked, make_case),
}
