"""Read one DICOM image into an :class:`~imaging.image.Image` with physically meaningful pixels.

``read_image(source)`` accepts a path, bytes or a binary file object (gzip-compressed too), and
either returns float32 pixels after the rules documented in :mod:`imaging.pixels` or raises a
subclass of :class:`~imaging.errors.ImagingError`. No other exception escapes for bad input, and
no error message carries a patient identifier (only technical attributes are named).
"""

from __future__ import annotations

import io
import re
import warnings
import zlib

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from . import jpeg_plugin, voi
from . import pixels as px
from .errors import (
    CorruptFileError,
    ImageTooLargeError,
    ImagingError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedPhotometricError,
    UnsupportedTransferSyntaxError,
)
from .image import Image
from .source import Source, open_source

# pydicom's validation warnings and log records quote attribute values, which may be patient
# identifiers; this layer never lets them out (values are still read, invalid ones raise below).
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
jpeg_plugin.register()  # JPEG Lossless and 12-bit without the GPL plugin (imaging/jpeg_plugin.py)

#: Default guard on declared ``Rows × Columns × NumberOfFrames`` (256 Mpx ≈ 1 GiB as float32).
DEFAULT_MAX_PIXELS = 256 * 1024 * 1024
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
COLOR_POLICIES = ("luma", "refuse")


def read_image(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    color: str = "luma",
    max_inflated: int | None = None,
) -> Image:
    """Decode a DICOM image.

    Args:
        source: a path, ``bytes`` or a binary file object; gzip-compressed input is inflated.
        max_pixels: refuse images whose declared ``Rows × Columns × frames`` exceeds this,
            before any pixel data is decoded.
        color: ``"luma"`` converts colour images to BT.601 luma (see :mod:`imaging.pixels`);
            ``"refuse"`` raises :class:`UnsupportedPhotometricError` for them.
        max_inflated: bytes gzip input and a deflated dataset may each inflate to; by default
            what ``max_pixels`` could need (a server passes its per-request inflate budget).

    Returns:
        An :class:`Image` with float32 pixels ``(H, W)`` or ``(frames, H, W)``.

    Raises:
        ImagingError: a specific subclass for every kind of bad input.
    """
    if color not in COLOR_POLICIES:
        raise ValueError(f"color must be one of {COLOR_POLICIES}, not {color!r}")
    # Stored samples take at most 4 bytes and 3 per pixel; 16 MiB more for the header.
    max_bytes = max_pixels * 12 + (16 << 20) if max_inflated is None else max_inflated
    stream = open_source(source, max_bytes=max_bytes)
    # pydicom warns with attribute values quoted (maybe identifiers): they stay silent here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds, truncated = parse_dataset(stream, max_bytes=max_bytes)
            return decode_dataset(ds, truncated=truncated, max_pixels=max_pixels, color=color)
        except (ImagingError, KeyboardInterrupt, SystemExit):
            raise
        except MemoryError:
            raise ImageTooLargeError("not enough memory to decode the image") from None
        except BaseException as exc:  # noqa: BLE001 - decoder plugins may even panic (pyo3)
            # Backstop: whatever a damaged attribute makes pydicom or a codec raise is bad input.
            raise CorruptFileError(
                f"the DICOM file is corrupt and cannot be read ({type(exc).__name__})"
            ) from None
        finally:
            if stream is not source:  # a caller's own file object stays open
                stream.close()


def parse_dataset(stream, *, max_bytes: int | None = None) -> tuple[Dataset, bool]:
    """Parse DICOM from ``stream``; returns the dataset and whether the file ended early.

    Files without the preamble/``DICM`` prefix (legal in older software) are re-read with
    ``force=True`` and accepted only if they start with a group-0008 element. A deflated dataset
    inflating past ``max_bytes`` raises :class:`ImageTooLargeError` (as gzip input does).
    """
    if max_bytes is not None:
        _check_inflated_size(stream, max_bytes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(stream)
        except InvalidDicomError:
            stream.seek(0)
            ds = _parse_forced(stream)
        except ImagingError:
            raise
        except Exception as exc:  # pydicom raises many types on corrupt input
            raise CorruptFileError(
                "the DICOM file cannot be parsed: it is truncated or corrupt "
                f"({type(exc).__name__})"
            ) from None
    truncated = any("end of file" in str(w.message).lower() for w in caught)
    return ds, truncated


def _check_inflated_size(stream, max_bytes: int) -> None:
    """Refuse a deflate bomb before pydicom inflates the whole dataset in one call, no limit."""
    deflated_size(stream, max_bytes)


def deflated_size(stream, max_bytes: int) -> int | None:
    """Bytes the deflated dataset at ``stream`` inflates to, or None if it is not deflated;
    inflated once keeping nothing, and :class:`ImageTooLargeError` as soon as past ``max_bytes``.

    The file meta is looked for after a preamble and at the start alike: pydicom (with
    ``force=True``) inflates a dataset whose meta starts at byte 0 just the same. Damaged meta or
    deflate data is left for the real parse to report. ``stream`` is left where it was.
    """
    start = stream.tell()
    try:
        if pydicom.filereader.read_preamble(stream, True) is None:
            stream.seek(start)  # no preamble: the meta, if any, starts here
        if not _deflated_meta(stream):
            return None
        inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while (chunk := stream.read(1 << 20)) and not inflater.eof:
            while chunk and size <= max_bytes:
                size += len(inflater.decompress(chunk, 16 << 20))
                chunk = inflater.unconsumed_tail
            if size > max_bytes:
                raise ImageTooLargeError(
                    f"the deflated dataset inflates past the limit of {max_bytes} bytes"
                )
        return size
    except ImagingError:
        raise
    except Exception:
        return None
    finally:
        stream.seek(start)


def _deflated_meta(stream) -> bool:
    """Whether the file meta at ``stream`` names the deflated transfer syntax; if so, ``stream``
    is left at the dataset. Read explicit VR, else implicit VR, as pydicom reads it."""
    meta_start = stream.tell()
    for implicit in (False, True):
        stream.seek(meta_start)
        try:
            meta = pydicom.filereader.read_dataset(
                stream, implicit, True, stop_when=lambda tag, vr, length: tag.group != 0x0002
            )
            tsyntax = meta.get("TransferSyntaxUID")
        except Exception:
            continue
        if tsyntax is not None:
            return tsyntax == DeflatedExplicitVRLittleEndian
    return False


def _parse_forced(stream) -> Dataset:
    try:
        ds = pydicom.dcmread(stream, force=True)
        first = next(iter(ds.keys()), None)
    except Exception:
        first = None
    if first is None or first.group != 0x0008:
        raise NotDicomError(
            "the input is not a DICOM file: no 'DICM' prefix and no DICOM data elements found"
        )
    return ds


def decode_dataset(
    ds: Dataset,
    *,
    truncated: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    color: str = "luma",
) -> Image:
    """Turn a parsed dataset into an :class:`Image` (see :func:`read_image`)."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        if truncated:
            raise CorruptFileError("the file ends before its pixel data: it is truncated")
        sop = _sop_class_name(ds)
        raise NoPixelDataError(f"the DICOM object holds no pixel data (SOP class: {sop})")
    geom = _image_attributes(ds)
    declared = geom["rows"] * geom["columns"] * geom["frames"]
    if declared > max_pixels:
        raise ImageTooLargeError(
            f"declared size {geom['frames']}×{geom['rows']}×{geom['columns']} = {declared} pixels "
            f"exceeds the limit of {max_pixels}"
        )
    photometric = geom["photometric"]
    if photometric not in px.GRAY_PHOTOMETRICS + px.COLOR_PHOTOMETRICS:
        # The value itself is not echoed: an unrecognised string could be anything, identifiers too.
        raise UnsupportedPhotometricError(
            "the photometric interpretation is not supported; accepted: "
            + ", ".join(px.GRAY_PHOTOMETRICS + px.COLOR_PHOTOMETRICS)
        )
    if photometric in px.COLOR_PHOTOMETRICS and color == "refuse":
        raise UnsupportedPhotometricError(
            f"colour image ({photometric}) refused: only grayscale images are accepted"
        )
    tsyntax = _ensure_transfer_syntax(ds)
    if tsyntax.is_encapsulated and "PixelData" in ds:
        _check_fragments(ds, geom["frames"])
    arr = _native_pixels(ds, tsyntax, geom)
    if arr is None:
        arr = _decode_pixels(ds, tsyntax)

    window_center, window_width, voi_function = _window(ds)
    voi_lut, mirror = None, None
    slope, intercept = px.rescale_parameters(ds, geom["frames"])
    if photometric in px.COLOR_PHOTOMETRICS:
        if photometric == "PALETTE COLOR":
            arr = _guard(lambda: apply_color_lut(arr, ds), "its palette colour lookup table")
        pixels = px.to_luma(arr)
        window_center = window_width = voi_function = None
    else:
        voi_lut = _voi_lut(ds, tsyntax.is_little_endian)
        values = arr
        if photometric == "MONOCHROME1":
            if "ModalityLUTSequence" not in ds and geom["bits_stored"] <= 24:
                values = px.invert_monochrome1_float(values, geom["bits_stored"], geom["signed"])
            else:  # a Modality LUT indexes with the inverted integers
                values = px.invert_monochrome1(values, geom["bits_stored"], geom["signed"])
            # pixels = K − modality value (for a Modality LUT Sequence, no such K exists)
            pivot = px.monochrome1_pivot(geom["bits_stored"], geom["signed"])
            k = float(slope[0] * pivot + 2 * intercept[0])
            mirror = k if "ModalityLUTSequence" not in ds else None
            if window_center is not None:
                window_center = k - window_center
        if "ModalityLUTSequence" in ds:
            values = _guard(lambda: apply_modality_lut(values, ds), "its Modality LUT")
        else:
            values = px.apply_rescale_frames(values, slope, intercept)
        pixels = np.asarray(values, dtype=np.float32)
    if geom["frames"] == 1 and pixels.ndim == 3:
        pixels = pixels[0]

    return Image(
        pixels=np.ascontiguousarray(pixels),
        spacing=_pixel_spacing(ds),
        modality=str(ds.get("Modality", "") or ""),
        photometric=photometric,
        window_center=window_center,
        window_width=window_width,
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        meta={
            **_technical_meta(ds, geom, tsyntax, slope, intercept),
            "voi_function": voi_function,
            "voi_lut": voi_lut,
            "monochrome1_mirror": mirror,
        },
    )


def _guard(fn, what: str):
    try:
        return fn()
    except Exception as exc:
        raise CorruptFileError(
            f"the pixel data cannot be transformed by {what} ({type(exc).__name__})"
        ) from None


def _image_attributes(ds: Dataset) -> dict:
    """Read the Image Pixel module attributes, mapping missing/invalid ones to CorruptFileError."""
    out = {}
    for key, keyword, default in (
        ("rows", "Rows", None),
        ("columns", "Columns", None),
        ("bits_allocated", "BitsAllocated", None),
        ("bits_stored", "BitsStored", "bits_allocated"),
        ("samples", "SamplesPerPixel", 1),
        ("signed", "PixelRepresentation", 0),
        ("frames", "NumberOfFrames", 1),
    ):
        try:
            value = ds.get(keyword)
            if value is None or value == "":
                if default is None:
                    raise KeyError(keyword)
                value = out[default] if isinstance(default, str) else default
            out[key] = int(value)
        except KeyError:
            raise CorruptFileError(f"required attribute {keyword} is missing") from None
        except Exception:  # unparsable VR, wrong type, non-numeric text, ...
            raise CorruptFileError(f"attribute {keyword} has an invalid value") from None
    if out["rows"] <= 0 or out["columns"] <= 0 or out["frames"] <= 0:
        raise CorruptFileError("Rows, Columns and NumberOfFrames must be positive")
    out["signed"] = bool(out["signed"])
    default_pi = "MONOCHROME2" if out["samples"] == 1 else "RGB"
    out["photometric"] = str(ds.get("PhotometricInterpretation", default_pi) or default_pi).strip()
    return out


def _ensure_transfer_syntax(ds: Dataset) -> UID:
    """Return the transfer syntax, inferring it from the parsed encoding when the meta lacks it."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not tsyntax:
        implicit, little = ds.original_encoding
        if implicit is None:
            raise CorruptFileError("the transfer syntax is missing and cannot be inferred")
        tsyntax = {
            (True, True): ImplicitVRLittleEndian,
            (False, True): ExplicitVRLittleEndian,
            (False, False): ExplicitVRBigEndian,
        }.get((implicit, little), ImplicitVRLittleEndian)
        if meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax
    tsyntax = UID(str(tsyntax))
    if not tsyntax.is_transfer_syntax:
        raise UnsupportedTransferSyntaxError(
            "the file's transfer syntax UID is not a known transfer syntax"
        )
    if tsyntax.is_compressed:
        decoder = _decoder(tsyntax)
        if decoder is None or not decoder.is_available:
            raise UnsupportedTransferSyntaxError(
                f"no installed decoder handles transfer syntax {tsyntax.name or tsyntax} "
                "(see README, 'DICOM decoding')"
            )
    return tsyntax


def _check_fragments(ds: Dataset, frames: int) -> None:
    """Every frame of encapsulated pixel data takes at least one fragment (PS3.5 A.4).

    Checked before decoding because pydicom allocates the output for all declared frames first:
    a few kB declaring 65536 frames would otherwise cost hundreds of MB before failing.
    """
    try:
        buffer = io.BytesIO(ds.PixelData)
        parse_basic_offsets(buffer)
        fragments, _ = parse_fragments(buffer)
    except Exception:
        raise CorruptFileError("the encapsulated pixel data items cannot be parsed") from None
    if fragments < frames:
        raise CorruptFileError(
            f"NumberOfFrames is {frames} but the encapsulated pixel data holds {fragments} "
            "fragments: the file is truncated or corrupt"
        )


def _decoder(tsyntax: UID):
    try:
        return pydicom.pixels.get_decoder(tsyntax)
    except (NotImplementedError, ValueError):
        return None


def _native_pixels(ds: Dataset, tsyntax: UID, geom: dict) -> np.ndarray | None:
    """Uncompressed little-endian grayscale pixels as a read-only view of the file's bytes, the
    values pydicom's ``pixel_array`` gives; None where pydicom must decode.

    ``pixel_array`` copies the data and shifts every sample left and right to clear unused
    high bits (3 passes over a 7 MB film); here one min/max pass shows whether any high bit is
    set (almost never: then pydicom decodes, with its correction) and the caller's float32
    conversion is the only copy.
    """
    bits, stored = geom["bits_allocated"], geom["bits_stored"]
    if (
        tsyntax.is_encapsulated
        or not tsyntax.is_little_endian
        or geom["samples"] != 1
        or bits not in (8, 16, 32)
        or not 1 <= stored <= bits
        or geom["photometric"] not in px.GRAY_PHOTOMETRICS
    ):
        return None
    data = ds.get("PixelData")
    if not isinstance(data, (bytes, bytearray)):
        return None
    frames, rows, cols = geom["frames"], geom["rows"], geom["columns"]
    count = frames * rows * cols
    if len(data) < count * bits // 8:
        return None  # truncated: pydicom reports it
    signed = geom["signed"]
    arr = np.frombuffer(data, dtype=f"<{'i' if signed else 'u'}{bits // 8}", count=count)
    if stored < bits:
        top = (1 << (stored - 1)) - 1 if signed else (1 << stored) - 1
        if int(arr.max()) > top or (signed and int(arr.min()) < -top - 1):
            return None  # unused high bits set: pydicom's shift correction applies
    return arr.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


def _decode_pixels(ds: Dataset, tsyntax: UID) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ds.pixel_array
        except MemoryError:
            raise ImageTooLargeError("not enough memory to decode the pixel data") from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a Rust codec panic is a BaseException
            raise CorruptFileError(
                f"the pixel data cannot be decoded as {tsyntax.name or tsyntax}: the file is "
                f"truncated or corrupt ({type(exc).__name__})"
            ) from None


def _first_float(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        value = value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _shared_item(ds: Dataset, sequence: str) -> Dataset | None:
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0] and shared[0][sequence].value:
        return shared[0][sequence].value[0]
    return None


def _first_frame_item(ds: Dataset, sequence: str) -> Dataset | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and sequence in per_frame[0] and per_frame[0][sequence].value:
        return per_frame[0][sequence].value[0]
    return None


def _voi_items(ds: Dataset) -> list[Dataset]:
    """Where a VOI LUT module may be: the top level, then the shared and the first frame's
    functional groups (Frame VOI LUT Sequence) of an enhanced multi-frame object."""
    items = [ds]
    for find in (_shared_item, _first_frame_item):
        try:
            item = find(ds, "FrameVOILUTSequence")
        except Exception:  # a damaged sequence: no VOI from there
            item = None
        if isinstance(item, Dataset):
            items.append(item)
    return items


def _window(ds: Dataset) -> tuple[float | None, float | None, str]:
    """The first valid window (finite center, finite width > 0) and its VOI LUT Function
    (``"LINEAR"`` when absent or not one of :data:`imaging.voi.VOI_FUNCTIONS`); damaged
    attributes are ignored."""
    for item in _voi_items(ds):
        try:
            center = _first_float(item.get("WindowCenter"))
            width = _first_float(item.get("WindowWidth"))
            function = str(item.get("VOILUTFunction", "") or "").strip().upper()
        except Exception:
            continue
        if center is None or width is None or not (np.isfinite(center) and np.isfinite(width)):
            continue
        if width > 0:
            return center, width, function if function in voi.VOI_FUNCTIONS else "LINEAR"
    return None, None, "LINEAR"


def _voi_lut(ds: Dataset, little_endian: bool) -> dict | None:
    """The first item of the first VOI LUT Sequence as :func:`imaging.voi.pack_lut` stores it;
    None when there is none or it is malformed (descriptor not 3 numbers, entry depth outside
    8–16 bits, fewer data than entries)."""
    for item in _voi_items(ds):
        try:
            seq = item.get("VOILUTSequence")
            lut = _lut_item(seq[0], little_endian) if seq else None
        except Exception:
            lut = None
        if lut is not None:
            return lut
    return None


def _lut_item(item: Dataset, little_endian: bool) -> dict | None:
    descriptor = item.get("LUTDescriptor")
    if "LUTData" not in item or descriptor is None:
        return None
    if isinstance(descriptor, bytes) or len(descriptor) != 3:
        return None
    entries, first, bits = (int(v) for v in descriptor)
    entries = entries or voi.MAX_LUT_ENTRIES
    if not 0 < entries <= voi.MAX_LUT_ENTRIES or bits not in voi.LUT_BITS:
        return None
    if abs(first) > 2**32:
        return None
    data = item["LUTData"].value
    if isinstance(data, (bytes, bytearray)):  # OW: in the dataset's byte order
        if len(data) < 2 * entries:
            return None
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2", count=entries)
    else:
        data = [data] if isinstance(data, int) else data
        if len(data) < entries:
            return None
        table = np.array([int(v) for v in data[:entries]], dtype=np.int64)
        if table.min() < 0 or table.max() > 0xFFFF:
            return None
    return voi.pack_lut(first, bits, table)


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """Row/column spacing in mm, or None when absent, zero or invalid (never a division by 0)."""
    measures = _shared_item(ds, "PixelMeasuresSequence") or _first_frame_item(
        ds, "PixelMeasuresSequence"
    )
    for item, keyword in (
        (ds, "PixelSpacing"),
        (measures, "PixelSpacing"),
        (ds, "ImagerPixelSpacing"),
    ):
        if item is None or keyword not in item:
            continue
        try:
            row, col = (float(v) for v in item[keyword].value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
            return row, col
    return None


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    if not uid:
        return "unknown"
    uid = UID(str(uid))
    if not uid.is_valid:  # a damaged length can make it swallow its neighbours, identifiers too
        return "invalid"
    return uid.name or str(uid)


def _floats(value) -> list[float] | None:
    try:
        return [float(v) for v in value] if value is not None else None
    except (TypeError, ValueError):
        return None


#: ViewPosition (0018,5101) defined terms (PS3.3 C.8.11.5 and C.8.11.7); anything else is "" so
#: that no free text (an identifier, say) travels in the metadata
VIEW_POSITIONS = frozenset({
    "AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "LATERAL", "LAT", "AP AXIAL", "PA AXIAL",
    "LPO", "RPO", "LAO", "RAO", "OBLIQUE", "ORTHOGONAL",
})  # fmt: skip


def _view_position(ds) -> str:
    try:
        value = str(ds.get("ViewPosition", "") or "").strip().upper()
    except Exception:  # noqa: BLE001 - an unparsable value is no view
        return ""
    return value if value in VIEW_POSITIONS else ""


_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def _code_strings(ds, keyword: str) -> list[str]:
    """A Code String attribute's values (ImageType, BodyPartExamined), upper-cased and trimmed;
    a value that is not a valid code string (free text could be an identifier) is dropped."""
    try:
        raw = ds.get(keyword)
        values = list(raw) if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw]
        out = [str(v).strip().upper() for v in values if v is not None]
    except Exception:  # noqa: BLE001 - an unparsable value is no value
        return []
    return [v for v in out if _CODE_STRING.fullmatch(v)]


def _technical_meta(ds, geom, tsyntax, slope, intercept) -> dict:
    """Non-identifying attributes that later stages (series assembly, serving) need."""
    meta = {
        "transfer_syntax": str(tsyntax),
        "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
        "bits_stored": geom["bits_stored"],
        "number_of_frames": geom["frames"],
        "rescale_slope": float(slope[0]),
        "rescale_intercept": float(intercept[0]),
        "image_position": _floats(ds.get("ImagePositionPatient")),
        "image_orientation": _floats(ds.get("ImageOrientationPatient")),
        "slice_thickness": _first_float(ds.get("SliceThickness")),
        "color_converted": geom["photometric"] in px.COLOR_PHOTOMETRICS,
        "view_position": _view_position(ds),
        "image_type": _code_strings(ds, "ImageType"),
        "body_part": (_code_strings(ds, "BodyPartExamined") or [""])[0],
    }
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and geom["frames"] > 1:
        # Enhanced multi-frame objects (e.g. enhanced CT) keep one plane position per frame.
        positions = [
            _floats(f.PlanePositionSequence[0].get("ImagePositionPatient"))
            if "PlanePositionSequence" in f and f.PlanePositionSequence
            else None
            for f in per_frame
        ]
        meta["frame_positions"] = positions if all(positions) else None
        orient = _shared_item(ds, "PlaneOrientationSequence") or _first_frame_item(
            ds, "PlaneOrientationSequence"
        )
        if orient is not None and meta["image_orientation"] is None:
            meta["image_orientation"] = _floats(orient.get("ImageOrientationPatient"))
    try:
        meta["instance_number"] = (
            int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") else None
        )
    except (TypeError, ValueError):
        meta["instance_number"] = None
    return meta
