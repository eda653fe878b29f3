"""PEAC stable grid-based matching: overlap indices and the local-consistency loss.

PEAC: Zhou, Luo, Pang, Ding, Gotway, Liang, "Learning Anatomically Consistent Embedding for Chest
Radiography", BMVC 2023, arXiv:2312.00335; official code jlianglab/PEAC. Written from the published
behaviour (docs/METHODS.md sections 3.3-3.4), not from the official code.

Two views are h x w token windows (14 x 14 in PEAC) cut from one shared grid of cells (18 x 18 of
32 px) at grid offsets ``box = (row0, col0)`` (0..4 in PEAC). Cells in both windows are identical
pixels, so token ``(r - row0_1, c - col0_1)`` of view 1 and ``(r - row0_2, c - col0_2)`` of view 2
describe the same anatomy: no interpolation is needed. :func:`match_patches` is the MSE between the
matched tokens of the two views; :func:`match_patches_bilinear` is the general case, where view-1
cells map to continuous positions in view 2.

The official transposition bug (docs/METHODS.md 3.3 item 4): the crop uses ``x`` as the row offset,
but the overlap masks index rows with the y-range and columns with the x-range. ``bug_compat=True``
reproduces it; the k-th selected tokens then lie on the same grid cell only when
``x1 - y1 == x2 - y2``. It equals correct matching with each box's (row, col) swapped, which is how
the kernel path runs it (square windows only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernels._dispatch import jit, tl, triton, use_triton
from kernels.grid_bilinear import (
    match_patches_bilinear,
    match_patches_bilinear_reference,
)

__all__ = [
    "match_patches",
    "match_patches_bilinear",
    "match_patches_bilinear_reference",
    "match_patches_reference",
    "overlap_indices",
]


def _pair(box: Sequence[int] | torch.Tensor) -> tuple[int, int]:
    values = box.tolist() if isinstance(box, torch.Tensor) else list(box)
    if len(values) != 2:
        raise ValueError(f"a box is (row0, col0), got {values}")
    return int(values[0]), int(values[1])


def overlap_indices(
    box1: Sequence[int] | torch.Tensor,
    box2: Sequence[int] | torch.Tensor,
    grid_shape: tuple[int, int] = (14, 14),
    bug_compat: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat token indices of the cells two views share, in corresponding order.

    Args:
        box1: (row0, col0) of view 1's h x w token window in the shared grid (PEAC: x1, y1).
        box2: (row0, col0) of view 2's window.
        grid_shape: (h, w), the token window of each view.
        bug_compat: reproduce the official masks, whose rows come from the column (y) range and
            columns from the row (x) range; needs h == w.

    Returns:
        (idx1, idx2): int64 (K,) flat row-major indices into view 1's and view 2's h*w tokens.
        Correct matching: the overlap rectangle in row-major order, so ``idx1[k]`` and ``idx2[k]``
        are the same grid cell. K = 0 when the windows do not overlap.
    """
    (r1, c1), (r2, c2) = _pair(box1), _pair(box2)
    h, w = grid_shape
    if bug_compat:
        if h != w:
            raise ValueError(f"bug_compat needs a square token window, got {h}x{w}")
        # Mask rows take the y (column-offset) range and mask columns the x (row-offset) range.
        rows1, rows2 = _local_range(c1, c2, h), _local_range(c2, c1, h)
        cols1, cols2 = _local_range(r1, r2, w), _local_range(r2, r1, w)
    else:
        rows1, rows2 = _local_range(r1, r2, h), _local_range(r2, r1, h)
        cols1, cols2 = _local_range(c1, c2, w), _local_range(c2, c1, w)
    return _masked_flat(rows1, cols1, h, w), _masked_flat(rows2, cols2, h, w)


def _local_range(start: int, other: int, size: int) -> range:
    """Local positions in a window at ``start`` that a same-size window at ``other`` also covers."""
    lo, hi = max(start, other), min(start, other) + size
    return range(lo - start, max(hi, lo) - start)


def _masked_flat(rows: range, cols: range, h: int, w: int) -> torch.Tensor:
    """Flat row-major indices selected by a boolean h x w mask set on ``rows`` x ``cols``."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[rows.start : rows.stop, cols.start : cols.stop] = True
    return mask.flatten().nonzero().flatten()


def _check_tokens(tokens1: torch.Tensor, tokens2: torch.Tensor, box1, box2) -> None:
    if tokens1.ndim != 4 or tokens1.shape != tokens2.shape:
        raise ValueError(
            "tokens1 and tokens2 must both be (B, h, w, C) of one shape, got "
            f"{tuple(tokens1.shape)} and {tuple(tokens2.shape)}"
        )
    for name, box in (("box1", box1), ("box2", box2)):
        if tuple(box.shape) != (tokens1.shape[0], 2) or box.dtype != torch.long:
            raise ValueError(f"{name} must be (B, 2) int64, got {tuple(box.shape)} {box.dtype}")


def match_patches_reference(
    tokens1: torch.Tensor,
    tokens2: torch.Tensor,
    box1: torch.Tensor,
    box2: torch.Tensor,
    bug_compat: bool = False,
) -> torch.Tensor:
    """PyTorch reference of :func:`match_patches` (the spec): gather, then one MSE."""
    _check_tokens(tokens1, tokens2, box1, box2)
    b, h, w, c = tokens1.shape
    picked1, picked2 = [], []
    for i in range(b):
        idx1, idx2 = overlap_indices(box1[i], box2[i], (h, w), bug_compat)
        picked1.append(tokens1[i].reshape(h * w, c)[idx1.to(tokens1.device)])
        picked2.append(tokens2[i].reshape(h * w, c)[idx2.to(tokens2.device)])
    a, z = torch.cat(picked1).float(), torch.cat(picked2).float()
    if a.numel() == 0:  # no sample overlaps: no local term
        return (tokens1.sum() + tokens2.sum()).float() * 0.0
    return ((a - z) ** 2).mean()


@jit
def _match_patches_kernel(
    t1_ptr,  # (B, H, W, C) view-1 tokens, contiguous
    t2_ptr,  # (B, H, W, C) view-2 tokens, contiguous
    box1_ptr,  # (B, 2) int64 (row0, col0) of view 1 in the shared grid
    box2_ptr,  # (B, 2) int64 (row0, col0) of view 2
    partial_ptr,  # (B, T) float32 out (forward): sum of squared differences per token block
    scale_ptr,  # (1,) float32 (backward): d loss / d (squared-difference sum) times 2
    g1_ptr,  # (B, H, W, C) out (backward): zeros except at matched view-1 tokens
    g2_ptr,  # (B, H, W, C) out (backward): zeros except at matched view-2 tokens
    H,
    W,
    C,
    T,
    BACKWARD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    tb = tl.program_id(1)
    r1 = tl.load(box1_ptr + 2 * b)
    c1 = tl.load(box1_ptr + 2 * b + 1)
    r2 = tl.load(box2_ptr + 2 * b)
    c2 = tl.load(box2_ptr + 2 * b + 1)
    rmax = tl.maximum(r1, r2)
    cmax = tl.maximum(c1, c2)
    oh = tl.maximum(tl.minimum(r1, r2) + H - rmax, 0)
    ow = tl.maximum(tl.minimum(c1, c2) + W - cmax, 0)
    k = tb * BLOCK_T + tl.arange(0, BLOCK_T)  # k-th matched token, row-major in the overlap
    matched = k < oh * ow
    i = k // tl.maximum(ow, 1)
    j = k % tl.maximum(ow, 1)
    sample = b.to(tl.int64) * H * W
    p1 = sample + (i + rmax - r1) * W + (j + cmax - c1)
    p2 = sample + (i + rmax - r2) * W + (j + cmax - c2)
    if BACKWARD:
        scale = tl.load(scale_ptr)
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        m = matched[:, None] & (ch < C)[None, :]
        o1 = p1[:, None] * C + ch[None, :]
        o2 = p2[:, None] * C + ch[None, :]
        a = tl.load(t1_ptr + o1, mask=m, other=0.0).to(tl.float32)
        z = tl.load(t2_ptr + o2, mask=m, other=0.0).to(tl.float32)
        d = a - z
        if BACKWARD:
            tl.store(g1_ptr + o1, (scale * d).to(g1_ptr.dtype.element_ty), mask=m)
            tl.store(g2_ptr + o2, (-scale * d).to(g2_ptr.dtype.element_ty), mask=m)
        else:
            acc += d * d
    if not BACKWARD:
        tl.store(partial_ptr + b * T + tb, tl.sum(tl.sum(acc, axis=1), axis=0))


_BLOCK_T, _BLOCK_C = 32, 64


def _match_count(box1: torch.Tensor, box2: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Total number of matched tokens over the batch, as a 0-d int64 tensor (no host sync)."""
    d = (box1 - box2).abs()
    return ((h - d[:, 0]).clamp(min=0) * (w - d[:, 1]).clamp(min=0)).sum()


def _match_patches_launch(t1, t2, box1, box2, scale=None):
    b, h, w, c = t1.shape
    t = triton.cdiv(h * w, _BLOCK_T)
    partial = torch.zeros(b, t, device=t1.device, dtype=torch.float32)
    backward = scale is not None
    g1 = torch.zeros_like(t1) if backward else partial
    g2 = torch.zeros_like(t2) if backward else partial
    if t1.numel():
        _match_patches_kernel[(b, t)](
            t1,
            t2,
            box1,
            box2,
            partial,
            scale if backward else partial,
            g1,
            g2,
            h,
            w,
            c,
            t,
            BACKWARD=backward,
            BLOCK_T=_BLOCK_T,
            BLOCK_C=min(_BLOCK_C, triton.next_power_of_2(c)),
        )
    return partial, g1, g2


def _match_patches_triton(tokens1, tokens2, box1, box2):
    """Fused forward: gather + squared difference + per-(sample, token block) partial sums."""
    _check_tokens(tokens1, tokens2, box1, box2)
    for x in (tokens2, box1, box2):
        if x.device != tokens1.device:
            raise ValueError(f"all arguments must be on {tokens1.device}, got one on {x.device}")
    t1, t2 = tokens1.contiguous(), tokens2.contiguous()
    box1, box2 = box1.contiguous(), box2.contiguous()
    partial, _, _ = _match_patches_launch(t1, t2, box1, box2)
    denom = (_match_count(box1, box2, *t1.shape[1:3]) * t1.shape[3]).clamp(min=1)
    return partial.sum() / denom, denom


def _match_patches_backward_triton(grad, tokens1, tokens2, box1, box2, denom):
    """Gradients wrt both token maps, written only at matched positions."""
    scale = (2.0 * grad.float() / denom).reshape(1).contiguous()
    _, g1, g2 = _match_patches_launch(tokens1, tokens2, box1, box2, scale)
    return g1, g2


class _MatchPatches(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens1, tokens2, box1, box2):
        loss, denom = _match_patches_triton(tokens1, tokens2, box1, box2)
        ctx.save_for_backward(tokens1.contiguous(), tokens2.contiguous(), box1, box2, denom)
        return loss

    @staticmethod
    def backward(ctx, grad):
        t1, t2, box1, box2, denom = ctx.saved_tensors
        g1, g2 = _match_patches_backward_triton(grad, t1, t2, box1.contiguous(), box2, denom)
        return g1, g2, None, None


def match_patches(
    tokens1: torch.Tensor,
    tokens2: torch.Tensor,
    box1: torch.Tensor,
    box2: torch.Tensor,
    bug_compat: bool = False,
) -> torch.Tensor:
    """PEAC local-consistency loss: MSE between the tokens of the cells two views share.

    Per sample b the overlap of the windows at ``box1[b]`` and ``box2[b]`` is gathered from both
    views in corresponding (row-major) order, as :func:`overlap_indices`. The loss is

        sum over samples, matched tokens and channels of (t1 - t2)^2 / (K_total * C)

    with K_total the number of matched tokens over the whole batch: samples with larger overlaps
    weigh more, exactly as one ``MSELoss`` over the concatenated matched tokens. It is 0 (with zero
    gradients) when no sample overlaps.

    Args:
        tokens1: (B, h, w, C) float32 or bfloat16, view-1 tokens (e.g. 14 x 14 x 512 after the
            per-token MLP).
        tokens2: (B, h, w, C) same shape and dtype, view 2.
        box1: (B, 2) int64, (row0, col0) of each view-1 window in the shared grid.
        box2: (B, 2) int64, (row0, col0) of each view-2 window.
        bug_compat: reproduce the official row/column transposition (square windows only).

    Returns:
        0-d float32 loss, differentiable wrt both token maps.
    """
    if bug_compat:
        _check_tokens(tokens1, tokens2, box1, box2)
        if tokens1.shape[1] != tokens1.shape[2]:
            raise ValueError(f"bug_compat needs square token maps, got {tuple(tokens1.shape)}")
    if use_triton(tokens1, tokens2, box1, box2):
        if bug_compat:  # the official masks equal correct matching with (row, col) swapped
            box1, box2 = box1.flip(1), box2.flip(1)
        return _MatchPatches.apply(tokens1, tokens2, box1, box2)
    return match_patches_reference(tokens1, tokens2, box1, box2, bug_compat)
