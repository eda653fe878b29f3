"""Read NIfTI (``.nii``, ``.nii.gz``) and MetaImage (``.mhd``/``.raw``, ``.mha``) volumes.

Both become the same :class:`~imaging.image.Volume` as a DICOM series: voxels ``(D, H, W)``
(slice, row, column) and an affine from voxel index to patient **LPS** millimetres, the DICOM
convention. NIfTI stores RAS, so its first two world axes are negated.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import CorruptFileError, ImagingError, UnsupportedFormatError
from .image import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mhd", ".mha")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# (x, y, z) index order ↔ (w, h, d): reverse the three axes, keep the homogeneous one.
XYZ_TO_DHW = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI or MetaImage file; raises :class:`UnsupportedFormatError` for other suffixes."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise ImagingError(f"no such file: {path.name!r}")
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    if name.endswith(METAIMAGE_SUFFIXES):
        return _read_metaimage(path)
    raise UnsupportedFormatError(
        f"{path.name!r}: volume files must end in {NIFTI_SUFFIXES + METAIMAGE_SUFFIXES}; "
        "use imaging.series.read_series for DICOM"
    )


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))  # applies scl_slope / scl_inter
    except Exception as exc:
        raise CorruptFileError(
            f"{path.name!r} is not a readable NIfTI file ({type(exc).__name__})"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UnsupportedFormatError(
            f"{path.name!r} holds a {data.ndim}-D image; a 3-D volume is needed"
        )
    affine = RAS_TO_LPS @ img.affine @ XYZ_TO_DHW
    voxels = np.ascontiguousarray(data.transpose(2, 1, 0))
    return Volume(
        voxels=voxels, spacing=_column_norms(affine), affine=affine, meta={"source_format": "nifti"}
    )


def _read_metaimage(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as exc:  # SimpleITK raises RuntimeError with its own text
        raise CorruptFileError(
            f"{path.name!r} is not a readable MetaImage file (is its .raw beside it?) "
            f"({type(exc).__name__})"
        ) from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedFormatError(f"{path.name!r} is not a 3-D scalar volume")
    voxels = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x) = (D, H, W)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)  # columns: x, y, z
    sx, sy, sz = img.GetSpacing()
    affine = np.eye(4)
    affine[:3, 0] = direction[:, 2] * sz
    affine[:3, 1] = direction[:, 1] * sy
    affine[:3, 2] = direction[:, 0] * sx
    affine[:3, 3] = img.GetOrigin()  # ITK's physical space is LPS already
    return Volume(
        voxels=np.ascontiguousarray(voxels),
        spacing=(sz, sy, sx),
        affine=affine,
        meta={"source_format": "metaimage"},
    )


def _column_norms(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore[return-value]
