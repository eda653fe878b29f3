"""Patch-order distortion (POPAR / PEAC): permute and restore the square tiles of an image.

PEAC: Zhou, Luo, Pang, Ding, Gotway, Liang, "Learning Anatomically Consistent Embedding for Chest
Radiography", BMVC 2023, arXiv:2312.00335; official code jlianglab/PEAC. Its POPAR branch shuffles
the 14x14 = 196 patches (32x32 px for 448 input, 16x16 for 224) of a crop and asks the network to
predict each token's original index and to restore the ordered crop. Written from the published
behaviour (docs/METHODS.md section 3.3 item 5), not from the official code.

Tiles are numbered row-major: tile ``t`` of an (H, W) image with ``nw = W // patch`` tiles per row
covers rows ``(t // nw) * patch ...`` and columns ``(t % nw) * patch ...``. Then

    shuffle_patches(x, perm)[b, :, tile j]   = x[b, :, tile perm[b, j]]
    unshuffle_patches(y, perm)[b, :, tile perm[b, j]] = y[b, :, tile j]

so ``unshuffle_patches(shuffle_patches(x, perm), perm) == x``, and the classification target of
output tile ``j`` is ``perm[b, j]``. Each row of ``perm`` must be a permutation of ``0 .. N-1``
(not checked: that would synchronise the GPU); the gradient of either op is the other one.
"""

from __future__ import annotations

import torch

from kernels._dispatch import jit, tl, triton, use_triton

__all__ = [
    "shuffle_patches",
    "shuffle_patches_reference",
    "unshuffle_patches",
    "unshuffle_patches_reference",
]


def _check(images: torch.Tensor, perm: torch.Tensor, patch: int) -> tuple[int, int]:
    """Validate arguments; return the tile grid (nh, nw)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if patch < 1:
        raise ValueError(f"patch must be a positive number of pixels, got {patch}")
    b, _, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
    nh, nw = h // patch, w // patch
    if tuple(perm.shape) != (b, nh * nw):
        raise ValueError(
            f"perm must be (B, nh*nw) = ({b}, {nh * nw}) for {h}x{w} images and {patch}-px "
            f"patches, got {tuple(perm.shape)}"
        )
    if perm.dtype != torch.long:
        raise ValueError(f"perm must be int64 (torch.long), got {perm.dtype}")
    return nh, nw


def _to_tiles(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, N, patch, patch), tiles in row-major order."""
    b, c, h, w = images.shape
    tiles = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 1, 2, 4, 3, 5)
    return tiles.reshape(b, c, -1, patch, patch)


def _from_tiles(tiles: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, C, N, patch, patch) -> (B, C, H, W); inverse of :func:`_to_tiles`."""
    b, c, _, p, _ = tiles.shape
    return tiles.reshape(b, c, h // p, w // p, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


def shuffle_patches_reference(images: torch.Tensor, perm: torch.Tensor, patch: int) -> torch.Tensor:
    """PyTorch reference of :func:`shuffle_patches` (the spec): out tile j = input tile perm[j]."""
    _check(images, perm, patch)
    tiles = _to_tiles(images, patch)
    index = perm[:, None, :, None, None].expand(-1, tiles.shape[1], -1, patch, patch)
    return _from_tiles(tiles.gather(2, index), *images.shape[2:])


def unshuffle_patches_reference(
    images: torch.Tensor, perm: torch.Tensor, patch: int
) -> torch.Tensor:
    """PyTorch reference of :func:`unshuffle_patches`: output tile perm[j] = input tile j."""
    _check(images, perm, patch)
    tiles = _to_tiles(images, patch)
    index = perm[:, None, :, None, None].expand(-1, tiles.shape[1], -1, patch, patch)
    return _from_tiles(torch.zeros_like(tiles).scatter(2, index, tiles), *images.shape[2:])


@jit
def _shuffle_patches_kernel(
    src_ptr,  # (B, C, H, W) input images, contiguous
    perm_ptr,  # (B, N) int64 tile permutation, N = (H // P) * (W // P)
    dst_ptr,  # (B, C, H, W) output images, contiguous
    C,
    H,
    W,
    N,
    NW,
    P,
    INVERSE: tl.constexpr,  # False: dst tile j <- src tile perm[j]; True: dst tile perm[j] <- src j
    BLOCK_P: tl.constexpr,
):
    bc = tl.program_id(0)  # b * C + c: one image plane
    j = tl.program_id(1)  # tile index in perm's row
    k = tl.load(perm_ptr + (bc // C) * N + j)
    # `j + 0 * k` gives j the type of k (int64): both branches index with the same type.
    if INVERSE:
        src_tile = j + 0 * k
        dst_tile = k
    else:
        src_tile = k
        dst_tile = j + 0 * k
    rows = tl.arange(0, BLOCK_P)[:, None]
    cols = tl.arange(0, BLOCK_P)[None, :]
    inside = (rows < P) & (cols < P)
    plane = bc.to(tl.int64) * H * W
    src = plane + ((src_tile // NW) * P + rows) * W + (src_tile % NW) * P + cols
    dst = plane + ((dst_tile // NW) * P + rows) * W + (dst_tile % NW) * P + cols
    tl.store(dst_ptr + dst, tl.load(src_ptr + src, mask=inside), mask=inside)


def _shuffle_patches_triton(
    images: torch.Tensor, perm: torch.Tensor, patch: int, inverse: bool = False
) -> torch.Tensor:
    """Launch :func:`_shuffle_patches_kernel`: one program per (image plane, tile)."""
    _, nw = _check(images, perm, patch)
    if perm.device != images.device:
        raise ValueError(f"perm is on {perm.device} but images are on {images.device}")
    images, perm = images.contiguous(), perm.contiguous()
    b, c, h, w = images.shape
    out = torch.empty_like(images)
    if out.numel() == 0:
        return out
    grid = (b * c, perm.shape[1])
    _shuffle_patches_kernel[grid](
        images,
        perm,
        out,
        c,
        h,
        w,
        perm.shape[1],
        nw,
        patch,
        INVERSE=inverse,
        BLOCK_P=triton.next_power_of_2(patch),
    )
    return out


class _ShufflePatches(torch.autograd.Function):
    """Tile permutation; the gradient is the inverse permutation of the incoming gradient."""

    @staticmethod
    def forward(ctx, images, perm, patch, inverse):
        ctx.save_for_backward(perm)
        ctx.patch, ctx.inverse = patch, inverse
        return _shuffle_patches_triton(images, perm, patch, inverse)

    @staticmethod
    def backward(ctx, grad):
        (perm,) = ctx.saved_tensors
        return _shuffle_patches_triton(grad, perm, ctx.patch, not ctx.inverse), None, None, None


def shuffle_patches(images: torch.Tensor, perm: torch.Tensor, patch: int) -> torch.Tensor:
    """Permute the patch x patch tiles of each image (POPAR's order distortion).

    Args:
        images: (B, C, H, W) float32 or bfloat16; H and W divisible by ``patch``.
        perm: (B, N) int64, N = (H // patch) * (W // patch); each row a permutation of 0..N-1.
        patch: tile side in pixels (32 for PEAC's 448 input, 16 for 224).

    Returns:
        (B, C, H, W): tile j (row-major) of image b is input tile ``perm[b, j]``.

    Raises:
        ValueError: wrong shapes, H or W not divisible by ``patch``, or ``perm`` not int64.
    """
    if use_triton(images, perm):
        return _ShufflePatches.apply(images, perm, patch, False)
    return shuffle_patches_reference(images, perm, patch)


def unshuffle_patches(images: torch.Tensor, perm: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`shuffle_patches`: put tile j back at position ``perm[b, j]``.

    Args:
        images: (B, C, H, W) float32 or bfloat16, typically ``shuffle_patches(x, perm, patch)``.
        perm: (B, N) int64, the permutation that was applied.
        patch: tile side in pixels.

    Returns:
        (B, C, H, W) with ``unshuffle_patches(shuffle_patches(x, perm, p), perm, p) == x``.

    Raises:
        ValueError: as :func:`shuffle_patches`.
    """
    if use_triton(images, perm):
        return _ShufflePatches.apply(images, perm, patch, True)
    return unshuffle_patches_reference(images, perm, patch)
