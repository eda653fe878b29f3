"""Assemble DICOM slices into a 3D :class:`~imaging.image.Volume`, and read NIfTI/MetaImage volumes.

``read_series`` groups files by SeriesInstanceUID, orders slices along the slice normal (the cross
product of the ImageOrientationPatient cosines) by ImagePositionPatient, checks that size, pixel
spacing, orientation and slice spacing agree, and returns a ``(D, H, W)`` HU volume with a
voxel→patient (LPS, mm) affine. InstanceNumber orders slices only when positions are missing.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dicom import read_image
from .errors import InconsistentSeriesError, NoPixelDataError, NotDicomError
from .image import Image, Volume
from .source import Source

#: Relative tolerance on slice-spacing uniformity (1 %) and absolute one on direction cosines.
SPACING_RTOL = 0.01
ORIENTATION_ATOL = 1e-4
DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class _Slice:
    pixels: np.ndarray  # (H, W) float32
    position: np.ndarray | None  # (3,) LPS mm
    orientation: np.ndarray | None  # (6,)
    instance: int | None
    image: Image


def read_series(files: Source | Iterable[Source], *, series_uid: str | None = None) -> Volume:
    """Read one DICOM series into a ``(D, H, W)`` volume.

    Args:
        files: a directory (searched recursively; non-image files such as DICOMDIR are skipped),
            or paths/bytes of the slice files in any order.
        series_uid: which series to return when the files hold several.

    Raises:
        InconsistentSeriesError: several series and none chosen, or slices that disagree in size,
            pixel spacing or orientation, duplicate positions, or non-uniform slice spacing.
        ImagingError: from :func:`~imaging.dicom.read_image` for a bad file.
    """
    return assemble_series(_read_all(files), series_uid)


def assemble_series(images: list[Image], series_uid: str | None = None) -> Volume:
    """Assemble already decoded images of one series into a ``(D, H, W)`` volume, for callers
    that decode each file themselves (under their own limits); :func:`read_series` without the
    reading. ``series_uid`` chooses among several series; errors as for :func:`read_series`."""
    groups: dict[str, list[Image]] = defaultdict(list)
    for image in images:
        groups[image.series_uid].append(image)
    if series_uid is not None:
        if series_uid not in groups:
            raise InconsistentSeriesError("the requested series is not among the files")
        chosen = groups[series_uid]
    elif len(groups) > 1:
        raise InconsistentSeriesError(
            f"the files hold {len(groups)} series; choose one with series_uid "
            "(see imaging.series.list_series)"
        )
    elif not groups:
        raise InconsistentSeriesError("no image files were given")
    else:
        chosen = next(iter(groups.values()))
    return _assemble([s for image in chosen for s in _slices_of(image)])


def list_series(files: Source | Iterable[Source]) -> dict[str, int]:
    """Map SeriesInstanceUID → number of image files, to choose from before ``read_series``."""
    counts: dict[str, int] = defaultdict(int)
    for image in _read_all(files):
        counts[image.series_uid] += 1
    return dict(counts)


def _read_all(files) -> list[Image]:
    if isinstance(files, (str, os.PathLike)) and Path(files).is_dir():
        images = []
        for path in sorted(p for p in Path(files).rglob("*") if p.is_file()):
            try:
                images.append(read_image(path))
            except (NotDicomError, NoPixelDataError):
                continue  # DICOMDIR, reports, stray files beside the slices
        return images
    if isinstance(files, (str, os.PathLike, bytes, bytearray)) or hasattr(files, "read"):
        files = [files]
    return [read_image(f) for f in files]


def _slices_of(image: Image) -> list[_Slice]:
    meta = image.meta
    orientation = _array(meta.get("image_orientation"))
    if image.pixels.ndim == 2:
        return [
            _Slice(
                image.pixels,
                _array(meta.get("image_position")),
                orientation,
                meta.get("instance_number"),
                image,
            )
        ]
    positions = meta.get("frame_positions") or [None] * image.pixels.shape[0]
    return [
        _Slice(frame, _array(pos), orientation, k, image)
        for k, (frame, pos) in enumerate(zip(image.pixels, positions, strict=True))
    ]


def _array(values) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64)


def _assemble(slices: list[_Slice]) -> Volume:
    first = slices[0]
    shapes = {s.pixels.shape for s in slices}
    if len(shapes) > 1:
        raise InconsistentSeriesError(f"slices differ in size: {sorted(shapes)}")
    spacings = {s.image.spacing for s in slices}
    if len(spacings) > 1:
        raise InconsistentSeriesError("slices differ in pixel spacing")
    row_sp, col_sp = first.image.spacing or (1.0, 1.0)

    orientations = [s.orientation for s in slices]
    if any(o is None for o in orientations):
        orientation = np.asarray(DEFAULT_ORIENTATION)
    else:
        orientation = orientations[0]
        if any(not np.allclose(o, orientation, atol=ORIENTATION_ATOL) for o in orientations):
            raise InconsistentSeriesError("slices differ in orientation (ImageOrientationPatient)")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)

    ordered, step = _order(slices, normal)
    origin = ordered[0].position if ordered[0].position is not None else np.zeros(3)
    affine = np.eye(4)
    affine[:3, 0] = step  # d: along the slice stack
    affine[:3, 1] = col_dir * row_sp  # h: down the rows
    affine[:3, 2] = row_dir * col_sp  # w: along a row
    affine[:3, 3] = origin
    slice_sp = float(np.linalg.norm(step))
    voxels = np.stack([s.pixels for s in ordered]).astype(np.float32, copy=False)
    return Volume(
        voxels=voxels,
        spacing=(slice_sp, float(row_sp), float(col_sp)),
        affine=affine,
        modality=first.image.modality,
        series_uid=first.image.series_uid,
        study_uid=first.image.study_uid,
        meta={
            "frame_of_reference_uid": first.image.meta.get("frame_of_reference_uid", ""),
            "ordered_by": "position" if first.position is not None else "instance_number",
            "pixel_spacing_known": first.image.spacing is not None,
            "sop_uids": [s.image.sop_uid for s in ordered],  # slice d came from this instance
        },
    )


def _order(slices: list[_Slice], normal: np.ndarray) -> tuple[list[_Slice], np.ndarray]:
    """Sort slices along ``normal`` and return them with the voxel step vector (mm)."""
    if all(s.position is not None for s in slices):
        along = np.array([float(np.dot(s.position, normal)) for s in slices])
        order = np.argsort(along, kind="stable")
        ordered = [slices[i] for i in order]
        if len(ordered) == 1:
            return ordered, normal * _thickness(ordered[0])
        gaps = np.diff(along[order])
        if np.any(gaps < 1e-3):
            raise InconsistentSeriesError("two slices share one position (duplicate slices?)")
        if np.ptp(gaps) > SPACING_RTOL * np.mean(gaps):
            raise InconsistentSeriesError(
                f"slice spacing is not uniform ({gaps.min():.3f}–{gaps.max():.3f} mm): "
                "missing slices or a mixed series"
            )
        step = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
        return ordered, step
    if any(s.instance is None for s in slices):
        raise InconsistentSeriesError(
            "slices have neither ImagePositionPatient nor InstanceNumber: their order is unknown"
        )
    ordered = sorted(slices, key=lambda s: s.instance)
    if len({s.instance for s in slices}) != len(slices):
        raise InconsistentSeriesError("two slices share one InstanceNumber")
    return ordered, normal * _thickness(ordered[0])


def _thickness(s: _Slice) -> float:
    thickness = s.image.meta.get("slice_thickness")
    return float(thickness) if thickness and thickness > 0 else 1.0


# Volumes from other formats and resampling share the Volume type; exported here for one import.
from .resample import resample_to_spacing  # noqa: E402
from .volume_io import read_volume  # noqa: E402

__all__ = ["assemble_series", "list_series", "read_series", "read_volume", "resample_to_spacing"]
