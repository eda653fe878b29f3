"""The imaging layer's in-memory results: a 2D/multi-frame :class:`Image`, a 3D :class:`Volume`.

Both carry pixels with physical meaning (HU for CT, "higher is denser" for radiographs) and the
geometry needed to relate a voxel to millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Image:
    """One decoded DICOM image.

    Attributes:
        pixels: float32, ``(H, W)`` or ``(frames, H, W)``. CT is in Hounsfield units
            (RescaleSlope and RescaleIntercept applied); MONOCHROME1 is inverted so that higher
            is denser everywhere.
        spacing: ``(row, col)`` pixel spacing in mm, ``None`` where the file declares none or 0.
        modality: DICOM Modality (``"CT"``, ``"CR"``, ...), ``""`` if absent.
        photometric: the file's PhotometricInterpretation before any conversion.
        window_center / window_width: the first valid VOI window of the file, in pixel units
            (mirrored with MONOCHROME1's inversion), if present.
        study_uid / series_uid / sop_uid: instance UIDs (they identify the image, not the patient).
        meta: further technical attributes (transfer syntax, bits stored, rescale, ...), JSON-able;
            the VOI LUT Function, VOI LUT and MONOCHROME1 mirror that :func:`imaging.voi.to_unit`
            uses are there too (``voi_function``, ``voi_lut``, ``monochrome1_mirror``).
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None = None
    modality: str = ""
    photometric: str = ""
    window_center: float | None = None
    window_width: float | None = None
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def is_multiframe(self) -> bool:
        return self.pixels.ndim == 3


@dataclass
class Volume:
    """A 3D scalar volume in ``(D, H, W)`` order (slice, row, column).

    Attributes:
        voxels: float32 ``(D, H, W)``; HU for CT.
        spacing: ``(d, h, w)`` voxel size in mm (slice spacing, row spacing, column spacing).
        affine: 4×4 matrix mapping a voxel index ``(d, h, w, 1)`` to patient LPS coordinates in mm.
        modality: DICOM Modality where known.
        series_uid / study_uid: identifiers of the series (empty for NIfTI/MetaImage input).
        meta: further technical attributes.
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    modality: str = ""
    series_uid: str = ""
    study_uid: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)  # type: ignore[return-value]

    @property
    def origin(self) -> np.ndarray:
        """Patient-space position (LPS, mm) of voxel ``(0, 0, 0)``."""
        return self.affine[:3, 3].copy()
