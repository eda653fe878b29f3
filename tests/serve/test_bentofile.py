"""``bentoml build`` turns bentofile.yaml into a Bento: the service and what it imports, no
training code, the GPU base image; and the service's import chain never reaches ``train``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_bentoml_build(tmp_path):
    env = os.environ | {"BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "."],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (bento,) = (tmp_path / "home" / "bentos" / "anatomix").glob("*/bento.yaml")
    meta = yaml.safe_load(bento.read_text())
    assert meta["service"] == "serve.service:AnatomixService"
    assert str(meta["docker"]["cuda_version"]).startswith("12.8")
    src = bento.parent / "src"
    # the API is serve.app's Starlette routes (mounted at /), not BentoML typed APIs
    app = (src / "serve" / "app.py").read_text()
    for route in ("/v1/cxr/classify", "/v1/embed", "/v1/ct/segment", "/v1/cxr/correspond"):
        assert f'"{route}"' in app, route
    assert not (src / "serve" / "fuzz.py").exists()  # test tooling stays out of the Bento
    assert (src / "serve" / "service.py").is_file() and (src / "export" / "runtime.py").is_file()
    # no training code: the Bento's Python files import without torch (test_torch_free.py)
    for gone in ("train", "tests", "models", "kernels"):
        assert not (src / gone).exists(), gone
    assert not (src / "export" / "onnx.py").exists() and not (src / "export" / "bundle.py").exists()
    requirements = (bento.parent / "env" / "python" / "requirements.txt").read_text()
    assert "torch" not in requirements and "timm" not in requirements
    dockerfile = (bento.parent / "env" / "docker" / "Dockerfile").read_text()
    assert "nvidia/cuda:12.8" in dockerfile
    envs = {e["name"]: str(e.get("value")) for e in meta.get("envs") or []}
    assert envs.get("MALLOC_ARENA_MAX") == "2" and "ANATOMIX_MODELS" in envs
