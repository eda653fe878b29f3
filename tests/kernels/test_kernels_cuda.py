"""Every Triton kernel compiled for a real GPU against its PyTorch reference run on the CPU.

The interpreter tests (``tests/triton``) check the kernels' logic on small shapes; these check what
only a compiled launch can get wrong (masking at block edges, many programs writing one tensor,
fused arithmetic) at the published sizes and at odd ones. Inputs and parameters are drawn on the
CPU, the kernel runs on CUDA tensors through the default dispatch (no forcing), and the result
is compared with the reference on the original CPU tensors: bit for bit where the op only moves
values, within float rounding where it computes. Skipped, saying why, without a CUDA device.
"""

import pytest
import torch

from kernels import _dispatch
from kernels.genesis import apply_genesis
from kernels.genesis2d import apply_genesis2d
from kernels.grid import (
    match_patches,
    match_patches_bilinear,
    match_patches_bilinear_reference,
    match_patches_reference,
)
from kernels.patches import shuffle_patches, shuffle_patches_reference, unshuffle_patches
from tests.kernels.genesis_parity import GENESIS2D, GENESIS3D, check2d, check3d, gen

pytestmark = pytest.mark.gpu

# (N, 1, H, W, D): the published cube, and an odd one that fills no block exactly. Settings and
# comparison: tests/kernels/genesis_parity.py ("defaults" is the paper's, 10,000 shuffle blocks).
SHAPES3 = [(6, 1, 64, 64, 32), (3, 1, 33, 34, 35)]


@pytest.fixture(autouse=True)
def _auto_dispatch(monkeypatch):
    monkeypatch.delenv("ANATOMIX_KERNELS", raising=False)


def cuda_3d(cubes, params, config):
    """The default dispatch on CUDA tensors (no forcing): it must pick the Triton kernel."""
    dev = cubes.cuda()
    assert _dispatch.use_triton(dev)
    x, y = apply_genesis(dev, params.to("cuda"), config)
    assert x.is_cuda and y.is_cuda
    return x, y


def cuda_2d(images, params, config):
    got = apply_genesis2d(images.cuda(), params.to("cuda"), config)
    assert got.is_cuda
    return got


@pytest.mark.parametrize("name", list(GENESIS3D))
@pytest.mark.parametrize("shape", SHAPES3, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_genesis3d_triton_on_cuda_equals_reference(shape, name, dtype):
    check3d(cuda_3d, shape, name, seed=sum(shape) + len(name), dtype=dtype)


@pytest.mark.parametrize("name", list(GENESIS2D))
@pytest.mark.parametrize("shape", [(8, 3, 448, 448), (3, 1, 65, 47)], ids=str)
def test_genesis2d_triton_on_cuda_equals_reference(shape, name):
    check2d(cuda_2d, shape, name, seed=len(name))


def _grads_match(op, ref, t1, t2, *args, tol):
    a1, a2 = (t.cuda().requires_grad_() for t in (t1, t2))
    r1, r2 = (t.clone().requires_grad_() for t in (t1, t2))
    got = op(a1, a2, *(x.cuda() for x in args))
    want = ref(r1, r2, *args)
    torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol)
    got.backward()
    want.backward()
    torch.testing.assert_close(a1.grad.cpu(), r1.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(a2.grad.cpu(), r2.grad, rtol=tol, atol=tol)


# (B, h, w, C): PEAC's 14 x 14 Swin-B tokens of 1024 channels, and odd maps.
GRID_SHAPES = [(8, 14, 14, 1024), (5, 7, 9, 70), (3, 3, 3, 5)]


@pytest.mark.parametrize("shape", GRID_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grid_matching_triton_on_cuda_equals_reference(shape, dtype):
    g = gen(sum(shape))
    t1 = torch.randn(shape, generator=g).to(dtype)
    t2 = torch.randn(shape, generator=g).to(dtype)
    box1 = torch.randint(0, 5, (shape[0], 2), generator=g)
    box2 = torch.randint(0, 5, (shape[0], 2), generator=g)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # sums over C in another order
    _grads_match(match_patches, match_patches_reference, t1, t2, box1, box2, tol=tol)


@pytest.mark.parametrize("shape", GRID_SHAPES[:2], ids=str)
def test_bilinear_matching_triton_on_cuda_equals_reference(shape):
    b, h, w, c = shape
    g = gen(h * w)
    t1 = torch.randn(shape, generator=g)
    t2 = torch.randn(shape, generator=g)
    coords = torch.rand(b, h * w, 2, generator=g) * torch.tensor([h + 1.0, w + 1.0]) - 1.0
    coords[:, ::5] = coords[:, ::5].round()  # integer positions, edges included
    _grads_match(match_patches_bilinear, match_patches_bilinear_reference, t1, t2, coords, tol=1e-5)


@pytest.mark.parametrize("shape,patch", [((8, 3, 448, 448), 32), ((3, 2, 36, 60), 12)], ids=str)
def test_patch_shuffle_triton_on_cuda_equals_reference(shape, patch):
    g = gen(patch)
    x = torch.randn(shape, generator=g)
    n = (shape[2] // patch) * (shape[3] // patch)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(shape[0])])
    dev = x.cuda().requires_grad_()
    got = shuffle_patches(dev, perm.cuda(), patch)
    assert torch.equal(got.detach().cpu(), shuffle_patches_reference(x, perm, patch))
    assert torch.equal(unshuffle_patches(got, perm.cuda(), patch).detach().cpu(), x)
    weight = torch.randn(shape, generator=g)
    (got * weight.cuda()).sum().backward()
    ref = x.clone().requires_grad_()
    (shuffle_patches_reference(ref, perm, patch) * weight).sum().backward()
    assert torch.equal(dev.grad.cpu(), ref.grad)
