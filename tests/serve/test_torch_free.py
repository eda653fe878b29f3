"""Serving without the training stack (issue #17): the service imports, loads every model kind and
answers every route in a fresh interpreter without importing torch, timm, numba, triton, onnx or
the project's training-side packages; the serving requirements and the Bento list none of them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

#: top-level modules a serving process must never import
TRAINING_STACK = ("torch", "torchvision", "timm", "numba", "triton", "onnx", "onnxscript",
                  "onnxslim", "models", "kernels", "train", "safetensors", "SimpleITK",
                  "nibabel")  # fmt: skip

# Runs in a fresh interpreter: the service's module, its start-up (settings, decoders, models)
# and one good request per route through the ASGI app, then lists what was imported.
SCRIPT = r"""
import io, json, sys, zipfile
from pathlib import Path

from pydicom.data import get_testdata_file
from starlette.testclient import TestClient

import serve.service as service
from serve import app as api

api.STATE = service.build_state()
film = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
series = [Path(p).read_bytes() for p in json.loads(sys.argv[1])]
study = io.BytesIO()
with zipfile.ZipFile(study, "w") as zf:
    for i, b in enumerate(series):
        zf.writestr(f"ct/{i}.dcm", b)
statuses = {}
with TestClient(api.build_app()) as client:
    def post(path, files, data=None):
        statuses[path] = client.post(path, files=files, data=data or {}).status_code
    post("/v1/cxr/classify", [("files", ("a.dcm", film, "application/dicom"))])
    post("/v1/embed", [("files", ("a.dcm", film, "application/dicom"))])
    post("/v1/cxr/correspond", [("image_a", ("a.dcm", film, "application/dicom")),
                                ("image_b", ("b.dcm", film, "application/dicom"))],
         {"points": "500,400"})
    post("/v1/ct/segment", [("files", ("study.zip", study.getvalue(), "application/zip"))])
    post("/v1/ct/segment.dcm", [("files", ("study.zip", study.getvalue(), "application/zip"))])
    for path in ("/v1/models", "/metrics", "/docs.json"):
        statuses[path] = client.get(path).status_code
for pool in api.STATE.decoders.values():
    pool.close()
print(json.dumps({"statuses": statuses, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_the_service_answers_every_route_without_the_training_stack(exports, tmp_path):
    from imaging.phantoms import make_chest_ct
    from imaging.writers import ct_slice_datasets

    paths = []
    for i, ds in enumerate(ct_slice_datasets(make_chest_ct(4, shape=(20, 40, 40)).volume)):
        paths.append(str(tmp_path / f"{i}.dcm"))
        ds.save_as(paths[-1], enforce_file_format=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANATOMIX_")}
    env |= {"ANATOMIX_MODELS": str(exports), "ANATOMIX_PREPROCESS": "numpy",
            "ANATOMIX_SPOOL_DIR": str(tmp_path / "spool")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(paths)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["statuses"].values()) == {200}, result["statuses"]
    imported = set(result["modules"]) & set(TRAINING_STACK)
    assert not imported, f"the serving process imported {sorted(imported)}"


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_serving_requirements_and_the_bento_leave_out_the_training_stack():
    reqs = [
        line
        for line in (ROOT / "serve" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    training = {m.lower() for m in TRAINING_STACK} | {"onnxruntime-training"}
    for names in (_names(reqs), _names(bento["python"]["packages"])):
        assert not names & training, names & training
    # the Bento is the GPU build of the same set: onnxruntime-gpu in place of onnxruntime
    gpu = _names(bento["python"]["packages"])
    assert _names(reqs) - {"onnxruntime"} <= gpu and "onnxruntime-gpu" in gpu
    # and carries no training code
    assert not {"models/**/*.py", "kernels/**/*.py", "train/**/*.py"} & set(bento["include"])
    # every serving requirement is also a dependency of the full install, with the same bounds
    pyproject = (ROOT / "pyproject.toml").read_text()
    for r in reqs:
        assert f'"{r.split("#")[0].strip()}"' in pyproject, r
