"""``read_image`` on hand-built and real inputs: sources, geometry, windows, guards, and privacy."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging import errors
from imaging.dicom import read_image

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-9931-XYZ"


def make_dataset(
    pixels: np.ndarray,
    *,
    photometric="MONOCHROME2",
    modality="CT",
    slope=None,
    intercept=None,
    signed=False,
    bits_stored=None,
    **extra,
) -> Dataset:
    """A minimal single-frame grayscale image carrying patient identifiers."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored or 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_sources_path_bytes_fileobj_and_gzip_agree():
    path = get_testdata_file("CT_small.dcm")
    raw = open(path, "rb").read()
    a = read_image(path).pixels
    for source in (raw, bytearray(raw), io.BytesIO(raw), io.BytesIO(gzip.compress(raw))):
        np.testing.assert_array_equal(read_image(source).pixels, a)


def test_callers_file_object_stays_open():
    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        read_image(f)
        assert not f.closed


def test_ct_hounsfield_by_hand():
    stored = np.array([[0, 1024], [2024, 3071]])
    image = read_image(to_bytes(make_dataset(stored, slope=1, intercept=-1024)))
    np.testing.assert_array_equal(image.pixels, [[-1024, 0], [1000, 2047]])
    scaled = read_image(to_bytes(make_dataset(stored, slope=0.5, intercept=-10)))
    np.testing.assert_array_equal(scaled.pixels, [[-10, 502], [1002, 1525.5]])


def test_monochrome1_inverted_over_bits_stored_and_window_follows():
    stored = np.array([[0, 100], [4000, 4095]])
    ds = make_dataset(
        stored,
        photometric="MONOCHROME1",
        modality="CR",
        bits_stored=12,
        WindowCenter=1000,
        WindowWidth=500,
    )
    image = read_image(to_bytes(ds))
    np.testing.assert_array_equal(image.pixels, [[4095, 3995], [95, 0]])  # higher = denser
    assert image.window_center == 4095 - 1000 and image.window_width == 500


def test_signed_monochrome1():
    stored = np.array([[-100, 0], [5, 200]])
    ds = make_dataset(stored, photometric="MONOCHROME1", signed=True)
    np.testing.assert_array_equal(read_image(to_bytes(ds)).pixels, [[99, -1], [-6, -201]])


def test_real_cr_has_unknown_spacing_and_higher_is_denser():
    image = read_image(get_testdata_file("RG1_UNCI.dcm"))
    assert image.spacing is None  # RG1 declares no spacing: unknown, not a division
    assert image.modality == "CR" and image.photometric == "MONOCHROME1"
    h, w = image.pixels.shape
    # On a PA chest film the mediastinum/spine column is denser than the lung fields beside it.
    centre = image.pixels[h // 3 : 2 * h // 3, w // 2 - 50 : w // 2 + 50].mean()
    lung = image.pixels[h // 3 : 2 * h // 3, w // 4 - 50 : w // 4 + 50].mean()
    assert centre > lung


def test_uids_and_spacing_of_ct():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert image.spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert (image.study_uid, image.series_uid, image.sop_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    assert image.window_center is None and "WindowCenter" not in ds


@pytest.mark.parametrize("spacing", [None, [0, 0], [0.0, 0.2]])
def test_zero_or_missing_spacing_is_unknown(spacing):
    extra = {} if spacing is None else {"PixelSpacing": spacing}
    ds = make_dataset(np.zeros((4, 4)), **extra)
    assert read_image(to_bytes(ds)).spacing is None


def test_imager_pixel_spacing_used_for_projection_radiographs():
    ds = make_dataset(np.zeros((4, 4)), modality="DX", ImagerPixelSpacing=[0.139, 0.14])
    assert read_image(to_bytes(ds)).spacing == (0.139, 0.14)


def test_multiframe_enhanced_ct_in_hu():
    path = get_testdata_file("eCT_Supplemental.dcm")
    image = read_image(path)
    assert image.is_multiframe and image.pixels.shape == (2, 512, 512)
    assert image.pixels.min() >= -1100 and image.pixels.max() < 4000
    assert image.spacing == (0.388672, 0.388672)


def test_colour_refused_on_request():
    with pytest.raises(errors.UnsupportedPhotometricError):
        read_image(get_testdata_file("SC_rgb.dcm"), color="refuse")
    assert read_image(get_testdata_file("SC_rgb.dcm")).meta["color_converted"]


def test_unsupported_photometric():
    ds = make_dataset(np.zeros((2, 2)), photometric="HSV")
    with pytest.raises(errors.UnsupportedPhotometricError):
        read_image(to_bytes(ds))


def test_size_guard_fires_before_decoding():
    ds = make_dataset(np.zeros((4, 4)))
    ds.Rows, ds.Columns = 60000, 60000  # declared far larger than the 32 bytes present
    with pytest.raises(errors.ImageTooLargeError):
        read_image(to_bytes(ds))
    with pytest.raises(errors.ImageTooLargeError):
        read_image(get_testdata_file("CT_small.dcm"), max_pixels=100)


def test_gzip_bomb_refused():
    bomb = gzip.compress(b"\0" * (32 << 20))
    with pytest.raises(errors.ImageTooLargeError):
        read_image(bomb, max_pixels=1000)


@pytest.mark.parametrize("source", [b"", b"hello world", b"\x1f\x8bnot gzip", "/no/such/file.dcm"])
def test_not_dicom(source):
    with pytest.raises(errors.ImagingError):
        read_image(source)


def _broken_variants() -> dict[str, bytes]:
    good = to_bytes(make_dataset(np.arange(64).reshape(8, 8)))
    no_rows = make_dataset(np.arange(64).reshape(8, 8))
    del no_rows.Rows
    bad_frames = make_dataset(np.arange(64).reshape(8, 8))
    bad_frames.add_new(0x00280008, "LO", PATIENT_ID)  # an identifier where a number belongs
    bad_pi = make_dataset(np.zeros((2, 2)), photometric=PATIENT_NAME.upper())
    return {
        "truncated": good[: len(good) - 40],
        "cut_in_header": good[:300],
        "no_rows": to_bytes(no_rows),
        "bad_frames": to_bytes(bad_frames),
        "bad_photometric": to_bytes(bad_pi),
    }


@pytest.mark.parametrize("case", list(_broken_variants()))
def test_errors_never_carry_patient_identifiers(case, caplog):
    with pytest.raises(errors.ImagingError) as info:
        read_image(_broken_variants()[case])
    text = str(info.value) + caplog.text
    for ident in (PATIENT_ID, PATIENT_NAME, "DOE", "Jane", "9931"):
        assert ident.lower() not in text.lower()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_bytes_give_image_or_typed_error(data):
    """Random corruption of a real file: an Image or an ImagingError, nothing else."""
    raw = bytearray(open(get_testdata_file("MR_small.dcm"), "rb").read())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        image = read_image(bytes(raw[:cut]))
    except errors.ImagingError:
        return
    assert image.pixels.dtype == np.float32


def _deflate_bomb(inflated: int, *, preamble: bool) -> bytes:
    """A real CT re-encoded as Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) with a
    trailing OB element of ``inflated`` zeros (about 1 kB per MiB); without the preamble and
    ``DICM`` its file meta starts at byte 0."""
    from imaging.fuzz.mutators import deflated

    data = deflated(open(get_testdata_file("CT_small.dcm"), "rb").read(), padding=inflated)
    return data if preamble else data[132:]


@pytest.mark.parametrize("preamble", [True, False])
def test_deflate_bomb_refused_with_or_without_preamble(preamble):
    import time
    import tracemalloc

    bomb = _deflate_bomb(1 << 30, preamble=preamble)  # 1 GiB of zeros in ~1 MB
    assert len(bomb) < 2 << 20
    assert (bomb[128:132] == b"DICM") if preamble else bomb[:2] == b"\x02\x00"  # meta at byte 0
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(errors.ImageTooLargeError):
            read_image(bomb, max_inflated=8 << 20)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 2.0 and peak < 64 << 20, (seconds, peak)


def test_deflated_dataset_without_preamble_still_decodes():
    from imaging.fuzz.mutators import deflated

    raw = open(get_testdata_file("CT_small.dcm"), "rb").read()
    ref = read_image(raw)
    for data in (deflated(raw), deflated(raw)[132:]):
        image = read_image(data, max_inflated=1 << 20)
        np.testing.assert_array_equal(image.pixels, ref.pixels)


def test_max_inflated_caps_gzip_input_too():
    raw = open(get_testdata_file("CT_small.dcm"), "rb").read()
    with pytest.raises(errors.ImageTooLargeError):
        read_image(gzip.compress(raw), max_inflated=len(raw) // 2)
    assert read_image(gzip.compress(raw), max_inflated=len(raw)).pixels.shape == (128, 128)


def test_damaged_gzip_data_is_a_typed_error():
    data = gzip.compress(bytes(range(256)) * 400)
    damaged = data[:20] + bytes(b ^ 0x55 for b in data[20:60]) + data[60:]  # zlib.error inside
    with pytest.raises(errors.NotDicomError):
        read_image(damaged)


def test_assemble_series_of_decoded_slices_equals_read_series():
    """Callers that decode each file under their own limits assemble the same volume."""
    from imaging.phantoms import make_chest_ct
    from imaging.series import assemble_series, read_series
    from imaging.writers import ct_slice_datasets

    slices = [to_bytes(ds) for ds in ct_slice_datasets(make_chest_ct(1, shape=(16, 16, 16)).volume)]
    want = read_series(slices)
    got = assemble_series([read_image(s) for s in reversed(slices)])
    np.testing.assert_array_equal(got.voxels, want.voxels)
    np.testing.assert_array_equal(got.affine, want.affine)
    assert got.spacing == want.spacing and got.meta == want.meta
    with pytest.raises(errors.InconsistentSeriesError):
        assemble_series([])
