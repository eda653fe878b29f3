"""Uploads → decoded images and volumes, or a :class:`RequestError` that is an HTTP 4xx.

Everything a client can get wrong is caught here, before any model runs: uploads over the size
limit, too many files, zip archives whose members escape their root or inflate without bound,
files that are not DICOM, truncated, without pixels, in an unsupported transfer syntax or
photometric interpretation, the wrong modality for an endpoint, and series whose slices disagree.
Each becomes ``{"error": code, "detail": text}`` with a 4xx status. Details never quote patient
attributes (the imaging layer's messages do not either), so they are safe to log.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import zipfile
from dataclasses import dataclass

from imaging.dicom import read_image
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
from imaging.series import read_series

ZIP_MAGIC = b"PK\x03\x04"
MiB = 1 << 20


class RequestError(Exception):
    """A client error: HTTP ``status`` with body ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = int(status), code, detail

    def body(self) -> dict:
        return {"error": self.code, "detail": self.detail}


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


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    """Upload limits (environment overrides in brackets).

    Attributes:
        max_upload_bytes: all files of one request together [ANATOMIX_MAX_UPLOAD_MB].
        max_files: files in one request, zip members included [ANATOMIX_MAX_FILES].
        max_uncompressed_bytes: what the zip members of one request may inflate to
            [ANATOMIX_MAX_UNZIPPED_MB].
        max_pixels: rows × columns × frames of one image (checked before decoding).
    """

    max_upload_bytes: int = 512 * MiB
    max_files: int = 1000
    max_uncompressed_bytes: int = 2048 * MiB
    max_pixels: int = 64 * MiB

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_upload_bytes=_env_int("ANATOMIX_MAX_UPLOAD_MB", 512) * MiB,
            max_files=_env_int("ANATOMIX_MAX_FILES", 1000),
            max_uncompressed_bytes=_env_int("ANATOMIX_MAX_UNZIPPED_MB", 2048) * MiB,
        )


@dataclass
class Upload:
    """One uploaded file (or zip member): a display name and its bytes."""

    name: str
    data: bytes


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


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """Read one member, stopping as soon as it inflates past ``budget`` (zip bombs lie about
    their sizes in the header, so the declared size is checked and the real one too)."""
    if info.file_size > budget:
        raise RequestError(413, "upload_too_large", "the archive inflates past the size limit")
    out = io.BytesIO()
    with zf.open(info) as f:
        while chunk := f.read(MiB):
            out.write(chunk)
            if out.tell() > budget:
                raise RequestError(
                    413, "upload_too_large", "the archive inflates past the size limit"
                )
    return out.getvalue()


def expand_uploads(files: list[Upload], limits: Limits) -> list[Upload]:
    """Check sizes and counts, and replace each zip archive by its (regular-file) members.

    Raises:
        RequestError: 400 no files / unsafe or corrupt archive; 413 too large / too many files.
    """
    if not files:
        raise RequestError(400, "no_files", "the request carries no file")
    total = sum(len(f.data) for f in files)
    if total > limits.max_upload_bytes:
        raise RequestError(
            413, "upload_too_large",
            f"the upload is {total / MiB:.1f} MiB; the limit is "
            f"{limits.max_upload_bytes / MiB:.0f} MiB",
        )  # fmt: skip
    out: list[Upload] = []
    budget = limits.max_uncompressed_bytes
    for f in files:
        if not f.data.startswith(ZIP_MAGIC):
            out.append(f)
            continue
        try:
            zf = zipfile.ZipFile(io.BytesIO(f.data))
            members = [i for i in zf.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, ValueError):
            raise RequestError(
                400, "bad_archive", f"{f.name}: not a readable zip archive"
            ) from None
        if len(out) + len(members) > limits.max_files:
            raise RequestError(
                413, "too_many_files", f"more than {limits.max_files} files in one request"
            )
        for info in members:
            if not _safe_member(info):
                raise RequestError(
                    400, "unsafe_archive",
                    f"{f.name}: a member's path leaves the archive root or is a link",
                )  # fmt: skip
            try:
                data = _read_member(zf, info, budget)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
                raise RequestError(
                    400, "bad_archive", f"{f.name}: a member cannot be extracted"
                ) from None
            budget -= len(data)
            out.append(Upload(f"{f.name}/{posixpath.basename(info.filename)}", data))
    if len(out) > limits.max_files:
        raise RequestError(
            413, "too_many_files", f"more than {limits.max_files} files in one request"
        )
    return out


def decode_image(upload: Upload, limits: Limits) -> Image:
    """One DICOM upload → :class:`Image` (HU for CT; higher is denser for radiographs)."""
    try:
        return read_image(upload.data, max_pixels=limits.max_pixels)
    except ImagingError as exc:
        raise request_error(exc, upload.name) from None


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
    try:
        return read_series([u.data for u in uploads])
    except ImagingError as exc:
        raise request_error(exc) from None
