"""The TensorRT runner's torch-free device memory (export/cuda_memory.py) and its bf16 host
conversions: the conversions against torch's own bfloat16 casts, the buffers on a GPU (skipped,
saying why, without one or without ``cuda-bindings``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export import cuda_memory
from export.tensorrt import from_bf16_bits, to_bf16_bits

from ..fresh import run_fresh


def test_bf16_bits_match_torch():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.normal(0, 1, 5000), rng.normal(0, 1e30, 100), rng.normal(0, 1e-30, 100),
        [0.0, -0.0, np.inf, -np.inf, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 65504.0, 3.4e38],
    ]).astype(np.float32)  # fmt: skip
    want = torch.from_numpy(x).to(torch.bfloat16)
    bits = to_bf16_bits(x)
    np.testing.assert_array_equal(bits, want.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(from_bf16_bits(bits), want.float().numpy())
    assert np.isnan(from_bf16_bits(to_bf16_bits(np.array([np.nan], np.float32))))[0]


def test_without_the_bindings_the_error_names_the_package():
    code = (
        "import sys; sys.modules['cuda'] = None; sys.modules['cuda.bindings'] = None\n"
        "from export import cuda_memory as m\n"
        "assert m.device_count() == 0\n"
        "try:\n    m.Stream()\nexcept m.CudaError as e:\n    assert 'cuda-bindings' in str(e), e\n"
        "else:\n    raise SystemExit('no error')\n"
        "import export.tensorrt as t\n"
        "ok, reason = t.tensorrt_available()\n"
        "assert not ok and 'cuda-bindings' in reason, reason\n"
    )
    done = run_fresh(code)
    assert done.returncode == 0, done.stderr


@pytest.mark.gpu
def test_device_array_round_trip():
    if cuda_memory.device_count() == 0:
        pytest.skip("cuda-bindings or a CUDA device is missing (pip install 'anatomix[gpu]')")
    stream = cuda_memory.Stream()
    for dtype in (np.float32, np.float16, np.int64, np.uint16, np.bool_):
        host = (np.arange(3 * 5 * 7) % 5).reshape(3, 5, 7).astype(dtype)
        buf = cuda_memory.DeviceArray(host.shape, host.dtype)
        buf.copy_from(host, stream)
        np.testing.assert_array_equal(buf.copy_to_host(stream), host)
        buf.free()
    with pytest.raises(cuda_memory.CudaError, match="does not fit"):
        cuda_memory.DeviceArray((2,), np.float32).copy_from(np.zeros(3, np.float32), stream)
    stream.close()
