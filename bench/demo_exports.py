"""The exports the server benchmarks use: the demo models of `make serve`, built if missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_demo_exports(models: Path) -> Path:
    """``models`` itself when it holds an export; else the demo models are built there (minutes,
    with progress, by ``scripts/demo_models.py``, as ``make serve`` does)."""
    models = Path(models)
    if not list(models.glob("*/manifest.json")) or (models / ".demo-incomplete").exists():
        script = ROOT / "scripts" / "demo_models.py"
        cmd = [sys.executable, str(script), "--exports", str(models)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return Path(models)
