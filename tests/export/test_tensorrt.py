"""TensorRT engine build, run and parity with onnxruntime (CPU) on small models made here.

GPU tests need a CUDA device (tests/conftest.py skips them otherwise) and the `tensorrt` package
(skipped, with the reason, when it is missing). The CPU tests check the module's behaviour on a
machine without either, and the fp16 ONNX conversion that TensorRT 11 relies on.
"""

import importlib.util

import numpy as np
import pytest
import torch

from export.tensorrt import (
    TensorRTError,
    TensorRTRunner,
    build_engine,
    convert_onnx_to_fp16,
    tensorrt_available,
    verify_engine,
)

from ..fresh import run_fresh

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # legacy TorchScript export

HW = 8  # 2D input is (B, 3, HW, HW)


class _Tiny2d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * HW * HW, 5)

    def forward(self, x):  # (B, 3, H, W) -> (B, 5)
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class _Tiny3d(torch.nn.Module):
    """Fully convolutional: any D, H, W."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1)
        )

    def forward(self, x):  # (B, 1, D, H, W) -> (B, 2, D, H, W)
        return self.net(x)


def _export(model, example, path, dynamic_axes):
    torch.manual_seed(0)
    model.eval()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes=dynamic_axes,
        opset_version=17,
    )
    return path


@pytest.fixture
def onnx_2d(tmp_path):
    torch.manual_seed(0)
    return _export(
        _Tiny2d(), torch.randn(2, 3, HW, HW), tmp_path / "tiny2d.onnx", {"input": {0: "batch"}}
    )


def _ort(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _batch(n, seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((n, 3, HW, HW), np.float32)}


PROFILE_2D = {"input": ((1, 3, HW, HW), (2, 3, HW, HW), (4, 3, HW, HW))}


# --------------------------------------------------------------------------------------------
# CPU: no TensorRT, no GPU


def test_module_imports_without_tensorrt():
    # A fresh interpreter in which `import tensorrt` fails, whatever is installed here.
    code = (
        "import sys; sys.modules['tensorrt'] = None\n"
        "import export.tensorrt as m\n"
        "ok, reason = m.tensorrt_available()\n"
        "assert not ok and '`tensorrt`' in reason, reason\n"
    )
    done = run_fresh(code)
    assert done.returncode == 0, done.stderr


def test_unavailable_on_this_machine():
    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT and a GPU are present; the unavailable path is not reachable")
    ok, reason = tensorrt_available()
    assert ok is False
    assert isinstance(reason, str) and reason.strip()


def test_public_functions_raise_clear_error(tmp_path, onnx_2d):
    ok, _ = tensorrt_available()
    if ok:
        pytest.skip("TensorRT is available here")
    with pytest.raises(TensorRTError, match="(?i)GPU|tensorrt") as info:
        build_engine(onnx_2d, tmp_path / "model.plan", shapes=PROFILE_2D)
    assert "anatomix[gpu]" in str(info.value)
    assert not (tmp_path / "model.plan").exists()
    with pytest.raises(TensorRTError, match="(?i)GPU|tensorrt"):
        TensorRTRunner(tmp_path / "model.plan")
    with pytest.raises(TensorRTError, match="(?i)GPU|tensorrt"):
        verify_engine(tmp_path / "model.plan", onnx_2d, [_batch(1)], rtol=1e-4, atol=1e-4)


def test_build_engine_rejects_bad_arguments(tmp_path, onnx_2d):
    with pytest.raises(ValueError, match="precision"):
        build_engine(onnx_2d, tmp_path / "m.plan", shapes=PROFILE_2D, precision="int8")
    bad = {"input": ((2, 3, HW, HW), (1, 3, HW, HW), (4, 3, HW, HW))}
    with pytest.raises(ValueError, match="min <= opt <= max"):
        build_engine(onnx_2d, tmp_path / "m.plan", shapes=bad)


def test_convert_onnx_to_fp16(tmp_path, onnx_2d):
    pytest.importorskip("onnxruntime.transformers.float16")
    dst = convert_onnx_to_fp16(onnx_2d, tmp_path / "tiny2d_fp16.onnx")
    assert dst == tmp_path / "tiny2d_fp16.onnx" and dst.is_file()
    model16 = onnx.load(str(dst))
    inits = list(model16.graph.initializer)
    assert inits and all(i.data_type == onnx.TensorProto.FLOAT16 for i in inits)
    # keep_io_types: callers still feed and receive float32
    f32 = onnx.TensorProto.FLOAT
    assert model16.graph.input[0].type.tensor_type.elem_type == f32
    assert model16.graph.output[0].type.tensor_type.elem_type == f32
    for n in (1, 3):
        feeds = _batch(n, seed=n)
        want, got = _ort(onnx_2d, feeds), _ort(dst, feeds)
        assert got.dtype == np.float32 and got.shape == (n, 5)
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------------------------
# GPU: TensorRT builds and runs engines


@pytest.fixture
def trt():
    ok, reason = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT unavailable: {reason}")
    import tensorrt

    return tensorrt


@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime(trt, tmp_path, onnx_2d):
    messages = []
    plan = build_engine(
        onnx_2d, tmp_path / "model.plan", shapes=PROFILE_2D, progress=messages.append
    )
    assert plan == tmp_path / "model.plan" and plan.stat().st_size > 0 and messages
    runner = TensorRTRunner(plan)
    assert runner.input_names == ["input"] and runner.output_names == ["output"]
    for n in (1, 3):
        feeds = _batch(n, seed=n)
        got = runner.run(feeds)["output"]
        assert got.shape == (n, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, _ort(onnx_2d, feeds), rtol=1e-4, atol=1e-4)

    report = verify_engine(plan, onnx_2d, [_batch(1), _batch(3)], rtol=1e-4, atol=1e-4)
    assert report["passed"] and report["runtime"] == "tensorrt"
    assert report["precision"] == "fp32" and report["max_abs"] <= 1e-3

    with pytest.raises(TensorRTError, match="profile"):
        runner.run(_batch(5))  # above the profile's max batch
    with pytest.raises(TensorRTError, match="missing"):
        runner.run({})


@pytest.mark.gpu
def test_fp16_engine_matches_onnxruntime(trt, tmp_path, onnx_2d):
    src = onnx_2d
    if not hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11+: strongly typed, needs an fp16 ONNX
        with pytest.raises(TensorRTError, match="convert_onnx_to_fp16"):
            build_engine(onnx_2d, tmp_path / "x.plan", shapes=PROFILE_2D, precision="fp16")
        src = convert_onnx_to_fp16(onnx_2d, tmp_path / "tiny2d_fp16.onnx")
    plan = build_engine(src, tmp_path / "fp16.plan", shapes=PROFILE_2D, precision="fp16")
    runner = TensorRTRunner(plan)
    for n in (1, 3):
        feeds = _batch(n, seed=n)
        np.testing.assert_allclose(
            runner.run(feeds)["output"], _ort(onnx_2d, feeds), rtol=1e-2, atol=1e-2
        )
    report = verify_engine(plan, onnx_2d, [_batch(2)], rtol=1e-2, atol=1e-2, precision="fp16")
    assert report["passed"] and report["precision"] == "fp16"


@pytest.mark.gpu
def test_3d_engine_with_dynamic_spatial_profile(trt, tmp_path):
    dims = {0: "batch", 2: "d", 3: "h", 4: "w"}
    axes = {"input": dims, "output": dims}
    torch.manual_seed(0)
    path = _export(_Tiny3d(), torch.randn(1, 1, 16, 16, 16), tmp_path / "tiny3d.onnx", axes)
    shapes = {"input": ((1, 1, 8, 8, 8), (1, 1, 16, 16, 16), (2, 1, 24, 24, 24))}
    plan = build_engine(path, tmp_path, shapes=shapes)  # a directory gets model.plan
    assert plan == tmp_path / "model.plan"
    runner = TensorRTRunner(plan)
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 8, 8, 8), (2, 1, 13, 24, 17), (1, 1, 24, 9, 20)]:
        feeds = {"input": rng.standard_normal(shape, np.float32)}
        got = runner.run(feeds)["output"]
        assert got.shape == (shape[0], 2, *shape[2:])
        np.testing.assert_allclose(got, _ort(path, feeds), rtol=1e-4, atol=1e-4)
    with pytest.raises(TensorRTError, match="profile"):
        runner.run({"input": np.zeros((1, 1, 32, 8, 8), np.float32)})


@pytest.mark.gpu
def test_timing_cache_written_and_reused(trt, tmp_path, onnx_2d):
    cache = tmp_path / "cache" / "timing.cache"
    build_engine(onnx_2d, tmp_path / "a.plan", shapes=PROFILE_2D, timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    messages = []
    plan = build_engine(
        onnx_2d,
        tmp_path / "b.plan",
        shapes=PROFILE_2D,
        timing_cache=cache,
        progress=messages.append,
    )
    assert any("loaded timing cache" in m for m in messages)
    feeds = _batch(2)
    np.testing.assert_allclose(
        TensorRTRunner(plan).run(feeds)["output"], _ort(onnx_2d, feeds), rtol=1e-4, atol=1e-4
    )


@pytest.mark.gpu
def test_parse_errors_are_reported(trt, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an ONNX protobuf")
    with pytest.raises(TensorRTError, match="could not parse"):
        build_engine(bad, tmp_path / "model.plan", shapes=PROFILE_2D)
    assert not (tmp_path / "model.plan").exists()


@pytest.mark.gpu
def test_profile_must_cover_dynamic_inputs(trt, tmp_path, onnx_2d):
    with pytest.raises(TensorRTError, match="dynamic shape"):
        build_engine(onnx_2d, tmp_path / "model.plan", shapes={})
    with pytest.raises(TensorRTError, match="not inputs"):
        build_engine(onnx_2d, tmp_path / "model.plan", shapes={"nope": PROFILE_2D["input"]})
