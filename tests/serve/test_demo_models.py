"""scripts/demo_models.py: argument checks and resumption (a finished export is never rebuilt).
The full build (~12 min on 2 cores) is run by `make serve`, not here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from export.manifest import SCHEMA_VERSION

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
        (tmp_path / name / "manifest.json").write_text(f'{{"schema_version": {SCHEMA_VERSION}}}')
    out = _run("--exports", str(tmp_path), "--runs", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("already exported") == 3 and not (tmp_path / "runs").exists()
    assert not (tmp_path / ".demo-incomplete").exists()  # a finished build leaves no marker


def test_an_export_of_an_older_schema_is_made_again(tmp_path):
    """The server refuses a schema-1 manifest; the demo build must not keep one."""
    spec = importlib.util.spec_from_file_location("demo_models", ROOT / "scripts/demo_models.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    cases = {"current": f'{{"schema_version": {SCHEMA_VERSION}}}', "old": '{"schema_version": 1}',
             "broken": "{", "list": "[]"}  # fmt: skip
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)
    kept = {name: demo._exported(tmp_path / name) for name in [*cases, "absent"]}
    assert kept == {"current": True, "old": False, "broken": False, "list": False, "absent": False}


def _make_serve(tmp_path, exports):
    """`make serve` with stand-ins for the venv's python (records its arguments, fails) and
    bentoml (records that it was started), so that no build or server runs."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    for name, code in (("python", 3), ("bentoml", 0)):
        fake = venv / "bin" / name
        fake.write_text(f'#!/bin/sh\necho "{name} $@" >> {tmp_path / "called"}\nexit {code}\n')
        fake.chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()
    env = {"PATH": "/usr/bin:/bin", "ANATOMIX_MODELS": str(exports)}
    out = subprocess.run(["make", "-s", "serve", f"VENV={venv}", f"STAMP={stamp}"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    called = (tmp_path / "called").read_text() if (tmp_path / "called").exists() else ""
    return out, called


def test_make_serve_resumes_an_interrupted_demo_build(tmp_path):
    exports = tmp_path / "exports"
    (exports / "nodule_seg").mkdir(parents=True)
    (exports / "nodule_seg" / "manifest.json").write_text("{}")  # one of three was finished
    (exports / ".demo-incomplete").touch()
    out, called = _make_serve(tmp_path, exports)
    assert "interrupted: resuming it" in out.stdout
    assert "scripts/demo_models.py" in called and str(exports) in called
    assert "bentoml" not in called  # the failed build stops the recipe
    # the same exports without the marker are the user's own: served, no demo build
    (exports / ".demo-incomplete").unlink()
    (tmp_path / "called").unlink()
    out, called = _make_serve(tmp_path, exports)
    assert "demo_models" not in called and "resuming" not in out.stdout
    assert called.startswith("bentoml serve serve.service:AnatomixService")
