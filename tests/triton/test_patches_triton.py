"""Interpreter parity: the patch-shuffle kernel equals its reference, gradients included."""

import os

import pytest
import torch

from kernels import _dispatch, patches
from kernels.patches import (
    shuffle_patches,
    shuffle_patches_reference,
    unshuffle_patches,
    unshuffle_patches_reference,
)

SHAPES = [((1, 1, 4, 4), 2), ((5, 3, 12, 8), 4), ((2, 2, 9, 15), 3), ((1, 3, 32, 48), 16)]


@pytest.fixture(autouse=True)
def _force_triton(monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    monkeypatch.setenv("ANATOMIX_KERNELS", "triton")


def _perms(b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(b)])


@pytest.mark.parametrize("shape,patch", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inverse", [False, True])
def test_kernel_equals_reference(shape, patch, dtype, inverse):
    op, ref = (
        (unshuffle_patches, unshuffle_patches_reference)
        if inverse
        else (shuffle_patches, shuffle_patches_reference)
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    perm = _perms(shape[0], (shape[2] // patch) * (shape[3] // patch))
    out, want = op(x, perm, patch), ref(x_ref, perm, patch)
    assert torch.equal(out, want)
    grad = torch.randn(shape, generator=g).to(dtype)
    out.backward(grad)
    want.backward(grad)
    assert torch.equal(x.grad, x_ref.grad)


def test_dispatch_forced_runs_the_kernel(monkeypatch):
    calls = []
    launcher = patches._shuffle_patches_triton

    def counting(*args, **kwargs):
        calls.append(1)
        return launcher(*args, **kwargs)

    monkeypatch.setattr(patches, "_shuffle_patches_triton", counting)
    x, perm = torch.randn(1, 1, 4, 4), _perms(1, 4)
    assert _dispatch.use_triton(x, perm) is True
    shuffle_patches(x, perm, 2)
    assert calls == [1]
    monkeypatch.delenv("ANATOMIX_KERNELS")
    assert _dispatch.use_triton(x, perm) is False  # default on CPU tensors: the reference
    shuffle_patches(x, perm, 2)
    assert calls == [1]
