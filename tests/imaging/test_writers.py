"""imaging.writers: files read back with pydicom give the written HU / film values and geometry."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread

from imaging.image import Volume
from imaging.writers import (
    CR_IMAGE_STORAGE,
    CT_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    radiograph_bytes,
    write_ct_series,
    write_radiograph,
)


def _axial_volume(shape=(5, 12, 10), spacing=(3.0, 0.8, 0.7), seed=0) -> Volume:
    """A random HU volume with a standard axial affine (d to the feet, h posterior, w left)."""
    rng = np.random.default_rng(seed)
    vox = rng.uniform(-1024, 2000, size=shape).astype(np.float32)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[0, 0, spacing[2]], [0, spacing[1], 0], [-spacing[0], 0, 0]])
    aff[:3, 3] = (-20.0, 15.5, 100.0)
    return Volume(voxels=vox, spacing=spacing, affine=aff, modality="CT")


def test_ct_series_round_trips_hu_and_geometry(tmp_path):
    vol = _axial_volume()
    paths = write_ct_series(vol, tmp_path / "ct", patient_id="PHANTOM1")
    assert len(paths) == vol.shape[0]
    uids = set()
    for d, path in enumerate(paths):
        ds = dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.SOPClassUID == CT_IMAGE_STORAGE == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.InstanceNumber == d + 1
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(hu - vol.voxels[d]).max() <= 0.5 + 1e-3
        expected = vol.affine @ np.array([d, 0, 0, 1.0])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected[:3])
        np.testing.assert_allclose(
            [float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0]
        )
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.8, 0.7])
        assert float(ds.SliceThickness) == pytest.approx(3.0)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(3.0)
        assert (ds.Rows, ds.Columns) == vol.shape[1:]
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "FrameOfReferenceUID",
            "ImageType",
        ):
            assert keyword in ds
        uids.add(ds.SOPInstanceUID)
        assert ds.PatientID == "PHANTOM1"
    assert len(uids) == len(paths)  # one instance UID per slice


def test_ct_series_rescale_and_negative_values(tmp_path):
    vol = _axial_volume(shape=(2, 6, 7), seed=1)
    paths = write_ct_series(
        vol, tmp_path, rescale=(0.5, 0.0), study_uid="1.2.3", series_uid="1.2.3.4"
    )
    ds = dcmread(paths[1])
    assert ds.PixelRepresentation == 1  # negative stored values need int16
    assert ds.StudyInstanceUID == "1.2.3" and ds.SeriesInstanceUID == "1.2.3.4"
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.abs(hu - vol.voxels[1]).max() <= 0.25 + 1e-3


def test_ct_series_rejects_affine_that_contradicts_spacing(tmp_path):
    vol = Volume(voxels=np.zeros((2, 4, 4), np.float32), spacing=(2.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        write_ct_series(vol, tmp_path)


@pytest.mark.parametrize("modality", ["CR", "DX"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_radiograph_round_trip(tmp_path, modality, photometric, bits):
    rng = np.random.default_rng(bits)
    px = rng.uniform(0, 1, size=(33, 20))
    path = write_radiograph(
        px,
        tmp_path / "rg.dcm",
        modality=modality,
        photometric=photometric,
        spacing=(0.4, 0.5),
        bits=bits,
    )
    ds = dcmread(path)
    top = 2**bits - 1
    value = ds.pixel_array.astype(np.int64)
    if photometric == "MONOCHROME1":
        value = top - value
    np.testing.assert_array_equal(value, np.round(px * top).astype(np.int64))
    assert ds.SOPClassUID == (CR_IMAGE_STORAGE if modality == "CR" else DX_PRESENTATION_STORAGE)
    assert ds.Modality == modality and ds.PhotometricInterpretation == photometric
    assert ds.BitsStored == bits and ds.ViewPosition == "PA"
    np.testing.assert_allclose([float(v) for v in ds.ImagerPixelSpacing], [0.4, 0.5])
    if modality == "DX":
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.PixelIntensityRelationship == "LOG"


def test_radiograph_bytes_and_no_spacing(tmp_path):
    data = radiograph_bytes(np.linspace(0, 1, 64).reshape(8, 8), modality="CR")
    path = tmp_path / "b.dcm"
    path.write_bytes(data)
    ds = dcmread(path)
    assert ds.Modality == "CR" and "ImagerPixelSpacing" not in ds and "PixelSpacing" not in ds
    assert ds.pixel_array[-1, -1] == 4095 and ds.pixel_array[0, 0] == 0


def test_radiograph_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="modality"):
        write_radiograph(np.zeros((4, 4)), tmp_path / "x.dcm", modality="MR")
    with pytest.raises(ValueError, match="photometric"):
        write_radiograph(np.zeros((4, 4)), tmp_path / "x.dcm", photometric="RGB")
