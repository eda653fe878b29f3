"""``python -m export.run``: from a real training run, from an official-layout release, and the
clear failures (no GPU for TensorRT, a pickle without --official, an empty run directory)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from export.run import main
from export.runtime import load
from models import import_official
from tests.models.official_releases import write_official

from .conftest import ROI, real_ct_cubes, real_cxr_batch


def test_help():
    out = subprocess.run(
        [sys.executable, "-m", "export.run", "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--from", "--task", "--format", "--precision", "--max-batch", "--out"):
        assert flag in out.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch of the tiny fine-tuning preset: a real run directory with its card."""
    run_dir = tmp_path_factory.mktemp("runs") / "seg"
    cmd = [
        sys.executable, "-m", "train.run", "finetune",
        "--config", "configs/genesis/finetune_tiny.yaml", "--run-dir", str(run_dir),
        "--set", "loop.epochs=1", "--set", "loop.progress=false",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return run_dir


def test_export_a_training_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "seg"
    assert main(["--from", str(tiny_run), "--out", str(out), "--max-batch", "4"]) == 0
    printed = capsys.readouterr().out
    assert "exported genesis/segment" in printed and "model.onnx" in printed and "parity" in printed
    m = load(out).manifest
    assert m.source["kind"] == "run" and m.source["epoch"] == "0"
    assert m.config["task"]["name"] == "synthetic_nodule_seg"  # the run's resolved config
    assert m.inference["roi_size"] == [32, 32, 16] and m.inference["threshold"] == 0.5
    assert m.outputs[0].labels == ["nodule"] and m.inputs[0].max_batch == 4

    from models.checkpoint import load_model

    model = load_model(tiny_run / "model.safetensors").eval()
    x = real_ct_cubes(m.preprocessing, 3, tuple(m.inference["roi_size"]))
    with torch.no_grad():
        want = torch.cat([torch.sigmoid(model(torch.from_numpy(x[i : i + 1]))) for i in range(3)])
    np.testing.assert_allclose(load(out).predict(x)["probabilities"], want.numpy(), 1e-4, 1e-4)


@pytest.fixture(scope="module")
def released_genesis(tmp_path_factory):
    """``Genesis_Chest_CT.pt`` as released (DataParallel keys in a training checkpoint)."""
    from models.unet3d import UNet3D

    torch.manual_seed(0)
    state = UNet3D().state_dict()
    g = torch.Generator().manual_seed(1)
    for value in state.values():
        if value.is_floating_point():
            value.copy_(torch.randn(value.shape, generator=g) * 0.05)
    path = tmp_path_factory.mktemp("official") / "Genesis_Chest_CT.pt"
    return write_official(path, state)


def test_export_an_official_release(released_genesis, tmp_path, capsys):
    out = tmp_path / "genesis"
    args = ["--from", str(released_genesis), "--official", "genesis", "--task", "restore",
            "--roi", "32,32,16", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    runtime = load(out)
    m = runtime.manifest
    assert m.source["kind"] == "official" and m.task == "restore"
    assert m.preprocessing.hu_clip == (-1000.0, 1000.0)
    model = import_official("genesis", released_genesis).model.eval()
    x = real_ct_cubes(m.preprocessing, 3, ROI)
    with torch.no_grad():
        want = torch.cat([model(torch.from_numpy(x[i : i + 1])) for i in range(3)]).numpy()
    np.testing.assert_allclose(runtime.predict(x)["restored"], want, rtol=1e-4, atol=1e-4)
    assert json.loads((out / "manifest.json").read_text())["source"]["source_file"] == (
        "Genesis_Chest_CT.pt"
    )


def test_failures_are_clear(released_genesis, tmp_path, capsys):
    assert main(["--from", str(released_genesis), "--out", str(tmp_path / "a")]) == 2
    assert "--official" in capsys.readouterr().err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["--from", str(empty), "--out", str(tmp_path / "b")]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
    assert main(["--from", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert "no such" in capsys.readouterr().err
    assert main(["--from", str(released_genesis), "--official", "genesis", "--task", "classify",
                 "--out", str(tmp_path / "d")]) == 2  # fmt: skip
    assert "does not apply to unet3d" in capsys.readouterr().err


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on machines without a GPU"
)
def test_tensorrt_without_a_gpu_fails_clearly(released_genesis, tmp_path, capsys):
    out = tmp_path / "trt"
    args = ["--from", str(released_genesis), "--official", "genesis", "--format", "tensorrt",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "TensorRT export needs an NVIDIA GPU" in err
    assert not (out / "manifest.json").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_is_built_verified_and_preferred(released_genesis, tmp_path, precision):
    from export.tensorrt import tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(why)
    out = tmp_path / f"trt_{precision}"
    args = ["--from", str(released_genesis), "--official", "genesis", "--task", "restore",
            "--roi", "32,32,16", "--format", "all", "--precision", precision, "--max-batch", "4",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    runtime = load(out)
    assert runtime.backend == "tensorrt" and (out / "model.plan").is_file()
    trt = [p for p in runtime.manifest.parity if p.runtime == "tensorrt"]
    assert trt and trt[0].passed and trt[0].precision == precision
    x = real_ct_cubes(runtime.manifest.preprocessing, 3, ROI)
    want = load(out, backend="ort-cpu").predict(x)["restored"]
    tol = 1e-3 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(runtime.predict(x)["restored"], want, rtol=tol, atol=tol)


@pytest.mark.slow
def test_export_an_official_ark_release(tmp_path):
    """Ark's released teacher (timm 0.5.4 Swin names, built by the Ark import tests) → ONNX;
    ORT equals the independently built source network, every head."""
    from tests.models.official_releases import TINY, ArkRelease

    source = ArkRelease(TINY, "linear", seed=0)
    path = tmp_path / "ark6_teacher_ep200_swint_projector1376.pth.tar"
    torch.save(source.released_state((2, 2, 6, 2)), path)
    out = tmp_path / "ark"
    assert main(["--from", str(path), "--official", "ark", "--out", str(out)]) == 0
    runtime = load(out)
    assert runtime.manifest.preprocessing.crop == 224 and len(runtime.output_names) == 7
    x = real_cxr_batch(runtime.manifest.preprocessing, 3)
    got = runtime.predict(x)
    with torch.no_grad():
        z, logits = source(torch.from_numpy(x))
    np.testing.assert_allclose(got["embedding"], z.numpy(), rtol=1e-4, atol=1e-4)
    for name, lg in zip(runtime.output_names[1:], logits, strict=True):
        np.testing.assert_allclose(got[name], lg.sigmoid().numpy(), rtol=1e-4, atol=1e-4)
