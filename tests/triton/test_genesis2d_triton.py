"""Genesis-2D Triton kernel, run by the interpreter on CPU, against the PyTorch reference.

Both paths consume the same drawn :class:`Genesis2DParams`: shuffling and painting must agree bit
for bit, the Bezier map within 1e-6 (float32) or bfloat16 rounding. Shapes are odd on purpose.
"""

import pytest
import torch

from kernels import genesis2d_triton
from kernels.genesis2d import (
    Genesis2DConfig,
    apply_genesis2d,
    apply_genesis2d_reference,
    genesis2d,
    sample_genesis2d_params,
    use_triton,
)
from kernels.genesis2d_triton import _genesis2d_triton
from tests.kernels.genesis_parity import GENESIS2D, assert_matches, check2d, draw2d, gen

SHAPES = [(1, 3, 33, 35), (5, 3, 20, 21), (2, 1, 64, 48)]


def triton_path(images, params, config):
    return _genesis2d_triton(images, params, config)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(GENESIS2D))
def test_kernel_matches_reference_float32(shape, name):
    check2d(triton_path, shape, name, seed=len(name) + shape[0])


@pytest.mark.parametrize("name", ["shuffle", "shuffle+paint", "all", "defaults"])
def test_kernel_matches_reference_bfloat16(name):
    images, params, config = draw2d((5, 3, 20, 21), name, seed=3, dtype=torch.bfloat16)
    want = apply_genesis2d_reference(images, params, config)
    # pure copies of bfloat16 values are exact; the interpreter truncates float32 -> bfloat16
    # where GPUs round to nearest, so painted and mapped values are within one bfloat16 step
    assert_matches(triton_path(images, params, config), want, exact=name == "shuffle")


def test_dispatch_reference_by_default_kernel_when_forced(monkeypatch):
    shape = (2, 3, 20, 21)
    images = torch.rand(shape, generator=gen(0))
    calls = []
    launcher = genesis2d_triton._genesis2d_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return launcher(*args, **kwargs)

    monkeypatch.setattr(genesis2d_triton, "_genesis2d_triton", spy)
    monkeypatch.delenv("ANATOMIX_KERNELS", raising=False)
    assert not use_triton(images)
    default = genesis2d(images, None, gen(1))
    assert calls == []

    monkeypatch.setenv("ANATOMIX_KERNELS", "triton")
    assert use_triton(images)
    forced = genesis2d(images, None, gen(1))
    assert calls == [1]
    assert (forced - default).abs().max() <= 1e-6

    monkeypatch.setenv("ANATOMIX_KERNELS", "torch")
    params = sample_genesis2d_params(shape, Genesis2DConfig(), gen(1))
    assert torch.equal(apply_genesis2d(images, params), default)
    assert calls == [1]


def test_launcher_rejects_bad_inputs():
    shape = (1, 3, 20, 21)
    params = sample_genesis2d_params(shape, Genesis2DConfig(), gen(0))
    with pytest.raises(ValueError, match="do not match"):
        _genesis2d_triton(torch.rand(1, 3, 20, 22), params)
    with pytest.raises(ValueError, match="float32, bfloat16"):
        _genesis2d_triton(torch.rand(shape, dtype=torch.float64), params)
