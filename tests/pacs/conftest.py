"""Set-up for the real-PACS tests: every test here is marked ``pacs``, and the ``orthanc`` fixture
is a running Orthanc (tests/pacs/orthanc.py), skipped with the reason where none is installed
(failed instead under ANATOMIX_REQUIRE_PACS=1, as in CI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .orthanc import Orthanc, require_pacs, start_orthanc

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A conftest's collection hook sees the whole session's items, not only this directory's.
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.pacs)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc per test module (starting one takes ~0.2 s, stopping one ~3 s)."""
    require_pacs()
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()
