"""Local-consistency loss for non-grid-aligned views: bilinear matching of token maps.

The general case of PEAC's grid matching (Zhou et al., "Learning Anatomically Consistent Embedding
for Chest Radiography", BMVC 2023, arXiv:2312.00335; code jlianglab/PEAC), for views whose cells
are not aligned on a shared grid (free crops, rescaling). Public entry point re-exported by
:mod:`kernels.grid`.

Every view-1 cell ``m`` (all h1*w1 of them, row-major) is given a continuous position
``coords[b, m] = (row, col)`` in view 2's token map, in token units with **align_corners
semantics**: integer ``(r, c)`` is the centre of token ``(r, c)``, so ``(0, 0)`` and
``(h2 - 1, w2 - 1)`` are the centres of the corner tokens. View 2 is sampled there bilinearly from
its four neighbouring tokens. A position is **valid** when ``0 <= row <= h2 - 1`` and
``0 <= col <= w2 - 1``; invalid cells (outside view 2, or NaN) are excluded from the loss by a
validity mask, not zero-padded. The loss is

    sum over valid cells and channels of (t1 - sample(t2))^2 / (n_valid * C)

and 0 (zero gradients) when no cell is valid. ``coords`` is not differentiated.
"""

from __future__ import annotations

import torch

from kernels._dispatch import jit, tl, triton, use_triton

__all__ = ["match_patches_bilinear", "match_patches_bilinear_reference"]


def _check(tokens1: torch.Tensor, tokens2: torch.Tensor, coords: torch.Tensor) -> None:
    if tokens1.ndim != 4 or tokens2.ndim != 4:
        raise ValueError(
            "tokens1 and tokens2 must be (B, h, w, C), got "
            f"{tuple(tokens1.shape)} and {tuple(tokens2.shape)}"
        )
    b, h1, w1, c = tokens1.shape
    if tokens2.shape[0] != b or tokens2.shape[3] != c:
        raise ValueError(f"tokens2 must share B={b} and C={c}, got {tuple(tokens2.shape)}")
    if tuple(coords.shape) != (b, h1 * w1, 2) or not coords.is_floating_point():
        raise ValueError(
            f"coords must be float (B, h1*w1, 2) = ({b}, {h1 * w1}, 2), got "
            f"{tuple(coords.shape)} {coords.dtype}"
        )


def _bilinear_corners(coords: torch.Tensor, h2: int, w2: int):
    """Validity, corner indices and weights of bilinear sampling at ``coords`` (B, M, 2).

    Returns:
        valid (B, M) bool, idx (4, B, M) int64 flat indices into h2*w2, wts (4, B, M) float32,
        corners in the order (r0, c0), (r0, c0+1), (r0+1, c0), (r0+1, c0+1).
    """
    r, c = coords.detach().float().unbind(-1)
    valid = (r >= 0) & (r <= h2 - 1) & (c >= 0) & (c <= w2 - 1)
    r, c = torch.where(valid, r, 0.0), torch.where(valid, c, 0.0)
    r0f, c0f = r.floor(), c.floor()
    fr, fc = r - r0f, c - c0f
    r0, c0 = r0f.long(), c0f.long()
    r1, c1 = (r0 + 1).clamp(max=h2 - 1), (c0 + 1).clamp(max=w2 - 1)
    idx = torch.stack([r0 * w2 + c0, r0 * w2 + c1, r1 * w2 + c0, r1 * w2 + c1])
    wts = torch.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    return valid, idx, wts


def match_patches_bilinear_reference(
    tokens1: torch.Tensor, tokens2: torch.Tensor, coords: torch.Tensor
) -> torch.Tensor:
    """PyTorch reference of :func:`match_patches_bilinear` (the spec), explicit bilinear weights."""
    _check(tokens1, tokens2, coords)
    b, h1, w1, c = tokens1.shape
    h2, w2 = tokens2.shape[1:3]
    valid, idx, wts = _bilinear_corners(coords, h2, w2)
    flat2 = tokens2.reshape(b, h2 * w2, c).float()
    sample = torch.zeros(b, h1 * w1, c, dtype=torch.float32, device=tokens1.device)
    for k in range(4):  # corners in a fixed order: the kernel sums them in the same one
        corner = flat2.gather(1, idx[k][..., None].expand(-1, -1, c))
        sample = sample + wts[k][..., None] * corner
    diff = tokens1.reshape(b, h1 * w1, c).float() - sample
    sq = (diff**2 * valid[..., None]).sum()
    return sq / (valid.sum() * c).clamp(min=1)


@jit
def _match_bilinear_kernel(
    t1_ptr,  # (B, M, C) view-1 tokens, M = h1 * w1, contiguous
    t2_ptr,  # (B, H2 * W2, C) view-2 tokens, contiguous
    coords_ptr,  # (B, M, 2) float32 (row, col) of each view-1 cell in view-2 token units
    partial_ptr,  # (B, T) float32 out (forward): squared-difference sum per cell block
    scale_ptr,  # (1,) float32 (backward): 2 * d loss / d (squared-difference sum)
    g1_ptr,  # (B, M, C) out (backward): gradient wrt tokens1 (0 at invalid cells)
    g2_ptr,  # (B, H2 * W2, C) float32, zero-initialised out (backward): accumulated atomically
    M,
    H2,
    W2,
    C,
    T,
    BACKWARD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    mb = tl.program_id(1)
    m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = m < M
    cell = b.to(tl.int64) * M + m
    r = tl.load(coords_ptr + cell * 2, mask=in_range, other=-1.0)
    c = tl.load(coords_ptr + cell * 2 + 1, mask=in_range, other=-1.0)
    valid = in_range & (r >= 0) & (r <= H2 - 1) & (c >= 0) & (c <= W2 - 1)
    r = tl.where(valid, r, 0.0)
    c = tl.where(valid, c, 0.0)
    r0f = tl.floor(r)
    c0f = tl.floor(c)
    fr = r - r0f
    fc = c - c0f
    r0 = r0f.to(tl.int64)
    c0 = c0f.to(tl.int64)
    r1 = tl.minimum(r0 + 1, H2 - 1)
    c1 = tl.minimum(c0 + 1, W2 - 1)
    base2 = b.to(tl.int64) * H2 * W2
    i00 = (base2 + r0 * W2 + c0)[:, None] * C
    i01 = (base2 + r0 * W2 + c1)[:, None] * C
    i10 = (base2 + r1 * W2 + c0)[:, None] * C
    i11 = (base2 + r1 * W2 + c1)[:, None] * C
    w00 = ((1 - fr) * (1 - fc))[:, None]
    w01 = ((1 - fr) * fc)[:, None]
    w10 = (fr * (1 - fc))[:, None]
    w11 = (fr * fc)[:, None]
    if BACKWARD:
        scale = tl.load(scale_ptr)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for ch0 in range(0, C, BLOCK_C):
        ch = (ch0 + tl.arange(0, BLOCK_C))[None, :]
        mv = valid[:, None] & (ch < C)
        o1 = cell[:, None] * C + ch
        sample = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        sample += w00 * tl.load(t2_ptr + i00 + ch, mask=mv, other=0.0).to(tl.float32)
        sample += w01 * tl.load(t2_ptr + i01 + ch, mask=mv, other=0.0).to(tl.float32)
        sample += w10 * tl.load(t2_ptr + i10 + ch, mask=mv, other=0.0).to(tl.float32)
        sample += w11 * tl.load(t2_ptr + i11 + ch, mask=mv, other=0.0).to(tl.float32)
        d = tl.load(t1_ptr + o1, mask=mv, other=0.0).to(tl.float32) - sample
        if BACKWARD:
            g = scale * d  # zero at invalid cells: d was built from masked loads
            mc = in_range[:, None] & (ch < C)
            tl.store(g1_ptr + o1, g.to(g1_ptr.dtype.element_ty), mask=mc)
            tl.atomic_add(g2_ptr + i00 + ch, -w00 * g, mask=mv)
            tl.atomic_add(g2_ptr + i01 + ch, -w01 * g, mask=mv)
            tl.atomic_add(g2_ptr + i10 + ch, -w10 * g, mask=mv)
            tl.atomic_add(g2_ptr + i11 + ch, -w11 * g, mask=mv)
        else:
            acc += d * d
    if not BACKWARD:
        tl.store(partial_ptr + b * T + mb, tl.sum(tl.sum(acc, axis=1), axis=0))


_BLOCK_M, _BLOCK_C = 32, 64


def _launch(t1, t2, coords, scale=None):
    b, h1, w1, c = t1.shape
    h2, w2 = t2.shape[1:3]
    m = h1 * w1
    t = triton.cdiv(max(m, 1), _BLOCK_M)
    partial = torch.zeros(b, t, device=t1.device, dtype=torch.float32)
    backward = scale is not None
    g1 = torch.empty_like(t1) if backward else partial
    g2 = torch.zeros(t2.shape, device=t2.device, dtype=torch.float32) if backward else partial
    if t1.numel() and t2.numel():
        _match_bilinear_kernel[(b, t)](
            t1,
            t2,
            coords,
            partial,
            scale if backward else partial,
            g1,
            g2,
            m,
            h2,
            w2,
            c,
            t,
            BACKWARD=backward,
            BLOCK_M=_BLOCK_M,
            BLOCK_C=min(_BLOCK_C, triton.next_power_of_2(c)),
        )
    elif backward:
        g1.zero_()
    return partial, g1, g2.to(t2.dtype)


def _match_patches_bilinear_triton(tokens1, tokens2, coords):
    """Fused forward: bilinear gather + squared difference + per-(sample, block) partial sums."""
    _check(tokens1, tokens2, coords)
    for x in (tokens2, coords):
        if x.device != tokens1.device:
            raise ValueError(f"all arguments must be on {tokens1.device}, got one on {x.device}")
    t1, t2 = tokens1.contiguous(), tokens2.contiguous()
    coords = coords.detach().float().contiguous()
    partial, _, _ = _launch(t1, t2, coords)
    valid = _bilinear_corners(coords, *t2.shape[1:3])[0]
    denom = (valid.sum() * t1.shape[3]).clamp(min=1)
    return partial.sum() / denom, denom


def _match_patches_bilinear_backward_triton(grad, tokens1, tokens2, coords, denom):
    """Gradients wrt both token maps (view 2 scattered to the four corners with atomics)."""
    scale = (2.0 * grad.float() / denom).reshape(1).contiguous()
    _, g1, g2 = _launch(tokens1, tokens2, coords, scale)
    return g1, g2


class _MatchPatchesBilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens1, tokens2, coords):
        loss, denom = _match_patches_bilinear_triton(tokens1, tokens2, coords)
        coords = coords.detach().float().contiguous()
        ctx.save_for_backward(tokens1.contiguous(), tokens2.contiguous(), coords, denom)
        return loss

    @staticmethod
    def backward(ctx, grad):
        t1, t2, coords, denom = ctx.saved_tensors
        g1, g2 = _match_patches_bilinear_backward_triton(grad, t1, t2, coords, denom)
        return g1, g2, None


def match_patches_bilinear(
    tokens1: torch.Tensor, tokens2: torch.Tensor, coords: torch.Tensor
) -> torch.Tensor:
    """MSE between every view-1 token and view 2 sampled bilinearly where that cell lies.

    Args:
        tokens1: (B, h1, w1, C) float32 or bfloat16, view-1 tokens.
        tokens2: (B, h2, w2, C) same B, C and dtype, view-2 tokens.
        coords: (B, h1*w1, 2) float, (row, col) of view-1 cell m (row-major) in view 2's token
            grid; integer values are token centres (align_corners). Not differentiated.

    Returns:
        0-d float32: sum of squared differences over valid cells and channels / (n_valid * C);
        cells outside ``[0, h2-1] x [0, w2-1]`` are excluded; 0 when none is valid. With integer
        coords this equals :func:`kernels.grid.match_patches` on the same cells.
    """
    if use_triton(tokens1, tokens2, coords):
        return _MatchPatchesBilinear.apply(tokens1, tokens2, coords)
    return match_patches_bilinear_reference(tokens1, tokens2, coords)
