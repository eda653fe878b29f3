"""PEAC's Genesis-2D appearance distortion as Triton kernels: same parameters, same results.

Semantics are those of :func:`kernels.genesis2d.apply_genesis2d_reference` (see that module), which
this launcher matches on the same :class:`~kernels.genesis2d.Genesis2DParams`, in two passes like
the 3D kernels of ``kernels/genesis_triton.py``:

* pass 1 (:func:`_genesis2d_owner_kernel`), one program per (image, group of shuffle blocks):
  every pixel of block k gets ``owner = max(owner, k)`` by ``tl.atomic_max``, the rule "later
  blocks overwrite earlier ones" without ordering the writes;
* pass 2 (:func:`_genesis2d_kernel`), one program per tile of pixels of one image, fused: the
  shuffle source pixel is found once, then for every channel the value is gathered, mapped by the
  Bezier table (binary search, float64 like the reference) and painted from the 5 boxes and the
  image's single noise field.

Loads are widened to float32 and results rounded once to the input dtype on store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.genesis import bezier_lookup
from kernels.genesis2d import Genesis2DConfig, Genesis2DParams
from kernels.genesis_triton import interpreting, lut_interp

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PAINT_SLOTS = 5


@triton.jit
def _genesis2d_owner_kernel(
    boxes_ptr,  # (B, K, 4) int32: start h, w, size h, w of each shuffle block
    owner_ptr,  # (B, H*W) int32, initialised to -1: largest block index covering each pixel
    num_blocks,  # K
    W,
    S,  # H*W
    BLOCKS: tl.constexpr,  # blocks per program
    PIXELS: tl.constexpr,  # power of two >= the largest block area
):
    pid_k = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    k = pid_k * BLOCKS + tl.arange(0, BLOCKS)
    k_ok = k < num_blocks
    row = boxes_ptr + (n * num_blocks + k) * 4
    bh = tl.load(row + 0, mask=k_ok, other=0)
    bw = tl.load(row + 1, mask=k_ok, other=0)
    sh = tl.load(row + 2, mask=k_ok, other=0)
    sw = tl.load(row + 3, mask=k_ok, other=1)
    local = tl.arange(0, PIXELS)[None, :]  # pixel number within the block, row-major
    i = local // sw[:, None]
    j = local % sw[:, None]
    flat = (bh[:, None] + i) * W + bw[:, None] + j
    mask = k_ok[:, None] & (local < (sh * sw)[:, None])
    value = tl.broadcast_to(k[:, None], (BLOCKS, PIXELS)).to(tl.int32)
    tl.atomic_max(owner_ptr + n * S + flat, value, mask=mask, sem="relaxed")


@triton.jit
def _genesis2d_kernel(
    img_ptr,  # (B, C, H, W) float32 / bfloat16 / float16: the input images
    owner_ptr,  # (B, H*W) int32: owning shuffle block per pixel, or -1
    boxes_ptr,  # (B, K, 4) int32: shuffle blocks (start h, w, size h, w)
    perm_ptr,  # (B, K, V) int16 or int32: within-block source pixel of each output pixel
    flags_ptr,  # (B, 4) int32: do_nonlinear, do_paint, inpaint, 0
    xs_ptr,  # (B, P) float64: Bezier table positions, ascending
    ys_ptr,  # (B, P) float64: Bezier table values
    paint_ptr,  # (B, 5, 4) int32: painting boxes, size 0 where the slot is unused
    noise_ptr,  # (B, 1, H, W) float32: U(0, 1) painting noise, shared by the channels
    out_ptr,  # (B, C, H, W) image dtype, output
    num_blocks,  # K
    V,
    C,
    W,
    S,  # H*W
    P: tl.constexpr,  # Bezier table size
    SEARCH_STEPS: tl.constexpr,  # binary-search iterations, >= log2(P + 1)
    BLOCK: tl.constexpr,  # pixels per program
):
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < S
    h = offs // W
    w = offs % W
    flags = flags_ptr + n * 4
    do_nonlinear = tl.load(flags + 0) != 0
    do_paint = tl.load(flags + 1) != 0
    inpaint = tl.load(flags + 2) != 0

    # 1. shuffle source pixel from the owning block's permutation (itself where unowned).
    owner = tl.load(owner_ptr + n * S + offs, mask=valid, other=-1)
    owned = owner >= 0
    row = boxes_ptr + (n * num_blocks + owner) * 4
    bh = tl.load(row + 0, mask=owned, other=0)
    bw = tl.load(row + 1, mask=owned, other=0)
    sw = tl.load(row + 3, mask=owned, other=1)
    local = (h - bh) * sw + (w - bw)
    src = tl.load(perm_ptr + (n * num_blocks + owner) * V + local, mask=owned, other=0)
    src = src.to(tl.int32)
    src_flat = tl.where(owned, (bh + src // sw) * W + bw + src % sw, offs)

    # Painting mask and noise: one per pixel, the same for every channel.
    replace = tl.zeros([BLOCK], dtype=tl.int1)
    noise = tl.zeros([BLOCK], dtype=tl.float32)
    if do_paint:
        inside = tl.zeros([BLOCK], dtype=tl.int1)
        for b in tl.static_range(5):
            box = paint_ptr + (n * 5 + b) * 4
            ph = tl.load(box + 0)
            pw = tl.load(box + 1)
            in_h = (h >= ph) & (h < ph + tl.load(box + 2))
            in_w = (w >= pw) & (w < pw + tl.load(box + 3))
            inside = inside | (in_h & in_w)
        replace = inside == inpaint
        noise = tl.load(noise_ptr + n * S + offs, mask=valid, other=0.0)

    xs = xs_ptr + n * P
    ys = ys_ptr + n * P
    out_ty = out_ptr.dtype.element_ty
    for ch in range(C):
        base = (n * C + ch) * S
        x = tl.load(img_ptr + base + src_flat, mask=valid, other=0.0).to(tl.float32)

        # 2. non-linear intensity, float64 like the reference's interp (searchsorted right).
        if do_nonlinear:
            x = lut_interp(x, xs, ys, P, SEARCH_STEPS, BLOCK)

        # 3. painting.
        x = tl.where(replace, noise, x)
        tl.store(out_ptr + base + offs, x.to(out_ty), mask=valid)


def _genesis2d_triton(
    images: torch.Tensor, params: Genesis2DParams, config: Genesis2DConfig | None = None
) -> torch.Tensor:
    """Launcher: the Triton twin of :func:`kernels.genesis2d.apply_genesis2d_reference`.

    Args:
        images: (B, C, H, W) float32, bfloat16 or float16 tensor on a CUDA device (any device
            under ``TRITON_INTERPRET=1``), values in [0, 1].
        params: Parameters from :func:`sample_genesis2d_params` for this shape.
        config: Only ``bezier_points`` is read (default config if None).

    Returns:
        (B, C, H, W) distorted images, dtype and device of ``images``.

    Raises:
        ValueError: for a wrong dtype, shape or device.
    """
    config = config or Genesis2DConfig()
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    n, channels, height, width = (int(s) for s in images.shape)
    if tuple(params.noise.shape) != (n, 1, height, width):
        raise ValueError(
            f"images of shape {tuple(images.shape)} do not match parameters drawn for "
            f"noise of shape {tuple(params.noise.shape)}"
        )
    if images.dtype not in _DTYPES:
        raise ValueError(
            f"the Triton Genesis-2D kernel takes float32, bfloat16 or float16 images, got "
            f"{images.dtype}; use the reference (ANATOMIX_KERNELS=torch) for other dtypes"
        )
    if not images.is_cuda and not interpreting():
        raise ValueError(
            f"the Triton Genesis-2D kernel needs a CUDA tensor, got one on {images.device} "
            "(CPU tensors run only under TRITON_INTERPRET=1)"
        )
    spatial = height * width
    if n == 0 or spatial == 0 or channels == 0:
        return images.clone()
    if images.numel() >= 2**31:
        raise ValueError(f"batch of {images.numel()} values exceeds the kernel's int32 indexing")
    device = images.device
    images = images.contiguous()
    params = params.to(device)

    num_blocks, vmax = int(params.shuffle_perm.shape[1]), int(params.shuffle_perm.shape[2])
    boxes = params.shuffle_boxes.to(torch.int32).contiguous()
    perm = params.shuffle_perm.contiguous()
    if perm.numel() == 0:  # no blocks: never read, but the kernel needs a real pointer
        boxes = torch.zeros(1, dtype=torch.int32, device=device)
        perm = torch.zeros(1, dtype=torch.int32, device=device)
    flags = torch.zeros((n, 4), dtype=torch.int32, device=device)
    flags[:, 0] = params.do_nonlinear.to(torch.int32)
    flags[:, 1] = params.do_paint.to(torch.int32)
    flags[:, 2] = params.inpaint.to(torch.int32)
    paint = params.paint_boxes.to(torch.int32).clone()
    paint[..., 2:] *= params.paint_box_valid[..., None].to(torch.int32)  # unused slots: empty
    points = config.bezier_points
    xs, ys = bezier_lookup(params.control, params.inverted, points)
    noise = params.noise.to(torch.float32).contiguous()

    owner = torch.full((n, spatial), -1, dtype=torch.int32, device=device)
    if num_blocks:
        pixels = triton.next_power_of_2(max(vmax, 1))
        blocks = max(1, min(triton.next_power_of_2(num_blocks), 4096 // pixels))
        grid = (triton.cdiv(num_blocks, blocks), n)
        _genesis2d_owner_kernel[grid](
            boxes, owner, num_blocks, width, spatial, BLOCKS=blocks, PIXELS=pixels
        )

    out = torch.empty_like(images)
    block = 4096 if interpreting() else 1024  # the interpreter pays per program, not per lane
    grid = (triton.cdiv(spatial, block), n)
    _genesis2d_kernel[grid](
        images, owner, boxes, perm, flags, xs.contiguous(), ys.contiguous(), paint, noise, out,
        num_blocks, vmax, channels, width, spatial, P=points,
        SEARCH_STEPS=int(points).bit_length(), BLOCK=block,
    )  # fmt: skip
    return out
