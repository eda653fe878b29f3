"""scripts/demo_models.py: argument checks and resumption (a finished export is never rebuilt).
The full build (~12 min on 2 cores) is run by `make serve`, not here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "demo_models.py"


def _run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_help_and_unknown_model():
    assert _run("--help").returncode == 0
    bad = _run("--only", "nonsense")
    assert bad.returncode == 2 and "unknown demo model" in bad.stderr


def test_existing_exports_are_kept(tmp_path):
    for name in ("nodule_seg", "cxr_findings", "peac"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    out = _run("--exports", str(tmp_path), "--runs", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("already exported") == 3 and not (tmp_path / "runs").exists()
