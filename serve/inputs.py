"""Uploads → decoded images and volumes, or a :class:`RequestError` that is an HTTP 4xx.

Everything a client can get wrong is caught here, before any model runs: uploads over the size
limit, too many files, zip archives whose members escape their root or inflate without bound,
gzip files and deflated datasets that inflate without bound, files that are not DICOM,
truncated, without pixels, in an unsupported transfer syntax or photometric interpretation, the
wrong modality for an endpoint, images or studies with too many pixels, and series whose slices
disagree. Each becomes ``{"error": code, "detail": text}`` with a 4xx status. Details never quote
patient attributes (the imaging layer's messages do not either), so they are safe to log.

The server runs :func:`decode_files` / :func:`decode_series_files` inside a sandboxed decoding
process (:mod:`serve.decode_worker`); the in-memory :func:`expand_uploads`, :func:`decode_image`
and :func:`decode_series` apply the same limits.
"""

from __future__ import annotations

import dataclasses
import io
import os
import posixpath
import stat
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imaging.dicom import deflated_size, read_image
from imaging.errors import (
    CorruptFileError,
    ImageTooLargeError,
    ImagingError,
    InconsistentSeriesError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedPhotometricError,
    UnsupportedTransferSyntaxError,
)
from imaging.image import Image, Volume
from imaging.series import assemble_series
from imaging.source import GZIP_MAGIC, open_source

from .errors import RequestError
from .limits import Limits
from .privacy import is_uid

__all__ = [
    "Inflation",
    "Limits",
    "RequestError",
    "Upload",
    "check_modality",
    "decode_file",
    "decode_files",
    "decode_image",
    "decode_series",
    "decode_series_files",
    "expand_uploads",
    "iter_files",
    "request_error",
]

ZIP_MAGIC = b"PK\x03\x04"
MiB = 1 << 20

#: imaging error → (HTTP status, error code); the first matching class wins (subclasses first).
_IMAGING_ERRORS: tuple[tuple[type[ImagingError], int, str], ...] = (
    (NotDicomError, 400, "not_dicom"),
    (CorruptFileError, 400, "corrupt_file"),
    (NoPixelDataError, 422, "no_pixel_data"),
    (UnsupportedTransferSyntaxError, 415, "unsupported_transfer_syntax"),
    (UnsupportedPhotometricError, 415, "unsupported_photometric"),
    (ImageTooLargeError, 413, "image_too_large"),
    (InconsistentSeriesError, 422, "inconsistent_series"),
    (ImagingError, 400, "bad_image"),
)


def request_error(exc: ImagingError, name: str | None = None) -> RequestError:
    """The :class:`RequestError` for an imaging-layer error (``name``: the upload's file name)."""
    for cls, status, code in _IMAGING_ERRORS:
        if isinstance(exc, cls):
            where = f"{name}: " if name else ""
            return RequestError(status, code, f"{where}{exc}")
    raise TypeError(f"not an imaging error: {type(exc).__name__}")  # pragma: no cover


@dataclass
class Upload:
    """One uploaded file (or zip member): a display name and its bytes."""

    name: str
    data: bytes


class Inflation:
    """What one request may still inflate to (``Limits.max_inflated_bytes``), drawn down by every
    zip member, gzip file and deflated dataset; each also gets a ratio budget of its own."""

    def __init__(self, limits: Limits):
        self.limits, self.left = limits, limits.max_inflated_bytes

    def budget(self, compressed: int) -> int:
        """Bytes ``compressed`` bytes may inflate to now (:meth:`Limits.inflate_budget`)."""
        return self.limits.inflate_budget(compressed, self.left)

    def take(self, inflated: int) -> None:
        self.left = max(0, self.left - inflated)


def _too_many(limits: Limits) -> RequestError:
    return RequestError(413, "too_many_files", f"more than {limits.max_files} files in one request")


def _too_large(what: str) -> RequestError:
    return RequestError(413, "upload_too_large", f"{what} inflates past the size limit")


def _safe_member(info: zipfile.ZipInfo) -> bool:
    """A member that stays inside the archive root and is a regular file."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return False
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../"):
        return False
    mode = (info.external_attr >> 16) & 0o170000
    return not (mode and stat.S_ISLNK(mode))


def _open_archive(name: str, fileobj, limits: Limits, counted: int) -> tuple:
    """``(ZipFile, members)`` of a zip upload, its regular-file members checked for safety and
    counted (``counted`` files came before it) before anything is inflated."""
    try:
        # The central directory's entry count, read before zipfile parses every entry (millions
        # of tiny entries would take GBs as ZipInfo objects). Directories count too: leeway.
        end_record = getattr(zipfile, "_EndRecData", lambda f: None)  # private, so guarded
        endrec = end_record(fileobj)
        if endrec and endrec[4] > 2 * limits.max_files + 64:  # [4]: _ECD_ENTRIES_TOTAL
            raise _too_many(limits)
        zf = zipfile.ZipFile(fileobj)
        members = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise RequestError(400, "bad_archive", f"{name}: not a readable zip archive") from None
    if counted + len(members) > limits.max_files:
        raise _too_many(limits)
    for info in members:
        if not _safe_member(info):
            raise RequestError(
                400, "unsafe_archive",
                f"{name}: a member's path leaves the archive root or is a link",
            )  # fmt: skip
    return zf, members


def _read_member(name: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, inflation) -> Upload:
    """Read one member under its inflate budget, stopping as soon as it is past it (zip bombs
    lie about their sizes in the header, so the declared size is checked and the real one too)."""
    budget = inflation.budget(info.compress_size)
    if info.file_size > budget:
        raise _too_large(f"{name}: a member")
    out = io.BytesIO()
    try:
        with zf.open(info) as f:
            while chunk := f.read(MiB):
                out.write(chunk)
                if out.tell() > budget:
                    raise _too_large(f"{name}: a member")
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError):
        # damaged data, an unsupported method (deflate64, ...), encryption
        raise RequestError(400, "bad_archive", f"{name}: a member cannot be extracted") from None
    inflation.take(out.tell())
    return Upload(f"{name}/{posixpath.basename(info.filename)}", out.getvalue())


def expand_uploads(files: list[Upload], limits: Limits) -> list[Upload]:
    """Check sizes and counts, and replace each zip archive by its (regular-file) members.

    Raises:
        RequestError: 400 no files / unsafe or corrupt archive; 413 too large / too many files.
    """
    if not files:
        raise RequestError(400, "no_files", "the request carries no file")
    total = sum(len(f.data) for f in files)
    if total > limits.max_body_bytes:
        raise RequestError(
            413, "upload_too_large",
            f"the upload is {total / MiB:.1f} MiB; the limit is "
            f"{limits.max_body_bytes / MiB:.0f} MiB",
        )  # fmt: skip
    out: list[Upload] = []
    inflation = Inflation(limits)
    for f in files:
        if not f.data.startswith(ZIP_MAGIC):
            out.append(f)
            continue
        zf, members = _open_archive(f.name, io.BytesIO(f.data), limits, len(out))
        out.extend(_read_member(f.name, zf, info, inflation) for info in members)
    if len(out) > limits.max_files:
        raise _too_many(limits)
    return out


def _read_file(name: str, path: Path, limits: Limits) -> bytes:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limits.max_body_bytes:
            raise RequestError(413, "upload_too_large", f"{name}: the file is over the size limit")
        return f.read(size)  # read(n) allocates n bytes first: never the limit itself


def iter_files(
    files: list[tuple[str, str | os.PathLike]], limits: Limits, inflation: Inflation
) -> Iterator[Upload]:
    """Files on disk → one :class:`Upload` per file or zip member, read one at a time (a zip's
    member as ``archive.zip/member.dcm``). Every count is checked before the first is read."""
    if not files:
        raise RequestError(400, "no_files", "the request carries no file")
    plan: list[tuple[str, Path, tuple | None]] = []  # (name, path, (ZipFile, members) | None)
    handles = []  # the archives' open files (a ZipFile leaves a passed file open)
    counted = 0
    try:
        for name, path in files:
            path = Path(path)
            with open(path, "rb") as f:
                is_zip = f.read(4) == ZIP_MAGIC
            if not is_zip:
                counted += 1
                if counted > limits.max_files:
                    raise _too_many(limits)
                plan.append((name, path, None))
                continue
            handles.append(open(path, "rb"))  # noqa: SIM115 - closed below
            archive = _open_archive(name, handles[-1], limits, counted)
            counted += len(archive[1])
            plan.append((name, path, archive))
        for name, path, archive in plan:
            if archive is None:
                yield Upload(name, _read_file(name, path, limits))
                continue
            zf, members = archive
            for info in members:
                yield _read_member(name, zf, info, inflation)
    finally:
        for f in handles:
            f.close()


def decode_file(upload: Upload, limits: Limits, inflation: Inflation) -> Image:
    """One file → :class:`Image` under the request's limits: declared pixels before decoding,
    gzip and deflated-dataset inflation under the file's budget, charged to the request."""
    data = upload.data
    try:
        stream = io.BytesIO(data)
        if data[:2] == GZIP_MAGIC:
            stream = open_source(data, max_bytes=inflation.budget(len(data)))
            inflation.take(stream.seek(0, io.SEEK_END))
            stream.seek(0)
        budget = inflation.budget(stream.seek(0, io.SEEK_END))
        stream.seek(0)
        inflation.take(deflated_size(stream, budget) or 0)
        return read_image(stream, max_pixels=limits.max_image_pixels, max_inflated=budget)
    except ImagingError as exc:
        raise request_error(exc, upload.name) from None


def _decode_all(uploads, limits: Limits) -> list[tuple[str, Image]]:
    """Decode in order, refusing as soon as the images together pass ``max_study_pixels``."""
    inflation, out, pixels = Inflation(limits), [], 0
    for upload in uploads:
        image = decode_file(upload, limits, inflation)
        pixels += image.pixels.size
        if pixels > limits.max_study_pixels:
            raise RequestError(
                413, "study_too_large",
                f"the request's images hold more than {limits.max_study_pixels} pixels together",
            )  # fmt: skip
        out.append((upload.name, image))
    return out


def _assemble(images: list[Image], limits: Limits) -> Volume:
    slices = sum(img.pixels.shape[0] if img.pixels.ndim == 3 else 1 for img in images)
    if slices > limits.max_files:
        raise RequestError(
            413, "too_many_slices", f"the series has more than {limits.max_files} slices"
        )
    try:
        return assemble_series(images)
    except ImagingError as exc:
        raise request_error(exc) from None


def decode_files(
    files: list[tuple[str, str | os.PathLike]], limits: Limits
) -> list[tuple[str, Image]]:
    """Files on disk (zip archives expanded) → ``(name, Image)`` in order, under every limit."""
    return _decode_all(iter_files(files, limits, Inflation(limits)), limits)


def decode_radiographs(
    files: list[tuple[str, str | os.PathLike]],
    limits: Limits,
    preprocessing: dict | None,
    timing: dict | None = None,
) -> list[tuple[str, Image, dict, tuple[int, int]]]:
    """Radiographs for one model → ``(name, image, guard features, (H, W))`` in order.

    Each image is brought to [0, 1] (:func:`imaging.preprocess.radiograph_to_unit`), its input
    guard features taken (:func:`imaging.distribution.unit_features`), and, given the model's
    ``preprocessing`` (:meth:`Preprocessing.to_dict`), turned into the model input: the
    returned image's ``pixels`` are that input ``(C, S, S)``, or the ``(H, W)`` [0, 1] image
    without ``preprocessing`` (for a GPU pipeline). Run in a decoding process, this sends a
    7 MB film back as a few kB of model input instead of 14 MB of float32 pixels. ``timing``
    receives ``prepare_ms``, the time spent after decoding.
    """
    from imaging.distribution import unit_features
    from imaging.preprocess import Preprocessing, prepare_radiograph, radiograph_to_unit

    pp = None if preprocessing is None else Preprocessing.from_dict(preprocessing)
    decoded = decode_files(files, limits)
    start, out = time.perf_counter(), []
    for name, image in decoded:
        try:
            unit = radiograph_to_unit(image)
        except ImagingError as exc:
            raise request_error(exc, name) from None
        feats = unit_features(unit)
        pixels = unit if pp is None else prepare_radiograph(unit, pp)[0]
        hw = (int(unit.shape[-2]), int(unit.shape[-1]))
        out.append((name, dataclasses.replace(image, pixels=pixels), feats, hw))
    if timing is not None:
        timing["prepare_ms"] = (time.perf_counter() - start) * 1000.0
    return out


def decode_series_files(
    files: list[tuple[str, str | os.PathLike]],
    limits: Limits,
    *,
    rules: dict | None = None,
    series_uid: str | None = None,
) -> Volume:
    """Files on disk of one series, or of a whole study (or zips of them) → :class:`Volume` in
    HU, ``(D, H, W)``, of the series chosen by ``rules`` (:class:`imaging.selection.Rules` as a
    dict; default: the shipped CT rules) or named by ``series_uid``. An upload of a single series
    is the caller's choice and is not judged by the rules. The choice, and why each other series
    was passed over, is ``volume.meta["selection"]``."""
    images = [image for _, image in decode_files(files, limits)]
    chosen = select_upload(images, rules, series_uid)
    volume = _assemble([i for i in images if i.series_uid == chosen.chosen], limits)
    volume.meta["selection"] = {"chosen": chosen.chosen, "rejected": chosen.reasons}
    return volume


def select_upload(images: list[Image], rules: dict | None, series_uid: str | None):
    """The :class:`imaging.selection.Selection` of an upload; 422 when nothing qualifies or the
    asked-for series is absent (the reasons name series UIDs and attributes only)."""
    from imaging.selection import Rules, Selection, select_series, summarise

    series = summarise(images)
    try:
        ruleset = Rules.from_dict(rules) if rules is not None else Rules.default("ct")
        if series_uid is None and len(series) == 1:
            return Selection(series[0].series_uid, {}, series)
        selection = select_series(series, ruleset, series_uid=series_uid)
    except KeyError:
        raise RequestError(
            422, "unknown_series", f"the upload holds no series {series_uid} "
            f"({len(series)} series sent)",
        ) from None  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise RequestError(500, "bad_selection_rules", str(exc)) from None
    if selection.chosen is None:
        why = "; ".join(
            f"{uid if is_uid(uid) else 'a series with an invalid UID'}: {reason}"
            for uid, reason in selection.reasons.items()
        )
        raise RequestError(
            422, "no_suitable_series",
            f"none of the {len(series)} series qualifies ({why}); name one with series_uid",
        )  # fmt: skip
    return selection


def series_headers(
    files: list[tuple[str, str | os.PathLike]], limits: Limits, series_uid: str | None = None
) -> list[bytes]:
    """Each file's header (everything but the pixel data) re-encoded as explicit VR little endian
    Part-10 bytes, for a DICOM SEG that references the slices — only the files of ``series_uid``
    when given; run after the series decoded, so the same files are known to stay within the
    limits."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    out = []
    for upload in iter_files(files, limits, Inflation(limits)):
        data = upload.data
        try:
            stream = io.BytesIO(data)
            if data[:2] == GZIP_MAGIC:
                stream = open_source(data, max_bytes=limits.max_inflated_bytes)
            ds = pydicom.dcmread(stream, force=True, stop_before_pixels=True)
            if not hasattr(ds, "file_meta") or ds.file_meta is None:
                ds.file_meta = pydicom.dataset.FileMetaDataset()
            if series_uid is not None and str(ds.get("SeriesInstanceUID", "")) != series_uid:
                continue
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
        except Exception:  # noqa: BLE001 - the slice decoded, but its header cannot be re-written
            raise RequestError(
                422, "seg_not_possible", f"{upload.name}: the header cannot be re-encoded"
            ) from None
        out.append(buf.getvalue())
    return out


def decode_image(upload: Upload, limits: Limits) -> Image:
    """One DICOM upload → :class:`Image` (HU for CT; higher is denser for radiographs)."""
    return decode_file(upload, limits, Inflation(limits))


def check_modality(image: Image, allowed: tuple[str, ...], name: str, override: bool) -> None:
    """Refuse an image whose Modality is not one the endpoint's model was trained on (422),
    unless the client overrides the check explicitly."""
    if override or not allowed or image.modality in allowed:
        return
    got = image.modality or "none"
    raise RequestError(
        422, "wrong_modality",
        f"{name}: modality {got} is not one this endpoint takes ({', '.join(allowed)}); "
        "send allow_any_modality=true to run it anyway",
    )  # fmt: skip


def decode_series(uploads: list[Upload], limits: Limits) -> Volume:
    """Several DICOM uploads (one series) → :class:`Volume` in HU, ``(D, H, W)``."""
    images = _decode_all(uploads, limits)
    return _assemble([image for _, image in images], limits)
