"""Upload validation: every bad input is a RequestError with its 4xx status and code."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging.dicom import read_image
from serve.inputs import (
    Limits,
    RequestError,
    Upload,
    check_modality,
    decode_image,
    decode_series,
    expand_uploads,
)

from .conftest import dicom_bytes as _bytes
from .conftest import zip_bytes as _zip

LIMITS = Limits()


def _code(fn, *args):
    with pytest.raises(RequestError) as info:
        fn(*args)
    return info.value.status, info.value.code


def test_a_real_radiograph_decodes_like_pydicom():
    img = decode_image(Upload("cr.dcm", _bytes("RG1_UNCR.dcm")), LIMITS)
    ref = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array
    assert img.modality == "CR" and img.pixels.shape == ref.shape


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"hello, this is not a DICOM file at all" * 10, 400, "not_dicom"),
        (b"", 400, "not_dicom"),
        ("truncated", 400, "corrupt_file"),
        ("ExplVR_LitEndNoMeta.dcm", 422, "no_pixel_data"),
        ("bogus_syntax", 415, "unsupported_transfer_syntax"),
    ],
)
def test_bad_files_get_their_4xx(data, status, code):
    if data == "truncated":
        raw = _bytes("CT_small.dcm")
        data = raw[: len(raw) - 20000]
    elif data == "bogus_syntax":
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7.8.9"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
        data = buf.getvalue()
    elif isinstance(data, str):
        data = _bytes(data)
    assert _code(decode_image, Upload("x.dcm", data), LIMITS) == (status, code)


def test_too_large_image_is_refused_before_decoding():
    small = Limits(max_pixels=1000)
    assert _code(decode_image, Upload("cr.dcm", _bytes("RG1_UNCR.dcm")), small) == (
        413,
        "image_too_large",
    )


def test_wrong_modality_and_its_override():
    mr = read_image(get_testdata_file("MR_small.dcm"))
    assert _code(check_modality, mr, ("CR", "DX"), "mr.dcm", False) == (422, "wrong_modality")
    check_modality(mr, ("CR", "DX"), "mr.dcm", True)  # explicit override


def test_upload_size_and_file_count_limits():
    files = [Upload(f"{i}.dcm", b"x" * 100) for i in range(5)]
    assert _code(expand_uploads, files, Limits(max_upload_bytes=400)) == (413, "upload_too_large")
    assert _code(expand_uploads, [], LIMITS) == (400, "no_files")
    many = _zip({f"s/{i}.dcm": b"x" for i in range(20)})
    assert _code(expand_uploads, [Upload("a.zip", many)], Limits(max_files=10)) == (
        413,
        "too_many_files",
    )


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/passwd", "a/../../b.dcm", "C:/x.dcm"])
def test_archive_paths_escaping_the_root_are_refused(name):
    data = _zip({"ok.dcm": b"x", name: b"y"})
    assert _code(expand_uploads, [Upload("a.zip", data)], LIMITS) == (400, "unsafe_archive")


def test_zip_bomb_is_stopped_at_the_inflate_limit():
    data = _zip({"bomb.dcm": bytes(64 << 20)})  # 64 MiB of zeros, ~64 KiB compressed
    assert len(data) < 1 << 20
    limits = Limits(max_uncompressed_bytes=8 << 20)
    assert _code(expand_uploads, [Upload("a.zip", data)], limits) == (413, "upload_too_large")


def test_broken_archive():
    assert _code(expand_uploads, [Upload("a.zip", b"PK\x03\x04garbage")], LIMITS) == (
        400,
        "bad_archive",
    )


def test_zip_series_decodes_and_inconsistent_series_is_refused():
    from imaging.phantoms import make_chest_ct
    from imaging.writers import ct_slice_datasets

    ct = make_chest_ct(3, shape=(16, 32, 32))
    slices = [pydicom_bytes(ds) for ds in ct_slice_datasets(ct.volume)]
    uploads = expand_uploads([Upload("study.zip", _zip({f"s{i}.dcm": b for i, b in
                                                       enumerate(slices)}))], LIMITS)  # fmt: skip
    vol = decode_series(uploads, LIMITS)
    from imaging.series import read_series

    np.testing.assert_array_equal(vol.voxels, read_series(slices).voxels)  # zip = loose files
    other = make_chest_ct(4, shape=(16, 40, 40))
    mixed = uploads[:3] + [Upload("o.dcm", pydicom_bytes(ct_slice_datasets(other.volume)[0]))]
    assert _code(decode_series, mixed, LIMITS)[0] == 422


def pydicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
