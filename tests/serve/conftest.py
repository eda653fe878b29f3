"""Upload helpers of the serving tests (the exports they serve: tests/served_exports.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from pydicom.data import get_testdata_file


def dicom_bytes(name: str) -> bytes:
    """A file of pydicom's / pydicom-data's test data, as uploaded."""
    return Path(get_testdata_file(name)).read_bytes()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A deflated zip archive of ``{member name: content}``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()
