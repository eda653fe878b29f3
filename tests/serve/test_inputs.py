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
    small = Limits(max_image_pixels=1000)
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
    assert _code(expand_uploads, files, Limits(max_body_bytes=400)) == (413, "upload_too_large")
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
    limits = Limits(max_inflated_bytes=8 << 20)
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


def _zeros_member_zip(mib: int) -> bytes:
    return _zip({"bomb.dcm": bytes(mib << 20)})  # ~1 kB per MiB


def test_each_member_inflates_under_a_ratio_of_its_compressed_size():
    data = _zeros_member_zip(16)
    big_cap = Limits(max_inflated_bytes=1 << 30, inflate_floor_bytes=1 << 20)
    assert _code(expand_uploads, [Upload("a.zip", data)], big_cap) == (413, "upload_too_large")
    lenient = Limits(max_inflate_ratio=100000, inflate_floor_bytes=1 << 20)
    assert len(expand_uploads([Upload("a.zip", data)], lenient)[0].data) == 16 << 20


def test_the_absolute_cap_spans_every_member_and_gzip_file():
    import gzip

    raw = _bytes("CT_small.dcm")
    zipped = _zip({f"{i}.dcm": raw for i in range(3)})
    limits = Limits(max_inflated_bytes=len(raw) * 2 + 100)  # two of the three members
    assert _code(expand_uploads, [Upload("a.zip", zipped)], limits) == (413, "upload_too_large")
    gz = Upload("a.dcm.gz", gzip.compress(raw))
    assert _code(decode_image, gz, Limits(max_inflated_bytes=len(raw) // 2))[0] == 413
    assert decode_image(gz, LIMITS).pixels.shape == (128, 128)


def test_zip_members_and_loose_files_count_together():
    loose = [Upload(f"{i}.dcm", b"x") for i in range(3)]
    zipped = Upload("a.zip", _zip({f"{i}.dcm": b"x" for i in range(3)}))
    assert len(expand_uploads(loose + [zipped], Limits(max_files=6))) == 6
    assert _code(expand_uploads, loose + [zipped], Limits(max_files=5)) == (413, "too_many_files")


def test_files_on_disk_decode_like_uploads_and_the_study_pixel_limit(tmp_path):
    from serve.inputs import decode_files

    raw = _bytes("CT_small.dcm")
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "b").write_bytes(_zip({"x/one.dcm": raw}))
    got = decode_files([("a.dcm", tmp_path / "a"), ("b.zip", tmp_path / "b")], LIMITS)
    assert [n for n, _ in got] == ["a.dcm", "b.zip/one.dcm"]
    np.testing.assert_array_equal(got[1][1].pixels, read_image(raw).pixels)
    small = Limits(max_study_pixels=128 * 128 + 1)
    files = [("a.dcm", tmp_path / "a"), ("b.zip", tmp_path / "b")]
    assert _code(decode_files, files, small) == (413, "study_too_large")


def test_a_series_over_the_slice_limit_is_refused():
    from imaging.phantoms import make_chest_ct
    from imaging.writers import ct_slice_datasets

    ct = make_chest_ct(3, shape=(16, 32, 32))
    uploads = [Upload(f"{i}.dcm", pydicom_bytes(ds)) for i, ds in enumerate(ct_slice_datasets(
        ct.volume))]  # fmt: skip
    assert _code(decode_series, uploads, Limits(max_files=10)) == (413, "too_many_slices")


def test_an_archive_with_too_many_entries_is_refused_before_its_directory_is_parsed(monkeypatch):
    import zipfile

    import serve.inputs

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(5000):  # ~50 bytes each: millions would take GBs as ZipInfo objects
            zf.writestr(f"{i}", b"")

    def parse(*args, **kwargs):
        raise AssertionError("the central directory was parsed")

    monkeypatch.setattr(serve.inputs.zipfile, "ZipFile", parse)
    upload = Upload("a.zip", buf.getvalue())
    assert _code(expand_uploads, [upload], Limits(max_files=100)) == (413, "too_many_files")
