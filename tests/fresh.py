"""Run code in a fresh interpreter from the repository root: for tests of what a module imports
(or survives not importing), which a test process that already imported everything cannot see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_fresh(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` in the repository root; output captured as text."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
