"""Every file in pydicom's and pydicom-data's test data: decoded like pydicom, or a typed error.

The reference for pixels is pydicom's own ``pixel_array`` followed by a re-statement, written here
independently, of the transforms documented in ``imaging.pixels``: palette lookup + BT.601 luma for
colour; for grayscale, MONOCHROME1 inversion over BitsStored, then the Modality LUT / rescale.
"""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut

from imaging import errors
from imaging.dicom import read_image

from .dicom_corpus import corpus_files, corpus_id, open_bytes

# Hand-classified: every non-image or broken file and the error it must raise.
EXPECTED_ERRORS = {
    # not DICOM at all
    "crayons.icc": errors.NotDicomError,  # an ICC colour profile
    "rtplan.dump": errors.NotDicomError,  # a text dump
    "rtstruct.dump": errors.NotDicomError,
    "no_meta.dcm": errors.NotDicomError,  # no preamble and no parsable element
    "TINY_ALPHA/README": errors.NotDicomError,
    # valid DICOM objects without an image
    "ExplVR_BigEndNoMeta.dcm": errors.NoPixelDataError,  # RT Ion Plan
    "ExplVR_LitEndNoMeta.dcm": errors.NoPixelDataError,
    "UN_sequence.dcm": errors.NoPixelDataError,
    "empty_charset_LEI.dcm": errors.NoPixelDataError,
    "no_meta_group_length.dcm": errors.NoPixelDataError,
    "priv_SQ.dcm": errors.NoPixelDataError,
    "reportsi.dcm": errors.NoPixelDataError,  # structured reports
    "reportsi_with_empty_number_tags.dcm": errors.NoPixelDataError,
    "test-SR.dcm": errors.NoPixelDataError,
    "rtplan.dcm": errors.NoPixelDataError,
    "rtplan_truncated.dcm": errors.NoPixelDataError,  # an RT plan: no image even when complete
    "rtstruct.dcm": errors.NoPixelDataError,
    "waveform_ecg.dcm": errors.NoPixelDataError,
    # broken images
    "MR_truncated.dcm": errors.CorruptFileError,  # pixel data shorter than declared
    "emri_small_jpeg_2k_lossless_too_short.dcm": errors.CorruptFileError,  # file cut before pixels
    "badVR.dcm": errors.CorruptFileError,  # NumberOfFrames = '1A'
    "meta_missing_tsyntax.dcm": errors.CorruptFileError,  # pixel data without Rows/Columns
    "nested_priv_SQ.dcm": errors.CorruptFileError,  # pixel data without Rows/Columns
    "JPEG2000-embedded-sequence-delimiter.dcm": errors.CorruptFileError,  # broken J2K codestream
}


def expected_error(cid: str):
    for key, err in EXPECTED_ERRORS.items():
        if cid == key or cid.endswith("/" + key):
            return err
    name = cid.rsplit("/", 1)[-1]
    if name.startswith("DICOMDIR"):
        return errors.NoPixelDataError  # media directories
    if "TINY_ALPHA/" in cid and "/SE000000/" in cid:
        return errors.NoPixelDataError  # directory fixtures with pixel data removed
    return None


def _rescale(ds, n_frames):
    """Slope/intercept per frame from top level or functional groups (restated from PS3.3)."""

    def pick(item):
        if "RescaleSlope" in item:
            return float(item.RescaleSlope), float(item.RescaleIntercept)
        if "PixelValueTransformationSequence" in item:
            return pick(item.PixelValueTransformationSequence[0])
        return None

    found = pick(ds)
    if found is None and "SharedFunctionalGroupsSequence" in ds:
        found = pick(ds.SharedFunctionalGroupsSequence[0])
    if found is None and "PerFrameFunctionalGroupsSequence" in ds:
        per = [pick(f) or (1.0, 0.0) for f in ds.PerFrameFunctionalGroupsSequence]
        return np.array([p[0] for p in per]), np.array([p[1] for p in per])
    s, i = found or (1.0, 0.0)
    return np.full(n_frames, s), np.full(n_frames, i)


def reference_pixels(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(open_bytes(path), force=True)
        if "TransferSyntaxUID" not in ds.file_meta:  # a file without meta: use how it was read
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                pydicom.uid.ImplicitVRLittleEndian
                if implicit
                else pydicom.uid.ExplicitVRLittleEndian
                if little
                else pydicom.uid.ExplicitVRBigEndian
            )
        arr = ds.pixel_array
    pi = ds.PhotometricInterpretation
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim >= 3 and arr.shape[-1] == 3 and ds.SamplesPerPixel == 3 or pi == "PALETTE COLOR":
        return (arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114).astype(np.float32)
    values = arr.astype(np.int64)
    if pi == "MONOCHROME1":
        top = -1 if ds.PixelRepresentation == 1 else 2 ** int(ds.BitsStored) - 1
        values = top - values
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(values, ds).astype(np.float32)
    slope, intercept = _rescale(ds, frames)
    if values.ndim == 3:
        return (values * slope[:, None, None] + intercept[:, None, None]).astype(np.float32)
    return (values * slope[0] + intercept[0]).astype(np.float32)


CORPUS = corpus_files()


def test_corpus_is_complete():
    """Guards against an empty or partial corpus silently passing the sweep below."""
    names = {p.name for p in CORPUS}
    assert len(CORPUS) > 200
    assert {"RG1_UNCI.dcm", "RG1_J2KR.dcm", "693_J2KR.dcm", "eCT_Supplemental.dcm"} <= names
    missing = {k.rsplit("/", 1)[-1] for k in EXPECTED_ERRORS} - names
    assert not missing


@pytest.mark.parametrize("path", CORPUS, ids=[corpus_id(p) for p in CORPUS])
def test_corpus_file(path):
    cid = corpus_id(path)
    err = expected_error(cid)
    if err is not None:
        with pytest.raises(err):
            read_image(path)
        return
    image = read_image(path)
    expected = reference_pixels(path)
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == expected.shape
    np.testing.assert_allclose(image.pixels, expected, rtol=1e-6, atol=1e-3)


REQUIRED_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}


def test_every_transfer_syntax_decodes():
    """The README's decoding table, held to the corpus: each syntax decodes at least one file."""
    decoded = set()
    for path in CORPUS:
        if expected_error(corpus_id(path)) is None:
            decoded.add(read_image(path).meta["transfer_syntax"])
    missing = {REQUIRED_SYNTAXES[t] for t in REQUIRED_SYNTAXES.keys() - decoded}
    assert not missing
