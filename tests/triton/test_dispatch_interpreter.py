"""The interpreter process itself: Triton imports and runs a trivial kernel on CPU tensors."""

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _add_one_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # x_ptr, out_ptr: (n,) float32
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1.0, mask=mask)


def test_interpreter_runs_on_cpu():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    x = torch.arange(37, dtype=torch.float32)
    out = torch.empty_like(x)
    _add_one_kernel[(triton.cdiv(37, 16),)](x, out, 37, BLOCK=16)
    torch.testing.assert_close(out, x + 1)


def test_export_traces_the_reference_even_when_triton_is_forced(monkeypatch):
    """Under tracing/export the dispatch ignores ANATOMIX_KERNELS=triton and the kernels."""
    import pytest

    from kernels import _dispatch, grid, patches

    monkeypatch.setenv("ANATOMIX_KERNELS", "triton")

    def boom(*args, **kwargs):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(patches._ShufflePatches, "apply", boom)
    monkeypatch.setattr(grid._MatchPatches, "apply", boom)
    x = torch.rand(2, 3, 8, 8)
    perm = torch.stack([torch.randperm(4) for _ in range(2)])
    t1, t2 = torch.rand(2, 3, 3, 5), torch.rand(2, 3, 3, 5)
    box = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(AssertionError, match="launched"):  # outside export: the kernel path
        patches.shuffle_patches(x, perm, 4)
    assert not _dispatch.exporting()

    class Op(torch.nn.Module):
        def forward(self, x, perm, t1, t2):
            return patches.shuffle_patches(x, perm, 4), grid.match_patches(t1, t2, box, box)

    traced = torch.jit.trace(Op(), (x, perm, t1, t2), check_trace=False)
    out, loss = traced(x, perm, t1, t2)
    torch.testing.assert_close(out, patches.shuffle_patches_reference(x, perm, 4))
    torch.testing.assert_close(loss, grid.match_patches_reference(t1, t2, box, box))
