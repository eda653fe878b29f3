"""Interpreter parity: grid and bilinear matching kernels equal their references, gradients too."""

import os

import pytest
import torch

from kernels import _dispatch, grid, grid_bilinear
from kernels.grid import (
    match_patches,
    match_patches_bilinear,
    match_patches_bilinear_reference,
    match_patches_reference,
)

# (B, h, w, C): odd maps, C > 64 exercises the kernel's channel loop, tiny maps rarely overlap.
SHAPES = [(1, 7, 9, 5), (5, 7, 9, 5), (5, 14, 14, 8), (2, 3, 3, 70)]
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _force_triton(monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    monkeypatch.setenv("ANATOMIX_KERNELS", "triton")


def _tokens(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t1 = torch.randn(shape, generator=g).to(dtype)
    t2 = torch.randn(shape, generator=g).to(dtype)
    return t1, t2, g


def _compare(op, ref, t1, t2, *args, tol):
    a1, a2 = t1.clone().requires_grad_(), t2.clone().requires_grad_()
    r1, r2 = t1.clone().requires_grad_(), t2.clone().requires_grad_()
    loss, want = op(a1, a2, *args), ref(r1, r2, *args)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=tol, atol=tol)
    loss.backward()
    want.backward()
    torch.testing.assert_close(a1.grad, r1.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(a2.grad, r2.grad, rtol=tol, atol=tol)
    return a1.grad, a2.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_match_patches_kernel_equals_reference(shape, dtype):
    t1, t2, g = _tokens(shape, dtype, seed=sum(shape))
    box1 = torch.randint(0, 5, (shape[0], 2), generator=g)
    box2 = torch.randint(0, 5, (shape[0], 2), generator=g)
    g1, g2 = _compare(match_patches, match_patches_reference, t1, t2, box1, box2, tol=TOL[dtype])
    # gradients only at matched positions
    for i in range(shape[0]):
        idx1, idx2 = grid.overlap_indices(box1[i], box2[i], shape[1:3])
        unmatched = torch.ones(shape[1] * shape[2], dtype=torch.bool)
        unmatched[idx1] = False
        assert not g1[i].reshape(-1, shape[3])[unmatched].any()
        unmatched[:] = True
        unmatched[idx2] = False
        assert not g2[i].reshape(-1, shape[3])[unmatched].any()


@pytest.mark.parametrize("shape", [(5, 14, 14, 8), (1, 7, 7, 5)])
def test_match_patches_bug_compat_kernel_equals_reference(shape):
    t1, t2, g = _tokens(shape, torch.float32, seed=7)
    box1 = torch.randint(0, 5, (shape[0], 2), generator=g)
    box2 = torch.randint(0, 5, (shape[0], 2), generator=g)

    def op(a, b, *args):
        return match_patches(a, b, *args, bug_compat=True)

    def ref(a, b, *args):
        return match_patches_reference(a, b, *args, bug_compat=True)

    _compare(op, ref, t1, t2, box1, box2, tol=1e-6)


@pytest.mark.parametrize(
    "shape,view2", [(SHAPES[0], (7, 9)), (SHAPES[1], (6, 11)), (SHAPES[3], (4, 3))]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bilinear_kernel_equals_reference(shape, view2, dtype):
    b, h, w, c = shape
    g = torch.Generator().manual_seed(h * w + c)
    t1 = torch.randn(shape, generator=g).to(dtype)
    t2 = torch.randn(b, *view2, c, generator=g).to(dtype)
    span = torch.tensor([view2[0] + 1.0, view2[1] + 1.0])
    coords = torch.rand(b, h * w, 2, generator=g) * span - 1.0  # some cells fall outside
    coords[:, ::7] = coords[:, ::7].round()  # integer positions, incl. the last row / column
    coords[:, 0] = torch.tensor([view2[0] - 1.0, view2[1] - 1.0])
    _compare(
        match_patches_bilinear, match_patches_bilinear_reference, t1, t2, coords, tol=TOL[dtype]
    )


def test_dispatch_forced_runs_the_kernels(monkeypatch):
    calls = []
    for module, name in (
        (grid, "_match_patches_triton"),
        (grid_bilinear, "_match_patches_bilinear_triton"),
    ):
        launcher = getattr(module, name)

        def counting(*args, _launcher=launcher, **kwargs):
            calls.append(1)
            return _launcher(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    t1, t2, _ = _tokens((1, 3, 3, 2), torch.float32, seed=0)
    box = torch.zeros(1, 2, dtype=torch.long)
    coords = torch.zeros(1, 9, 2)
    match_patches(t1, t2, box, box)
    match_patches_bilinear(t1, t2, coords)
    assert len(calls) == 2
    monkeypatch.delenv("ANATOMIX_KERNELS")
    assert _dispatch.use_triton(t1, t2, box, box) is False
    match_patches(t1, t2, box, box)
    match_patches_bilinear(t1, t2, coords)
    assert len(calls) == 2
