"""Open a DICOM source (path, bytes or binary file object) as a seekable stream.

Gzip-compressed input (``.dcm.gz``, magic ``1f 8b``) is inflated transparently, with a cap on the
inflated size so that a small compressed upload cannot expand into memory without bound.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path
from typing import BinaryIO, Union

from .errors import ImageTooLargeError, ImagingError, NotDicomError

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]  # noqa: UP007 (3.10 alias)

GZIP_MAGIC = b"\x1f\x8b"


def open_source(source: Source, max_bytes: int) -> BinaryIO:
    """Return a seekable binary stream over ``source`` (inflated if it is gzip data).

    Raises:
        ImagingError: the path does not exist or cannot be read.
        NotDicomError: the input is empty.
        ImageTooLargeError: gzip input inflates past ``max_bytes``.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImagingError(f"no such file: {path.name!r}")
        try:
            stream: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            raise ImagingError(f"cannot open {path.name!r}: {exc.strerror}") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        stream = source if _seekable(source) else io.BytesIO(source.read())
    else:
        raise TypeError(
            f"read_image expects a path, bytes or a binary file object, not {type(source)}"
        )

    head = stream.read(2)
    stream.seek(0)
    if not head:
        raise NotDicomError("the input is empty (0 bytes)")
    if head == GZIP_MAGIC:
        stream = _inflate(stream, max_bytes)
    return stream


def _seekable(f: BinaryIO) -> bool:
    try:
        return f.seekable()
    except (AttributeError, ValueError):
        return False


def _inflate(stream: BinaryIO, max_bytes: int) -> BinaryIO:
    """Inflate gzip data into memory, refusing more than ``max_bytes``."""
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=stream) as gz:
            while chunk := gz.read(1 << 20):
                out.write(chunk)
                if out.tell() > max_bytes:
                    raise ImageTooLargeError(
                        f"gzip input inflates past the limit of {max_bytes} bytes"
                    )
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: damaged deflate blocks
        raise NotDicomError(f"gzip input is corrupt ({type(exc).__name__})") from None
    finally:
        stream.close()
    out.seek(0)
    return out
