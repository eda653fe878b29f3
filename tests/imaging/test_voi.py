"""The DICOM VOI transform to [0, 1] (imaging.voi) against pydicom's ``apply_voi_lut``.

Every expected value is pydicom's ``apply_voi_lut(apply_modality_lut(pixel_array, ds), ds)``
(or, with no VOI, the min–max of pydicom's modality values) divided by pydicom's output range,
and ``1 −`` that for MONOCHROME1 (the display inverts after the VOI); never our own output.
"""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.datasets.base import read_dicom_radiograph
from imaging.dicom import read_image
from imaging.image import Image
from imaging.preprocess import radiograph_to_unit
from imaging.voi import to_unit

TOL = 1e-5  # of the output range


def _file(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} not found"
    return pydicom.dcmread(path)


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _window_range(ds: Dataset) -> tuple[float, float]:
    """pydicom's ``apply_windowing`` output range (no Modality LUT Sequence here)."""
    bits = int(ds.BitsStored)
    if ds.PixelRepresentation == 0:
        lo, hi = 0.0, 2.0**bits - 1
    else:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def pydicom_unit(data: bytes, *, frame: int = 0, flat: Dataset | None = None) -> np.ndarray:
    """pydicom's VOI output for the file ``data``, normalised to [0, 1] (higher = denser).

    ``flat``: a dataset whose top-level VOI attributes pydicom should use instead (pydicom
    reads only the top level; enhanced objects keep them in functional groups).
    """
    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[frame]
    voi_ds = flat if flat is not None else ds
    modality = apply_modality_lut(arr, ds)
    out = np.asarray(apply_voi_lut(modality, voi_ds), dtype=np.float64)
    if voi_ds.get("VOILUTSequence"):
        lo, hi = 0.0, 2.0 ** int(voi_ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    elif "WindowCenter" in voi_ds and "WindowWidth" in voi_ds:
        lo, hi = _window_range(ds)
    else:
        lo, hi = float(modality.min()), float(modality.max())
    unit = (out - lo) / (hi - lo)
    return 1.0 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


def ours(data: bytes) -> np.ndarray:
    unit = to_unit(read_image(data))
    assert unit.dtype == np.float32 and unit.ndim == 2
    assert np.all((unit >= 0) & (unit <= 1))
    return unit


def check(data: bytes, **kw) -> np.ndarray:
    got, want = ours(data), pydicom_unit(data, **kw)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    return got


def _lut_item(entries: int, first: int, bits: int, data, *, vr: str = "US") -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    if vr == "OW":
        item["LUTData"] = DataElement(0x00283006, "OW", np.asarray(data, "<u2").tobytes())
    else:
        item["LUTData"] = DataElement(0x00283006, "US", [int(v) for v in data])
    return item


def _synthetic(stored: np.ndarray, *, photometric="MONOCHROME2", signed=False, bits=12, **extra):
    """A small single- or multi-frame (``stored`` 3-D) grayscale dataset."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


# ------------------------------------------------------------------------------ VOI LUT Sequence


def test_vlut_04_lut_sequence():
    ds = _file("vlut_04.dcm")
    assert ds.get("VOILUTSequence") and "WindowCenter" not in ds
    got = check(_bytes(ds))
    assert got.min() == 0 and got.max() == 1
    # training reads the same values as serving
    path = get_testdata_file("vlut_04.dcm")
    np.testing.assert_array_equal(read_dicom_radiograph(path), radiograph_to_unit(read_image(path)))


def _vlut(variant: str) -> Dataset:
    ds = _file("vlut_04.dcm")
    data = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.int64)
    if variant == "monochrome1":
        ds.PhotometricInterpretation = "MONOCHROME1"
    elif variant == "lut_preferred_to_window":
        ds.WindowCenter, ds.WindowWidth = 100, 50
    elif variant == "ow_data":
        ds.VOILUTSequence = Sequence([_lut_item(256, 0, 16, data, vr="OW")])
    elif variant == "first_mapped_and_clipping":  # values below 64 and above 191 clip
        ds.VOILUTSequence = Sequence([_lut_item(128, 64, 16, data[64:192])])
    elif variant == "bits_8":
        ds.VOILUTSequence = Sequence([_lut_item(256, 0, 8, data >> 8)])
    elif variant == "bits_12_monochrome1_window":
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.WindowCenter, ds.WindowWidth = 100, 50
        ds.VOILUTSequence = Sequence([_lut_item(200, 30, 12, data[:200] >> 4)])
    else:
        raise AssertionError(variant)
    return ds


@pytest.mark.parametrize(
    "variant",
    [
        "monochrome1",
        "lut_preferred_to_window",
        "ow_data",
        "first_mapped_and_clipping",
        "bits_8",
        "bits_12_monochrome1_window",
    ],
)
def test_lut_variants(variant):
    check(_bytes(_vlut(variant)))


@pytest.mark.filterwarnings("ignore:Applying a VOI LUT on a float input")  # pydicom, on x.5
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lut_on_rescaled_values_with_65536_entries(photometric):
    """Descriptor entries 0 means 65536; the LUT indexes modality values (after rescale: x.5
    values take the entry below, as pydicom truncates; pydicom wraps values past 65535)."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 2**16, size=(40, 50))
    stored[0, :4] = [0, 1, 65534, 65535]
    curve = np.round(65535 * np.linspace(0, 1, 65536) ** 0.6).astype(np.int64)
    ds = _synthetic(stored, photometric=photometric, bits=16, RescaleSlope=0.5, RescaleIntercept=-7)
    ds.VOILUTSequence = Sequence([_lut_item(0, 0, 16, curve, vr="OW")])
    data = _bytes(ds)
    check(data)
    meta = read_image(data).meta["voi_lut"]
    assert len(json.dumps(meta)) < 180_000  # bounded: 65536 entries at most


# --------------------------------------------------------------------------------------- windows

WINDOWED = {
    "RG1_UNCR.dcm": None,  # MONOCHROME1, its own window 15000/30000
    "RG3_UNCR.dcm": None,  # MONOCHROME1, its own window 550/1024
    "RG3_narrow": ("RG3_UNCR.dcm", 512, 101),
    "RG3_monochrome2": ("RG3_UNCR.dcm", None, None),
    "CT_small.dcm": ("CT_small.dcm", 40, 400),  # signed, rescaled (HU); no window of its own
}


def _windowed(key: str, function: str | None) -> Dataset:
    spec = WINDOWED[key]
    ds = _file(key if spec is None else spec[0])
    if spec is not None and spec[1] is not None:
        ds.WindowCenter, ds.WindowWidth = spec[1], spec[2]
    if key == "RG3_monochrome2":
        ds.PhotometricInterpretation = "MONOCHROME2"
    if function is not None:
        ds.VOILUTFunction = function
    return ds


FUNCTIONS = (None, "LINEAR", "LINEAR_EXACT", "SIGMOID")  # None: the file's own (LINEAR)


@pytest.mark.parametrize(
    "key, function",
    [(k, f) for k in WINDOWED for f in FUNCTIONS if k != "RG1_UNCR.dcm" or f in (None, "SIGMOID")],
)
def test_windows_and_functions(key, function):
    ds = _windowed(key, function)
    assert "VOILUTSequence" not in ds
    got = check(_bytes(ds))
    assert got.min() < got.max()


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("width", [1, 2, 3, 0.25])
def test_window_edges(photometric, function, width):
    """Integer pixels on both sides of each threshold: width 1 is LINEAR's step, width 2 puts
    pixels on its boundaries; LINEAR refuses a width below 1 (min–max instead)."""
    stored = np.arange(0, 40, dtype=np.int64).reshape(5, 8)
    ds = _synthetic(stored, photometric=photometric, WindowCenter=20, WindowWidth=width)
    ds.VOILUTFunction = function
    data = _bytes(ds)
    if function == "LINEAR" and width < 1:  # pydicom raises; we fall back to min–max
        del ds.WindowCenter, ds.WindowWidth
        np.testing.assert_allclose(ours(data), pydicom_unit(_bytes(ds)), rtol=0, atol=TOL)
    else:
        check(data)


def test_signed_monochrome1_with_rescale_and_sigmoid():
    stored = np.arange(-600, 600, 10, dtype=np.int64).reshape(10, 12)
    ds = _synthetic(
        stored,
        photometric="MONOCHROME1",
        signed=True,
        RescaleSlope=0.5,
        RescaleIntercept=100,
        WindowCenter=80,
        WindowWidth=150,
        VOILUTFunction="SIGMOID",
    )
    check(_bytes(ds))


# -------------------------------------------------------- enhanced multi-frame functional groups


def _frame_voi(**attrs) -> Dataset:
    item = Dataset()
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def _group(sequence: str, item: Dataset) -> Dataset:
    group = Dataset()
    setattr(group, sequence, Sequence([item]))
    return group


def test_shared_frame_voi_window_and_function():
    stored = np.arange(2 * 6 * 7, dtype=np.int64).reshape(2, 6, 7) * 40
    ds = _synthetic(stored, photometric="MONOCHROME1")
    voi = _frame_voi(WindowCenter=1500, WindowWidth=900, VOILUTFunction="SIGMOID")
    ds.SharedFunctionalGroupsSequence = Sequence([_group("FrameVOILUTSequence", voi)])
    flat = copy.deepcopy(ds)
    flat.WindowCenter, flat.WindowWidth, flat.VOILUTFunction = 1500, 900, "SIGMOID"
    data = _bytes(ds)
    np.testing.assert_allclose(ours(data), pydicom_unit(data, flat=flat), rtol=0, atol=TOL)


def test_per_frame_voi_lut():
    stored = np.arange(2 * 6 * 7, dtype=np.int64).reshape(2, 6, 7) * 3
    ds = _synthetic(stored, bits=8)
    lut = _lut_item(100, 20, 16, np.linspace(0, 65535, 100).round())
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [_group("FrameVOILUTSequence", _frame_voi(VOILUTSequence=Sequence([lut])))] * 2
    )
    flat = copy.deepcopy(ds)
    flat.VOILUTSequence = Sequence([lut])
    data = _bytes(ds)
    np.testing.assert_allclose(ours(data), pydicom_unit(data, flat=flat), rtol=0, atol=TOL)


# --------------------------------------------------------------------------- fallback and garbage


@pytest.mark.parametrize("name", ["CT_small.dcm", "RG3_UNCR.dcm"])
def test_no_voi_is_min_max(name):
    ds = _file(name)
    for key in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if key in ds:
            delattr(ds, key)
    check(_bytes(ds))  # the reference is the min–max of pydicom's modality values


NO_WINDOW = {"WindowCenter": None, "WindowWidth": None}


def _written_as(keyword: str, raw: bytes) -> dict:
    """``keyword``'s value replaced in the written file by ``raw`` (pydicom will not write it)."""
    sentinel = b"7" * len(raw)
    return {keyword: sentinel.decode(), "_patch": (sentinel, raw)}


def _lut(*descriptor, data=range(256), vr="US", **extra) -> dict:
    return {"VOILUTSequence": [_lut_item(*descriptor, data, vr=vr)], **extra}


#: name → (how to damage a windowed dataset, what pydicom should be given instead)
GARBAGE = {
    "zero_width": ({"WindowWidth": 0}, NO_WINDOW),
    "negative_width": ({"WindowWidth": -5}, NO_WINDOW),
    "empty_center": ({"WindowCenter": ""}, NO_WINDOW),
    "center_only": ({"WindowWidth": None}, NO_WINDOW),
    "text_center": (_written_as("WindowCenter", b"abc   "), NO_WINDOW),
    "nan_center": (_written_as("WindowCenter", b"NaN   "), NO_WINDOW),
    "inf_width": (_written_as("WindowWidth", b"inf   "), NO_WINDOW),
    "unknown_function": ({"VOILUTFunction": "BOGUS"}, {"VOILUTFunction": None}),
    "function_bytes": (_written_as("VOILUTFunction", b"\xff\x00\xfe\x01\x80\\"), {}),
    "lut_descriptor_lies": (_lut(4096, 0, 16), {}),
    "lut_descriptor_two_values": (_lut(256, 0, 16, _desc=[256, 0]), {}),
    "lut_bits_3": (_lut(256, 0, 3), {}),
    "lut_bits_40": (_lut(256, 0, 40), {}),
    "lut_ow_short": (_lut(256, 0, 16, data=range(100), vr="OW"), {}),
    "lut_no_data": (_lut(256, 0, 16, _nodata=True), {}),
    "lut_empty_item": ({"VOILUTSequence": [Dataset()]}, {}),
    "lut_empty_sequence": ({"VOILUTSequence": []}, {}),
}


def _damage(ds: Dataset, changes: dict) -> Dataset:
    ds = copy.deepcopy(ds)
    for key, value in changes.items():
        if key.startswith("_"):
            continue
        if value is None:
            if key in ds:
                delattr(ds, key)
        elif key == "VOILUTSequence":
            ds.VOILUTSequence = Sequence(copy.deepcopy(value))
            item = ds.VOILUTSequence[0] if value else None
            if "_desc" in changes:
                item.LUTDescriptor = changes["_desc"]
            if "_nodata" in changes:
                del item.LUTData
        else:
            setattr(ds, key, value)
    return ds


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_voi_falls_back(name, photometric):
    """Malformed VOI attributes never raise: the next rule applies, as pydicom would apply it
    to the file without them (where pydicom itself raises on them)."""
    stored = (np.arange(12 * 9, dtype=np.int64).reshape(12, 9) * 37) % 4096
    base = _synthetic(stored, photometric=photometric, WindowCenter=1800, WindowWidth=1200)
    damage, instead = GARBAGE[name]
    data = _bytes(_damage(base, damage))
    if "_patch" in damage:  # a value pydicom will not write: replaced in the file
        old, new = damage["_patch"]
        assert data.count(old) == 1
        data = data.replace(old, new)
    want = pydicom_unit(_bytes(_damage(base, instead)))
    np.testing.assert_allclose(ours(data), want, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "meta",
    [
        {"voi_lut": {"first_mapped": 0, "bits": 16, "data": "!!not base64!!"}},
        {"voi_lut": {"first_mapped": 0, "bits": 16, "data": "AAE="}},  # odd byte count
        {"voi_lut": {"first_mapped": 10**400, "bits": 16, "data": "AAA="}},
        {"voi_lut": {"first_mapped": 0, "bits": 99, "data": "AAA="}},
        {"voi_lut": [1, 2, 3]},
        {"voi_function": ["SIGMOID"], "monochrome1_mirror": "x"},
        {"voi_function": "SIGMOID", "monochrome1_mirror": float("nan")},
    ],
)
def test_odd_meta_never_raises(meta):
    pixels = np.arange(20, dtype=np.float32).reshape(4, 5)
    image = Image(pixels=pixels, photometric="MONOCHROME1", window_center=9.0, meta=meta)
    unit = to_unit(image)  # no width: min–max
    np.testing.assert_allclose(unit, pixels / 19, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ["vlut_04.dcm", "RG3_UNCR.dcm"])
def test_meta_survives_json(name):
    """The server ships Images as JSON + pixels: the VOI must come through unchanged."""
    image = read_image(get_testdata_file(name))
    image.meta = json.loads(json.dumps(image.meta))
    np.testing.assert_array_equal(to_unit(image), ours(_bytes(_file(name))))
