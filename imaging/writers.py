"""Write arrays as DICOM files: a CT volume as a series of axial slices, a radiograph as CR or DX.

Files are Explicit VR Little Endian Part-10 files carrying the attributes of their IOD (CT Image,
CR Image, Digital X-Ray Image - For Presentation), so the phantoms can exercise real DICOM readers
and the REST service end to end. UIDs are generated unless given; patient identifiers are the
placeholders passed in (``"ANON"`` by default).
"""

from __future__ import annotations

import datetime as _dt
import io
import zipfile
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from .image import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
#: (center, width) HU window written into CT files
CT_WINDOW = (-600.0, 1500.0)


def _base_dataset(sop_class: str, sop_uid: str, modality: str, patient_id: str) -> Dataset:
    """Patient, study-independent and SOP Common attributes shared by every file written here."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    now = _dt.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.SeriesNumber = 1
    ds.Manufacturer = "anatomix"
    ds.ManufacturerModelName = "synthetic phantom"
    ds.SamplesPerPixel = 1
    ds.BurnedInAnnotation = "NO"
    return ds


def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def ct_slice_datasets(
    volume: Volume,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "ANON",
    series_description: str = "anatomix phantom",
    rescale: tuple[float, float] = (1.0, -1024.0),
) -> list[Dataset]:
    """One CT Image Storage dataset per slice ``d`` of ``volume`` (see :func:`write_ct_series`)."""
    vox = np.asarray(volume.voxels, dtype=np.float64)
    if vox.ndim != 3:
        raise ValueError(f"volume.voxels must be (D, H, W), got shape {vox.shape}")
    aff = np.asarray(volume.affine, dtype=np.float64)
    norms = np.linalg.norm(aff[:3, :3], axis=0)
    if not np.allclose(norms, volume.spacing, rtol=1e-4, atol=1e-6):
        raise ValueError(
            f"volume.affine column lengths {norms.round(4).tolist()} disagree with "
            f"volume.spacing {list(volume.spacing)}; build the affine from the spacing"
        )
    slope, intercept = float(rescale[0]), float(rescale[1])
    stored = np.rint((vox - intercept) / slope)
    unsigned = stored.min() >= 0
    lo, hi = (0, 65535) if unsigned else (-32768, 32767)
    stored = np.clip(stored, lo, hi).astype(np.uint16 if unsigned else np.int16)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid(entropy_srcs=[series_uid, "frame"])
    row_dir, col_dir = aff[:3, 2] / norms[2], aff[:3, 1] / norms[1]
    D, H, W = vox.shape
    out = []
    for d in range(D):
        sop_uid = generate_uid(entropy_srcs=[series_uid, str(d)])
        ds = _base_dataset(CT_IMAGE_STORAGE, sop_uid, "CT", patient_id)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SeriesDescription = series_description
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "CHEST"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.InstanceNumber = d + 1
        ds.AcquisitionNumber = 1
        ds.KVP = ""
        pos = aff @ np.array([d, 0.0, 0.0, 1.0])
        ds.ImagePositionPatient = [f"{v:.6g}" for v in pos[:3]]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*row_dir, *col_dir)]
        normal = np.cross(row_dir, col_dir)
        ds.SliceLocation = f"{float(pos[:3] @ normal):.6g}"
        ds.PixelSpacing = [f"{norms[1]:.6g}", f"{norms[2]:.6g}"]  # row spacing, column spacing
        ds.SliceThickness = f"{norms[0]:.6g}"
        ds.SpacingBetweenSlices = f"{norms[0]:.6g}"
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = H, W
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.RescaleIntercept = f"{intercept:.6g}"
        ds.RescaleSlope = f"{slope:.6g}"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = f"{CT_WINDOW[0]:g}", f"{CT_WINDOW[1]:g}"
        ds.PixelData = np.ascontiguousarray(stored[d]).tobytes()
        out.append(ds)
    return out


def ct_series_bytes(volume: Volume, **kwargs) -> list[bytes]:
    """The files :func:`write_ct_series` would write, as bytes in slice order (for uploads,
    study archives and tests); ``kwargs`` as :func:`ct_slice_datasets`."""
    return [_to_bytes(ds) for ds in ct_slice_datasets(volume, **kwargs)]


def study_zip(files: list[bytes], folder: str = "ct") -> bytes:
    """``files`` as a deflated ZIP (``folder/0000.dcm``, ...): the study archive a PACS export
    or ``/v1/ct/segment`` takes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, data in enumerate(files):
            zf.writestr(f"{folder}/{i:04d}.dcm", data)
    return buf.getvalue()


def write_ct_series(
    volume: Volume,
    out_dir,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "ANON",
    series_description: str = "anatomix phantom",
    rescale: tuple[float, float] = (1.0, -1024.0),
) -> list[Path]:
    """Write ``volume`` (HU, ``(D, H, W)``) as one CT Image Storage file per slice.

    Geometry comes from ``volume.affine``: slice ``d`` is at ``affine @ (d, 0, 0, 1)``, rows run
    along the ``h`` column of the affine and columns along ``w``. Stored values are
    ``round((HU - intercept) / slope)`` (uint16 when none is negative, int16 otherwise, clipped to
    the type), so reading back with the rescale gives the HU within ``slope / 2``.

    Args:
        volume: HU voxels; ``affine`` column lengths must equal ``spacing``.
        out_dir: directory, created if missing; files are ``slice_0001.dcm``, ... (``d`` order).
        study_uid / series_uid: reuse UIDs (generated when None).
        patient_id: written as PatientID and PatientName.
        rescale: ``(RescaleSlope, RescaleIntercept)``.

    Returns:
        The written paths, in slice order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = ct_slice_datasets(
        volume,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=patient_id,
        series_description=series_description,
        rescale=rescale,
    )
    paths = []
    for i, ds in enumerate(datasets):
        path = out_dir / f"slice_{i + 1:04d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def radiograph_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    spacing: tuple[float, float] | None = None,
    bits: int = 12,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "ANON",
    series_description: str = "anatomix phantom radiograph",
) -> Dataset:
    """A CR or DX (For Presentation) dataset of a PA chest film (see :func:`write_radiograph`)."""
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be 'CR' or 'DX', got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be 8..16, got {bits}")
    px = np.asarray(pixels, dtype=np.float64)
    if px.ndim != 2:
        raise ValueError(f"pixels must be (H, W), got shape {px.shape}")
    top = 2**bits - 1
    stored = np.rint(np.clip(px, 0.0, 1.0) * top).astype(np.int64)
    if photometric == "MONOCHROME1":
        stored = top - stored  # a viewer's MONOCHROME1 inversion brings back higher = denser
    allocated = 8 if bits <= 8 else 16
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_PRESENTATION_STORAGE
    series_uid = series_uid or generate_uid()
    ds = _base_dataset(
        sop_class, generate_uid(entropy_srcs=[series_uid, "0"]), modality, patient_id
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), series_uid
    ds.SeriesDescription = series_description
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]  # PA film hung facing the patient: rows to the left, down
    ds.ImageLaterality = "U"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = px.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = f"{(top + 1) / 2:g}", f"{top + 1:g}"
    if spacing is not None:
        ds.ImagerPixelSpacing = [f"{float(s):.6g}" for s in spacing]
        ds.PixelSpacing = [f"{float(s):.6g}" for s in spacing]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        # -1: higher stored value = less x-ray reaching the detector (denser), MONOCHROME2 storage
        ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
        ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
        ds.LossyImageCompression = "00"
        ds.DetectorType = "DIRECT"
        ds.AcquisitionContextSequence = []
        ds.AnatomicRegionSequence = []
    dtype = np.uint8 if allocated == 8 else np.uint16
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()
    return ds


def write_radiograph(
    pixels: np.ndarray,
    path,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    spacing: tuple[float, float] | None = None,
    bits: int = 12,
    **kwargs,
) -> Path:
    """Write a film (float ``(H, W)`` in [0, 1], higher = denser) as a CR or DX DICOM file.

    Stored values are ``round(pixels * (2**bits - 1))``, inverted (``2**bits - 1 - v``) for
    MONOCHROME1 so that a reader applying the MONOCHROME1 inversion gets higher = denser back.
    CR uses Computed Radiography Image Storage, DX uses Digital X-Ray Image Storage - For
    Presentation. ``spacing`` ``(row, col)`` mm goes into ImagerPixelSpacing and PixelSpacing
    (both omitted when None, which a DX file then lacks although the IOD requires it).

    Args:
        kwargs: ``study_uid``, ``series_uid``, ``patient_id``, ``series_description``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    ds = radiograph_dataset(
        pixels, modality=modality, photometric=photometric, spacing=spacing, bits=bits, **kwargs
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def radiograph_bytes(pixels: np.ndarray, **kwargs) -> bytes:
    """The bytes of the file :func:`write_radiograph` would write (for HTTP uploads in tests)."""
    return _to_bytes(radiograph_dataset(pixels, **kwargs))
