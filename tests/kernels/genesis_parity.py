"""The one parity harness for the Genesis transform paths (a helper module, not a test module;
imitating Liger-Kernel's shared test utilities): the named transform settings each path is
checked on, the seeded draws of inputs and parameters, and the comparison with the PyTorch
reference — used by the Numba tests (tests/kernels/test_genesis_cpu.py), the Triton interpreter
tests (tests/triton/test_genesis_triton.py, test_genesis2d_triton.py) and the compiled-GPU tests
(tests/kernels/test_kernels_cuda.py).

Every implementation consumes the same drawn parameters as the reference, so what only moves
values (flips, shuffling, painting) must agree bit for bit and the Bezier map within float
rounding of the dtype.
"""

from __future__ import annotations

import math

import torch

from kernels.genesis import GenesisTransformConfig, apply_genesis_reference, sample_genesis_params
from kernels.genesis2d import Genesis2DConfig, apply_genesis2d_reference, sample_genesis2d_params

#: every 3D transform off; a setting turns one (or all) back on
OFF3 = {"flip_rate": 0.0, "local_rate": 0.0, "nonlinear_rate": 0.0, "paint_rate": 0.0}
#: name → (3D config keywords, exact): each transform forced on alone, all at once, the defaults
GENESIS3D = {
    "flip": (dict(OFF3, flip_rate=1.0), True),
    "flip-faithful": (dict(OFF3, flip_rate=1.0, flip_mode="faithful"), True),
    "shuffle": (dict(OFF3, local_rate=1.0), True),
    "inpaint": (dict(OFF3, paint_rate=1.0, inpaint_rate=1.0), True),
    "outpaint": (dict(OFF3, paint_rate=1.0, inpaint_rate=0.0), True),
    "nonlinear": (dict(OFF3, nonlinear_rate=1.0), False),
    "all": (dict(flip_rate=1.0, local_rate=1.0, nonlinear_rate=1.0, paint_rate=1.0), False),
    "defaults": ({}, False),
}
OFF2 = {"blocks": 0, "nonlinear_rate": 0.0, "paint_rate": 0.0}
#: name → (2D config keywords, exact)
GENESIS2D = {
    "shuffle": (dict(OFF2, blocks=40), True),
    "inpaint": (dict(OFF2, paint_rate=1.0, inpaint_rate=1.0), True),
    "outpaint": (dict(OFF2, paint_rate=1.0, inpaint_rate=0.0), True),
    "shuffle+paint": (dict(paint_rate=1.0, nonlinear_rate=0.0), True),
    "nonlinear": (dict(OFF2, nonlinear_rate=1.0), False),
    "all": (dict(nonlinear_rate=1.0, paint_rate=1.0), False),
    "defaults": ({}, False),
}
#: dtype → absolute tolerance of a computed (non-exact) result against the reference run on the
#: same dtype: float32 rounding of Bezier values in [0, 1]; one bfloat16 / float16 step
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}


def gen(seed: int) -> torch.Generator:
    """A seeded CPU generator: every path draws from the same stream."""
    return torch.Generator().manual_seed(seed)


def distinct_cubes(shape, dtype=torch.float32) -> torch.Tensor:
    """Cubes whose voxel values name their flat position (k / count, exact in float32 below 2**24),
    so a value moved to the wrong place cannot go unnoticed."""
    count = math.prod(shape)
    return (torch.arange(count, dtype=torch.float64) / count).to(dtype).view(shape)


def config3d(name: str, shuffle_blocks: int | None = None) -> GenesisTransformConfig:
    """The 3D setting ``name``; ``shuffle_blocks`` shrinks the block count (the interpreter is
    slow) where the setting shuffles."""
    kw = dict(GENESIS3D[name][0])
    if shuffle_blocks is not None and kw.get("local_rate", 1.0) > 0:
        kw["shuffle_blocks"] = shuffle_blocks
    return GenesisTransformConfig(**kw)


def draw3d(shape, name: str, seed: int, dtype=torch.float32, shuffle_blocks: int | None = None):
    """Random cubes and the parameters both paths consume → ``(cubes, params, config)``."""
    config = config3d(name, shuffle_blocks)
    cubes = torch.rand(shape, generator=gen(seed)).to(dtype)
    return cubes, sample_genesis_params(shape, config, gen(seed + 100)), config


def draw2d(shape, name: str, seed: int, dtype=torch.float32):
    """Random images and the 2D parameters both paths consume → ``(images, params, config)``."""
    config = Genesis2DConfig(**GENESIS2D[name][0])
    images = torch.rand(shape, generator=gen(seed)).to(dtype)
    return images, sample_genesis2d_params(shape, config, gen(seed + 100)), config


def assert_matches(got: torch.Tensor, want: torch.Tensor, exact: bool) -> None:
    """``got`` (any device) equals the reference's ``want``: bit for bit, or within the dtype's
    :data:`TOLERANCE`."""
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not torch.isnan(got).any()
    if exact:
        assert torch.equal(got, want)
    else:
        atol = TOLERANCE[want.dtype]
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=atol)


def check3d(impl, shape, name: str, seed: int, dtype=torch.float32, **draw) -> None:
    """``impl(cubes, params, config) -> (x, y)`` against the reference on one draw: the target
    ``y`` (flips only move values) exactly, ``x`` as the setting says."""
    cubes, params, config = draw3d(shape, name, seed, dtype, **draw)
    x_ref, y_ref = apply_genesis_reference(cubes, params, config)
    x, y = impl(cubes, params, config)
    assert_matches(y, y_ref, exact=True)
    assert_matches(x, x_ref, exact=GENESIS3D[name][1])


def check2d(impl, shape, name: str, seed: int, dtype=torch.float32) -> None:
    """``impl(images, params, config) -> images`` against the 2D reference on one draw."""
    images, params, config = draw2d(shape, name, seed, dtype)
    want = apply_genesis2d_reference(images, params, config)
    assert_matches(impl(images, params, config), want, exact=GENESIS2D[name][1])
