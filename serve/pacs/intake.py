"""The check every received instance passes before it is stored, for both receivers (STOW-RS and
C-STORE): a DICOM file of a storage class the models take, with valid UIDs and, for native
pixel data, as many pixel bytes as its header promises. Only the header is parsed here; the
pixels are decoded later, in the killable decoding processes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import UID

from ..privacy import checked_modality, is_uid
from .errors import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    SOP_CLASS_NOT_SUPPORTED,
    STUDY_UID_MISMATCH,
    Refused,
)

#: storage SOP classes taken (PS3.4 Annex B.5); Secondary Capture is stored so a whole study can be
#: pushed, and the series selection rules then leave it out
SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
UID_NAMES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class Instance:
    """The checked identity of one received instance (UIDs only: nothing identifying)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str


def check_instance(source: bytes | Path, study_uid: str | None = None) -> Instance:
    """Parse ``source``'s header and check it (see the module docstring); :class:`Refused` with
    the DICOM failure code otherwise. ``study_uid``: the study the instance must belong to (the
    STOW-RS URL's)."""
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        with fp:
            size = fp.seek(0, io.SEEK_END)
            fp.seek(0)
            # defer_size: large values (the pixel data) are not read, only their lengths
            ds = pydicom.dcmread(fp, defer_size=1024)
            sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get(
                "MediaStorageSOPClassUID", ""))  # fmt: skip
            uids = [str(ds.get(k, "")) for k in UID_NAMES]
            modality = str(ds.get("Modality", ""))
            short = _short_pixels(ds, size)
    except Refused:
        raise
    except Exception:  # noqa: BLE001 - a hostile file may fail anywhere in the parser
        raise Refused(CANNOT_UNDERSTAND, "not a readable DICOM file") from None
    if sop_class not in SOP_CLASSES:
        detail = "SOP class not accepted" if is_uid(sop_class) else "no valid SOPClassUID"
        raise Refused(SOP_CLASS_NOT_SUPPORTED, f"{detail} (accepted: CT, enhanced CT, CR, DX, "
                      "secondary capture)")  # fmt: skip
    for name, uid in zip(
        ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), uids, strict=True
    ):
        if not is_uid(uid):
            raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"{name} is missing or not a UID")
    if study_uid is not None and uids[0] != study_uid:
        raise Refused(STUDY_UID_MISMATCH, "the instance belongs to another study than the URL's")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "the image has no pixel data")
    if short:
        raise Refused(CANNOT_UNDERSTAND, "the pixel data is shorter than its header says")
    return Instance(*uids, sop_class, checked_modality(modality) or "")


def _short_pixels(ds: pydicom.Dataset, size: int) -> bool:
    """A truncated file: native (uncompressed) pixel data whose bytes end past the file's end, or
    fewer than rows × columns × samples × frames × bits allocated say."""
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")))
    elem = ds.get_item("PixelData") if "PixelData" in ds else None
    if elem is None or ts.is_compressed:
        return False
    # a deferred (raw) element knows where its value starts and how long its header says it is
    start = getattr(elem, "value_tell", None)
    length = elem.length if hasattr(elem, "length") else len(elem.value)
    if start is not None and start + length > size:
        return True
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        need = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
                * int(ds.BitsAllocated)) // 8  # fmt: skip
    except (AttributeError, TypeError, ValueError):
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "the image module is incomplete") from None
    return length < need


def peek_uids(source: bytes | Path) -> tuple[str, str]:
    """A refused instance's (SOPClassUID, SOPInstanceUID) as far as they can be read ("" where
    not), for the STOW-RS answer; callers answer only values that are UIDs."""
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        with fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True,
                                 specific_tags=["SOPClassUID", "SOPInstanceUID"])  # fmt: skip
            return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    except Exception:  # noqa: BLE001 - unreadable: nothing to reference
        return "", ""
