"""The real DICOM files shipped by pydicom and pydicom-data, enumerated from disk (no download).

``pydicom.data.get_testdata_files(pattern)`` would try the network for missing files, so the test
corpus is listed from the two packages' folders directly.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import data_store  # the pydicom-data package
import pydicom

PYDICOM_ROOT = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA_ROOT = Path(data_store.__file__).parent / "data"
SKIP_SUFFIXES = (".py", ".pyc", ".json", ".txt")


def corpus_files() -> list[Path]:
    """Every file of both test-data folders, sorted; includes non-DICOM and broken files."""
    files = []
    for root in (PYDICOM_ROOT, PYDICOM_DATA_ROOT):
        files += [
            p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(SKIP_SUFFIXES)
        ]
    return files


def corpus_id(path: Path) -> str:
    """A short, unique test id: the path below the package's data folder."""
    for root in (PYDICOM_ROOT, PYDICOM_DATA_ROOT):
        if root in path.parents:
            return str(path.relative_to(root))
    return path.name


def open_bytes(path: Path) -> io.BytesIO:
    """The file's bytes, inflated when gzip-compressed (as ``read_image`` does)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return io.BytesIO(raw)
