"""``read_series``, ``read_volume`` and ``resample_to_spacing`` against independent references.

References: SimpleITK's own DICOM series reader and MetaImage reader, nibabel's NIfTI affine
(converted RAS→LPS by hand here), and hand-computed interpolation values.
"""

from __future__ import annotations

import random

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging import errors
from imaging.image import Volume
from imaging.series import list_series, read_series, read_volume, resample_to_spacing

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_slices(
    tmp_path,
    hu: np.ndarray,
    *,
    spacing=(2.0, 0.7, 0.8),
    origin=(-100.0, -120.0, 50.0),
    orientation=(1, 0, 0, 0, 1, 0),
    series_uid=None,
    positions=True,
    name="s",
):
    """Write ``hu`` (D, H, W) as CT slices with int16 storage, slope 1, intercept -1024."""
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    paths = []
    for k, plane in enumerate(hu):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = CT_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = study_uid + ".1"
        ds.Modality = "CT"
        ds.PatientID = "ANON"
        ds.InstanceNumber = k + 1
        if positions:
            ds.ImagePositionPatient = [
                float(v) for v in np.asarray(origin) + k * spacing[0] * normal
            ]
            ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (np.round(plane) + 1024).astype(np.int16).tobytes()
        path = tmp_path / f"{name}{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def random_hu(shape=(6, 10, 12), seed=0):
    return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.float32)


def sitk_reference(paths):
    """SimpleITK's series reader: voxels (z, y, x) and its LPS geometry."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    return reader.Execute()


@pytest.mark.parametrize(
    "orientation",
    [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (1, 0, 0, 0, 0, -1)],  # axial, flipped, coronal
)
def test_series_matches_simpleitk_with_shuffled_files(tmp_path, orientation):
    hu = random_hu()
    paths = write_slices(tmp_path, hu, orientation=orientation)
    shuffled = paths[:]
    random.Random(1).shuffle(shuffled)
    vol = read_series(shuffled)
    ref = sitk_reference(sorted(paths, key=lambda p: p.name))  # SimpleITK wants them in order
    ref_vox = sitk.GetArrayFromImage(ref).astype(np.float32)
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    sx, sy, sz = ref.GetSpacing()
    # SimpleITK orders along its own normal; express both volumes as world-space point sets.
    np.testing.assert_allclose(vol.affine[:3, 3], ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 0], direction[:, 2] * sz, atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 1], direction[:, 1] * sy, atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 2], direction[:, 0] * sx, atol=1e-4)
    np.testing.assert_array_equal(vol.voxels, ref_vox)
    np.testing.assert_array_equal(vol.voxels, hu)  # written in increasing position order
    assert vol.spacing == pytest.approx((2.0, 0.7, 0.8))


def test_directory_with_stray_files_and_instance_number_fallback(tmp_path):
    hu = random_hu(seed=2)
    write_slices(tmp_path, hu, positions=False)
    (tmp_path / "README").write_text("not dicom")
    vol = read_series(tmp_path)
    np.testing.assert_array_equal(vol.voxels, hu)
    assert vol.meta["ordered_by"] == "instance_number"
    assert vol.spacing[0] == pytest.approx(2.0)  # from SliceThickness


def test_several_series_need_a_choice(tmp_path):
    a = write_slices(tmp_path, random_hu(seed=3), name="a")
    b = write_slices(tmp_path, random_hu(seed=4), name="b")
    uid_b = pydicom.dcmread(b[0]).SeriesInstanceUID
    counts = list_series(tmp_path)
    assert sorted(counts.values()) == [6, 6]
    with pytest.raises(errors.InconsistentSeriesError):
        read_series(a + b)
    np.testing.assert_array_equal(read_series(a + b, series_uid=uid_b).voxels, random_hu(seed=4))


def test_inconsistent_series_are_refused(tmp_path):
    paths = write_slices(tmp_path, random_hu(seed=5))
    with pytest.raises(errors.InconsistentSeriesError, match="not uniform"):
        read_series(paths[:2] + paths[3:])  # a missing slice
    with pytest.raises(errors.InconsistentSeriesError, match="position"):
        read_series(paths + [paths[0]])  # a duplicate
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(paths[1])
    with pytest.raises(errors.InconsistentSeriesError, match="orientation"):
        read_series(paths)
    other = write_slices(
        tmp_path, random_hu(shape=(2, 8, 8)), series_uid=ds.SeriesInstanceUID, name="o"
    )
    with pytest.raises(errors.InconsistentSeriesError, match="size"):
        read_series(paths[2:] + other)


def test_metaimage_matches_simpleitk(tmp_path):
    hu = random_hu(seed=6)
    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing((0.8, 0.7, 2.5))  # (x, y, z)
    img.SetOrigin((-10.0, 20.0, -300.0))
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "scan.mhd"))
    vol = read_volume(tmp_path / "scan.mhd")
    np.testing.assert_array_equal(vol.voxels, hu)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    expected = np.array([[0, 0, 0.8, -10], [0, 0.7, 0, 20], [2.5, 0, 0, -300], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected)


def test_nifti_affine_is_converted_to_lps(tmp_path):
    data_xyz = random_hu(shape=(5, 4, 3), seed=7)  # NIfTI index order (i, j, k) = (x, y, z)
    ras = np.array([[-0.9, 0, 0, 90.0], [0, -0.8, 0, 110.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data_xyz, ras), str(tmp_path / "scan.nii.gz"))
    vol = read_volume(tmp_path / "scan.nii.gz")
    np.testing.assert_array_equal(vol.voxels, data_xyz.transpose(2, 1, 0))
    # voxel (d, h, w) = (k, j, i); LPS = (-x_ras, -y_ras, z_ras)
    for d, h, w in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]:
        x, y, z, _ = ras @ [w, h, d, 1]
        np.testing.assert_allclose(vol.affine @ [d, h, w, 1], [-x, -y, z, 1], atol=1e-6)
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.9))


def test_unsupported_volume_suffix(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"x")
    with pytest.raises(errors.UnsupportedFormatError):
        read_volume(tmp_path / "scan.png")
    (tmp_path / "bad.nii").write_bytes(b"not nifti")
    with pytest.raises(errors.CorruptFileError):
        read_volume(tmp_path / "bad.nii")


def test_resample_linear_ramp_by_hand():
    d, h, w = np.meshgrid(np.arange(4), np.arange(6), np.arange(8), indexing="ij")
    ramp = (10 * d + 2 * h + 0.5 * w).astype(np.float32)
    vol = Volume(voxels=ramp, spacing=(2.0, 1.0, 1.0), affine=np.diag([2.0, 1.0, 1.0, 1.0]))
    out = resample_to_spacing(vol, (1.0, 2.0, 0.5))
    assert out.shape == (8, 3, 16)
    # sample (i, j, k) sits at input index (i/2, 2j, k/2), clamped to the last voxel
    i, j, k = 5, 1, 9
    expected = 10 * min(i / 2, 3) + 2 * (2 * j) + 0.5 * (k / 2)
    assert out.voxels[i, j, k] == pytest.approx(expected)
    assert out.voxels[7, 2, 15] == pytest.approx(10 * 3 + 2 * 4 + 0.5 * 7)  # clamped at edges
    np.testing.assert_allclose(out.affine, np.diag([1.0, 2.0, 0.5, 1.0]))


def test_resample_nearest_keeps_labels():
    labels = np.zeros((4, 4, 4), np.float32)
    labels[1:3, 1:3, 1:3] = 3
    vol = Volume(voxels=labels, spacing=(1.0, 1.0, 1.0))
    out = resample_to_spacing(vol, (0.5, 0.5, 0.5), order=0)
    assert set(np.unique(out.voxels)) == {0.0, 3.0}
    assert out.voxels.sum() == 3 * 8 * 8  # each labelled voxel becomes 2×2×2
