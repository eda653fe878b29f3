"""Models Genesis transformations as Triton kernels: same parameters, same results as the reference.

Zhou et al., "Models Genesis", MICCAI 2019 / MedIA 2021, arXiv:2004.07882; official code
MrGiovanni/ModelsGenesis (``pytorch/utils.py: generate_pair``). The semantics are those of
:func:`kernels.genesis.apply_genesis_reference`, which this module matches on the same
:class:`~kernels.genesis_params.GenesisParams`:

* pass 1 (:func:`_genesis_owner_kernel`), one program per (cube, group of shuffle blocks): every
  voxel of block k's box gets ``owner = max(owner, k)`` by ``tl.atomic_max``, which is the
  sequential rule "later blocks overwrite earlier ones" without ordering the writes;
* pass 2 (:func:`_genesis_shuffle_kernel`), same grid: each block's permutation is derived in the
  kernel from the counter-based hash of (cube seed, block, slot) that the reference argsorts
  (:func:`kernels.genesis_params.block_permutations`): a slot's rank among the block's keys is its
  destination, counted over the block's <= 108 slots. Where the block owns that destination, the
  source's index is written over the owner mark. No (N, K, V) permutation table and no (N, K, 6)
  box table is built: boxes come from the drawn words (``params.shuffle_draws``) in both passes;
* pass 3 (:func:`_genesis_kernel`), one program per tile of output voxels, fused: the target is the
  flipped cube; the input reads the flipped cube at the voxel's shuffle source (itself where no
  block owns it), then the Bezier lookup (a binary search in the per-cube table, in float64 as the
  reference does), then painting from the 5 boxes and the noise field.

Flipped-cube values are read straight from the input with mirrored indices: the up-to-3 flips of a
cube compose into one parity per axis. Loads are widened to float32 (bfloat16/float16 inputs
convert exactly) and results are rounded once to the input dtype on store.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.genesis_params import (
    FMIX_C1,
    FMIX_C2,
    SEED_SALT,
    GenesisParams,
    GenesisTransformConfig,
    shuffle_block_volume,
)

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CUBE_FIELDS = 8  # per-cube int32 row: flip h, w, d parity, nonlinear, paint, inpaint, pad, pad
_PAINT_SLOTS = 5
_INTERPRETER_LANES = 2**17  # (block, slot) lanes per shuffle program under TRITON_INTERPRET=1
# The hash constants of kernels.genesis_params, as compile-time constants of the kernels.
_C1: tl.constexpr = tl.constexpr(FMIX_C1)
_C2: tl.constexpr = tl.constexpr(FMIX_C2)
_SALT: tl.constexpr = tl.constexpr(SEED_SALT)


@triton.jit
def lut_interp(x, xs, ys, P, SEARCH_STEPS: tl.constexpr, BLOCK: tl.constexpr):
    """Piecewise-linear look-up of ``x`` (BLOCK,) in one cube's table; float32 out.

    ``xs``, ``ys``: (P,) float64 pointers, ``xs`` ascending. Computed in float64 with the
    reference ``interp``'s rule (searchsorted right, index clamped to 1..P-1, weight clamped).
    """
    q = x.to(tl.float64)
    lo = tl.zeros([BLOCK], dtype=tl.int32)
    hi = tl.full([BLOCK], P, dtype=tl.int32)
    for _ in tl.static_range(SEARCH_STEPS):  # count of xs <= q, in [lo, hi]
        mid = (lo + hi) // 2
        active = lo < hi
        below = tl.load(xs + mid, mask=active, other=0.0) <= q
        lo = tl.where(active & below, mid + 1, lo)
        hi = tl.where(active & ~below, mid, hi)
    upper = tl.minimum(tl.maximum(lo, 1), P - 1)
    x0 = tl.load(xs + upper - 1)
    x1 = tl.load(xs + upper)
    y0 = tl.load(ys + upper - 1)
    y1 = tl.load(ys + upper)
    width = x1 - x0
    weight = tl.where(width > 0, (q - x0) / tl.where(width > 0, width, 1.0), 1.0)
    weight = tl.minimum(tl.maximum(weight, 0.0), 1.0)
    return (y0 + weight * (y1 - y0)).to(tl.float32)


@triton.jit
def _fmix32(h):
    """MurmurHash3's 32-bit finaliser on uint32 values (products wrap modulo 2**32): the
    :func:`kernels.genesis_params.fmix32` bijection, bit for bit."""
    h ^= h >> 16
    h *= tl.full([], _C1, tl.uint32)
    h ^= h >> 13
    h *= tl.full([], _C2, tl.uint32)
    h ^= h >> 16
    return h


@triton.jit
def _block_box(draws_ptr, n, k, k_ok, num_blocks, H, W, D):
    """Box (start h, w, d, size h, w, d) of blocks ``k`` of cube ``n`` from their six 32-bit words:
    :func:`kernels.genesis_params.shuffle_boxes_from_draws` (int64 multiply-shift), as int32."""
    row = draws_ptr + (n * num_blocks + k) * 6
    sh = 1 + ((tl.load(row + 3, mask=k_ok, other=0) * tl.maximum(H // 10, 1)) >> 32)
    sw = 1 + ((tl.load(row + 4, mask=k_ok, other=0) * tl.maximum(W // 10, 1)) >> 32)
    sd = 1 + ((tl.load(row + 5, mask=k_ok, other=0) * tl.maximum(D // 10, 1)) >> 32)
    bh = (tl.load(row + 0, mask=k_ok, other=0) * (H + 1 - sh)) >> 32
    bw = (tl.load(row + 1, mask=k_ok, other=0) * (W + 1 - sw)) >> 32
    bd = (tl.load(row + 2, mask=k_ok, other=0) * (D + 1 - sd)) >> 32
    return (
        bh.to(tl.int32), bw.to(tl.int32), bd.to(tl.int32),
        sh.to(tl.int32), sw.to(tl.int32), sd.to(tl.int32),
    )  # fmt: skip


@triton.jit
def _block_flat(bh, bw, bd, sw, sd, local, W, D):
    """Flat index (flipped cube) of voxel ``local`` (BLOCKS, VOXELS) of boxes (BLOCKS,): voxel
    number l of a box counts in C-order, D fastest."""
    plane = (sw * sd)[:, None]
    i = local // plane
    j = (local // sd[:, None]) % sw[:, None]
    kk = local % sd[:, None]
    return ((bh[:, None] + i) * W + bw[:, None] + j) * D + bd[:, None] + kk


@triton.jit
def _genesis_owner_kernel(
    draws_ptr,  # (N, K, 6) int64: the 32-bit words of each shuffle block (params.shuffle_draws)
    do_shuffle_ptr,  # (N,) int32: 1 where the cube is shuffled
    owner_ptr,  # (N, H*W*D) int32, initialised to -1: largest block index covering each voxel
    num_blocks,  # K
    H,
    W,
    D,
    S,  # H*W*D
    BLOCKS: tl.constexpr,  # blocks per program
    VOXELS: tl.constexpr,  # power of two >= the largest block volume
):
    pid_k = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    shuffled = tl.load(do_shuffle_ptr + n) != 0
    k = pid_k * BLOCKS + tl.arange(0, BLOCKS)  # (BLOCKS,)
    k_ok = (k < num_blocks) & shuffled
    bh, bw, bd, sh, sw, sd = _block_box(draws_ptr, n, k, k_ok, num_blocks, H, W, D)
    local = tl.arange(0, VOXELS)[None, :]
    flat = _block_flat(bh, bw, bd, sw, sd, local, W, D)
    used = k_ok[:, None] & (local < (sh * sw * sd)[:, None])
    # a computed (not broadcast) tensor: the interpreter's atomics misread a stride-0 view
    value = k[:, None] + tl.zeros([BLOCKS, VOXELS], dtype=tl.int32)
    tl.atomic_max(owner_ptr + n * S + flat, value, mask=used, sem="relaxed")


@triton.jit
def _genesis_shuffle_kernel(
    draws_ptr,  # (N, K, 6) int64: the 32-bit words of each shuffle block
    seed_ptr,  # (N,) int64: each cube's shuffle seed (params.shuffle_seed)
    do_shuffle_ptr,  # (N,) int32: 1 where the cube is shuffled
    owner_ptr,  # (N, H*W*D) int32: owning block (pass 1); owned voxels become -2 - source
    num_blocks,  # K
    H,
    W,
    D,
    S,  # H*W*D
    BLOCKS: tl.constexpr,  # blocks per program
    VOXELS: tl.constexpr,  # power of two >= the largest block volume
):
    """Each block's in-block permutation, derived here from the counter-based hash.

    Slot l of block k has the key fmix32(b ^ l), b = fmix32(fmix32(seed ^ SALT) ^ k)
    (:func:`kernels.genesis_params.block_permutations`). The reference's stable argsort sends
    slot l to position rank(l) = #{m < v : key(m) < key(l) or (key(m) = key(l) and m < l)}
    (keys of one block are distinct, so the tie term never fires), so output voxel rank(l) of the
    block takes block voxel l. Ranks are counted over the block's v <= VOXELS slots, one slot m
    per loop step, for all (block, l) lanes at once. Only where this block owns the destination
    (pass 1: the last block covering it) is the source recorded, as ``-2 - source`` (never a block
    index, so other programs' ownership tests are unaffected): at most one program writes each
    voxel, and no permutation table exists.
    """
    pid_k = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    shuffled = tl.load(do_shuffle_ptr + n) != 0
    k = pid_k * BLOCKS + tl.arange(0, BLOCKS)  # (BLOCKS,)
    k_ok = (k < num_blocks) & shuffled
    bh, bw, bd, sh, sw, sd = _block_box(draws_ptr, n, k, k_ok, num_blocks, H, W, D)
    volume = tl.where(k_ok, sh * sw * sd, 0)  # (BLOCKS,)
    slot = tl.arange(0, VOXELS)
    used = slot[None, :] < volume[:, None]
    seed = tl.load(seed_ptr + n).to(tl.uint32)
    stem = _fmix32(_fmix32(seed ^ tl.full([], _SALT, tl.uint32)) ^ k.to(tl.uint32))  # (BLOCKS,)
    key = _fmix32(stem[:, None] ^ slot[None, :].to(tl.uint32))  # (BLOCKS, VOXELS)
    rank = tl.zeros([BLOCKS, VOXELS], dtype=tl.int32)
    m = tl.zeros([BLOCKS], dtype=tl.int32)  # the compared slot, as a tensor (the loop index is
    for _ in range(0, tl.max(volume, axis=0)):  # a Python int under the interpreter)
        key_m = _fmix32(stem ^ m.to(tl.uint32))[:, None]  # (BLOCKS, 1)
        earlier = (key_m < key) | ((key_m == key) & (m[:, None] < slot[None, :]))
        rank += (earlier & (m < volume)[:, None]).to(tl.int32)
        m += 1
    src = _block_flat(bh, bw, bd, sw, sd, slot[None, :], W, D)
    dst = owner_ptr + n * S + _block_flat(bh, bw, bd, sw, sd, rank, W, D)
    mine = used & (tl.load(dst, mask=used, other=-1) == k[:, None])
    tl.store(dst, -2 - src, mask=mine)


@triton.jit
def _genesis_kernel(
    cube_ptr,  # (N, 1, H, W, D) float32 / bfloat16 / float16: the input cubes
    source_ptr,  # (N, H*W*D) int32: -2 - shuffle source (flipped cube) per voxel, or >= -1
    flags_ptr,  # (N, 8) int32: flip parity h, w, d; do_nonlinear; do_paint; inpaint; 0; 0
    xs_ptr,  # (N, P) float64: Bezier table positions, ascending
    ys_ptr,  # (N, P) float64: Bezier table values
    paint_ptr,  # (N, 5, 6) int32: painting boxes, size 0 where the slot is unused
    noise_ptr,  # (N, 1, H, W, D) float32: U(0, 1) painting noise
    x_ptr,  # (N, 1, H, W, D) cube dtype, output: transformed input
    y_ptr,  # (N, 1, H, W, D) cube dtype, output: target (the flipped cube)
    H,
    W,
    D,
    S,  # H*W*D
    P: tl.constexpr,  # Bezier table size
    SEARCH_STEPS: tl.constexpr,  # binary-search iterations, >= log2(P + 1)
    BLOCK: tl.constexpr,  # voxels per program
):
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # flat voxel index in the flipped cube
    valid = offs < S
    h = offs // (W * D)
    w = (offs // D) % W
    d = offs % D
    flags = flags_ptr + n * 8
    flip_h = tl.load(flags + 0) != 0
    flip_w = tl.load(flags + 1) != 0
    flip_d = tl.load(flags + 2) != 0
    do_nonlinear = tl.load(flags + 3) != 0
    do_paint = tl.load(flags + 4) != 0
    inpaint = tl.load(flags + 5) != 0
    cube = cube_ptr + n * S

    # 1. flips: y[h, w, d] = cube[mirrored h, w, d].
    mh = tl.where(flip_h, H - 1 - h, h)
    mw = tl.where(flip_w, W - 1 - w, w)
    md = tl.where(flip_d, D - 1 - d, d)
    y = tl.load(cube + (mh * W + mw) * D + md, mask=valid, other=0.0).to(tl.float32)

    # 2. local pixel shuffling: passes 1 and 2 named the source of every shuffled voxel.
    coded = tl.load(source_ptr + n * S + offs, mask=valid, other=-1)
    owned = coded <= -2
    src = tl.where(owned, -2 - coded, 0)
    sh_ = src // (W * D)
    sw_ = (src // D) % W
    sd_ = src % D
    sh_ = tl.where(flip_h, H - 1 - sh_, sh_)
    sw_ = tl.where(flip_w, W - 1 - sw_, sw_)
    sd_ = tl.where(flip_d, D - 1 - sd_, sd_)
    shuffled = tl.load(cube + (sh_ * W + sw_) * D + sd_, mask=valid & owned, other=0.0)
    x = tl.where(owned, shuffled.to(tl.float32), y)

    # 3. non-linear intensity, in float64 like the reference's interp: hi = searchsorted(right).
    if do_nonlinear:
        x = lut_interp(x, xs_ptr + n * P, ys_ptr + n * P, P, SEARCH_STEPS, BLOCK)

    # 4. painting: noise inside (in-painting) or outside (out-painting) the union of boxes.
    if do_paint:
        inside = tl.zeros([BLOCK], dtype=tl.int1)
        for b in tl.static_range(5):
            box = paint_ptr + (n * 5 + b) * 6
            ph = tl.load(box + 0)
            pw = tl.load(box + 1)
            pd = tl.load(box + 2)
            in_h = (h >= ph) & (h < ph + tl.load(box + 3))
            in_w = (w >= pw) & (w < pw + tl.load(box + 4))
            in_d = (d >= pd) & (d < pd + tl.load(box + 5))
            inside = inside | (in_h & in_w & in_d)
        noise = tl.load(noise_ptr + n * S + offs, mask=valid, other=0.0)
        x = tl.where(inside == inpaint, noise, x)

    out_ty = x_ptr.dtype.element_ty
    tl.store(x_ptr + n * S + offs, x.to(out_ty), mask=valid)
    tl.store(y_ptr + n * S + offs, y.to(out_ty), mask=valid)


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _genesis_triton(
    cubes: torch.Tensor, params: GenesisParams, config: GenesisTransformConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: the Triton twin of :func:`kernels.genesis.apply_genesis_reference`.

    Args:
        cubes: (N, 1, H, W, D) float32, bfloat16 or float16 tensor on a CUDA device (any device
            under ``TRITON_INTERPRET=1``), values in [0, 1], depth last.
        params: Parameters from :func:`sample_genesis_params` for this shape (moved to the
            cubes' device here).
        config: Only ``bezier_points`` is read (default config if None).

    Returns:
        (x, y), each (N, 1, H, W, D) with the dtype and device of ``cubes``.

    Raises:
        ValueError: for a wrong dtype, shape or device.
    """
    from kernels.genesis import bezier_lookup  # genesis.py imports this module lazily

    config = config or GenesisTransformConfig()
    if cubes.dim() != 5 or cubes.shape[1] != 1:
        raise ValueError(f"expected cubes of shape (N, 1, H, W, D), got {tuple(cubes.shape)}")
    if tuple(cubes.shape) != tuple(params.noise.shape):
        raise ValueError(
            f"cubes of shape {tuple(cubes.shape)} do not match parameters drawn for "
            f"{tuple(params.noise.shape)}"
        )
    if cubes.dtype not in _DTYPES:
        raise ValueError(
            f"the Triton Models Genesis kernel takes float32, bfloat16 or float16 cubes, got "
            f"{cubes.dtype}; use the reference (ANATOMIX_KERNELS=torch) for other dtypes"
        )
    if not cubes.is_cuda and not interpreting():
        raise ValueError(
            f"the Triton Models Genesis kernel needs a CUDA tensor, got one on {cubes.device} "
            "(CPU tensors run only under TRITON_INTERPRET=1)"
        )
    n, _, height, width, depth = (int(s) for s in cubes.shape)
    spatial = height * width * depth
    if n == 0 or spatial == 0:
        return cubes.clone(), cubes.clone()
    if n * spatial >= 2**31:
        raise ValueError(f"batch of {n * spatial} voxels exceeds the kernel's int32 indexing")
    device = cubes.device
    cubes = cubes.contiguous()
    params = params.to(device)

    parity = (params.flips[:, :, None] == torch.arange(1, 4, device=device)).sum(1) % 2
    flags = torch.zeros((n, _CUBE_FIELDS), dtype=torch.int32, device=device)
    flags[:, :3] = parity.to(torch.int32)
    flags[:, 3] = params.do_nonlinear.to(torch.int32)
    flags[:, 4] = params.do_paint.to(torch.int32)
    flags[:, 5] = params.inpaint.to(torch.int32)
    paint = params.paint_boxes.to(torch.int32).clone()
    paint[..., 3:] *= params.paint_box_valid[..., None].to(torch.int32)  # unused slots: empty
    points = config.bezier_points
    xs, ys = bezier_lookup(params.control, params.inverted, points)
    noise = params.noise.to(torch.float32).contiguous()

    # Shuffling: pass 1 marks each voxel's last covering block, pass 2 (rank counting of the
    # hashed keys) records each owned voxel's source; neither boxes nor permutations are stored.
    source = torch.full((n, spatial), -1, dtype=torch.int32, device=device)
    num_blocks = int(params.shuffle_draws.shape[1])
    if num_blocks and bool(params.do_shuffle.any()):
        draws = params.shuffle_draws.to(torch.int64).contiguous()
        seeds = params.shuffle_seed.to(torch.int64).contiguous()
        do_shuffle = params.do_shuffle.to(torch.int32).contiguous()
        voxels = triton.next_power_of_2(shuffle_block_volume((height, width, depth)))
        common = (num_blocks, height, width, depth, spatial)
        # Lanes per program: the interpreter pays per program and op, so it takes many blocks at
        # once. On a GPU the rank loop runs to the largest volume among a program's blocks, so it
        # groups few (4 of 6x6x3: 49 steps expected instead of 86 for 32; not yet tuned on a GPU).
        for kernel, lanes, extra in (
            (_genesis_owner_kernel, 4096, ()),
            (_genesis_shuffle_kernel, 512, (seeds,)),
        ):
            lanes = _INTERPRETER_LANES if interpreting() else lanes
            blocks = max(1, min(triton.next_power_of_2(num_blocks), lanes // voxels))
            grid = (triton.cdiv(num_blocks, blocks), n)
            kernel[grid](draws, *extra, do_shuffle, source, *common, BLOCKS=blocks, VOXELS=voxels)

    x = torch.empty_like(cubes)
    y = torch.empty_like(cubes)
    block = 4096 if interpreting() else 1024  # the interpreter pays per program, not per lane
    grid = (triton.cdiv(spatial, block), n)
    _genesis_kernel[grid](
        cubes, source, flags, xs.contiguous(), ys.contiguous(), paint, noise, x, y,
        height, width, depth, spatial, P=points,
        SEARCH_STEPS=int(points).bit_length(), BLOCK=block,
    )  # fmt: skip
    return x, y
