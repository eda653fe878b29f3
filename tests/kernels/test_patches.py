"""Patch shuffling (POPAR order distortion) reference and the shared kernel dispatch rule."""

import pytest
import torch

from kernels import _dispatch
from kernels.patches import (
    shuffle_patches,
    shuffle_patches_reference,
    unshuffle_patches,
    unshuffle_patches_reference,
)


def _perms(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(b)])


def test_hand_checked_small_case():
    # 4x4 image, 2x2 patches -> tiles numbered 0 1 / 2 3 (row-major).
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    perm = torch.tensor([[3, 0, 2, 1]])  # output tile j is input tile perm[j]
    expected = torch.tensor(
        [
            [10.0, 11.0, 0.0, 1.0],  # tile 0 <- input tile 3, tile 1 <- input tile 0
            [14.0, 15.0, 4.0, 5.0],
            [8.0, 9.0, 2.0, 3.0],  # tile 2 <- input tile 2, tile 3 <- input tile 1
            [12.0, 13.0, 6.0, 7.0],
        ]
    )
    out = shuffle_patches_reference(x, perm, 2)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=0)
    torch.testing.assert_close(unshuffle_patches_reference(out, perm, 2), x, rtol=0, atol=0)


@pytest.mark.parametrize("shape,patch", [((1, 1, 4, 6), 2), ((5, 3, 12, 8), 4), ((2, 2, 9, 15), 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unshuffle_inverts_shuffle(shape, patch, dtype):
    x = torch.randn(shape).to(dtype)
    perm = _perms(shape[0], (shape[2] // patch) * (shape[3] // patch))
    y = shuffle_patches(x, perm, patch)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(unshuffle_patches(y, perm, patch), x)
    assert torch.equal(shuffle_patches(unshuffle_patches(x, perm, patch), perm, patch), x)


def test_tile_statement_matches_loop():
    x = torch.randn(2, 3, 6, 9)
    perm = _perms(2, 6, seed=3)
    out = shuffle_patches_reference(x, perm, 3)
    for b in range(2):
        for j in range(6):
            src = int(perm[b, j])
            tile_out = out[b, :, (j // 3) * 3 : (j // 3) * 3 + 3, (j % 3) * 3 : (j % 3) * 3 + 3]
            tile_in = x[
                b, :, (src // 3) * 3 : (src // 3) * 3 + 3, (src % 3) * 3 : (src % 3) * 3 + 3
            ]
            assert torch.equal(tile_out, tile_in)


def test_gradient_is_inverse_permutation():
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    perm = _perms(2, 4, seed=1)
    g = torch.randn(2, 1, 4, 4)
    (grad,) = torch.autograd.grad(shuffle_patches_reference(x, perm, 2), x, g)
    torch.testing.assert_close(grad, unshuffle_patches_reference(g, perm, 2), rtol=0, atol=0)


def test_errors():
    x = torch.zeros(1, 1, 6, 8)
    with pytest.raises(ValueError, match="divisible"):
        shuffle_patches(x, torch.zeros(1, 6, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="perm must be"):
        shuffle_patches(x, torch.zeros(1, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="int64"):
        shuffle_patches(x, torch.zeros(1, 12, dtype=torch.int32), 2)


def test_dispatch_defaults_to_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("ANATOMIX_KERNELS", raising=False)
    assert _dispatch.use_triton(torch.zeros(1)) is False
    for value in ("torch", "reference", " Reference "):
        monkeypatch.setenv("ANATOMIX_KERNELS", value)
        assert _dispatch.use_triton(torch.zeros(1)) is False


def test_dispatch_refuses_cpu_triton_without_interpreter(monkeypatch):
    monkeypatch.setenv("ANATOMIX_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _dispatch.use_triton(torch.zeros(1))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        shuffle_patches(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, dtype=torch.long), 2)


def test_dispatch_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv("ANATOMIX_KERNELS", "cuda")
    with pytest.raises(ValueError, match="ANATOMIX_KERNELS"):
        _dispatch.use_triton(torch.zeros(1))
