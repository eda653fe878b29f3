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
