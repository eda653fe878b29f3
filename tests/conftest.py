"""Suite-wide settings: no test may reach the network, and GPU tests skip, saying why, on CPU."""

import os

import pytest

os.environ.setdefault("PYDICOM_DATA_NO_DOWNLOAD", "1")

from .served_exports import exports  # noqa: E402, F401 - a session fixture of tests/serve and tests/pacs


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Triton-interpreter tests run in their own process (`make test` does both): TRITON_INTERPRET=1
# must be set before triton is first imported, and it would slow every other test down.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["triton"]
