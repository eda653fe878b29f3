"""Models Genesis transformations as a compiled CPU kernel (Numba): same parameters, same results.

Zhou et al., "Models Genesis", MICCAI 2019 / MedIA 2021, arXiv:2004.07882; official code
MrGiovanni/ModelsGenesis (``pytorch/utils.py: generate_pair``). The semantics are those of
:func:`kernels.genesis.apply_genesis_reference`, which :func:`apply_genesis_cpu` matches on the same
:class:`~kernels.genesis_params.GenesisParams` (bit for bit, the Bezier map up to float rounding).

One kernel, ``numba.njit(parallel=True, cache=True)``, ``prange`` over the cubes of the batch; per
cube, in the order of the published loop:

1. flip: the up-to-3 flips compose into one mirror parity per axis; the target ``y`` is written;
2. local pixel shuffling: blocks k = 0..K-1 in order, each read from ``y`` (the pre-shuffle cube)
   and written into ``x``, so "later blocks overwrite earlier ones" holds by construction. The box
   of block k is derived here from its drawn words (``params.shuffle_draws``), and its
   permutation is recomputed from ``params.shuffle_seed`` with the counter-based
   hash of :func:`kernels.genesis_params.block_permutations` (each voxel's destination is the rank
   of its key among the block's distinct keys) -- the (N, K, V) permutation table is never
   materialised, which was most of the reference's sampling time;
3. and 4. one fused pass over the voxels: painting from the union of the valid boxes (noise or the
   cube), else the Bezier look-up table (built by :func:`kernels.genesis.bezier_lookup` in float64
   and interpolated in float64 like the reference's ``interp``).

float32 cubes are processed in place of type; bfloat16 and float16 cubes are widened to float32
(exact) and the results rounded back once, as the Triton kernel does: flips, shuffling and painting
stay exact, the Bezier values may differ from the reference (which rounds float64 straight to the
half type) by one unit in the last place. Numba is optional: without it this module still
imports, :func:`numba_kernel_available` is False and ``kernels/genesis.py`` uses the reference.
"""

from __future__ import annotations

import numpy as np
import torch

from kernels.genesis_params import (
    FMIX_C1,
    FMIX_C2,
    MASK32,
    SEED_SALT,
    GenesisParams,
    GenesisTransformConfig,
    shuffle_block_volume,
)

try:  # optional: the reference covers every path without it
    import numba
    from numba import prange
except ImportError:  # pragma: no cover - exercised only on Numba-less installs
    numba = None
    prange = range

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PAINT_SLOTS = 5
# Per-cube int64 flags row: flip parity h, w, d; do_shuffle; do_nonlinear; do_paint; inpaint.
_FLAGS = 7

# The hash of kernels.genesis_params as unsigned 64-bit constants: Numba would turn mixed
# signed/unsigned 64-bit arithmetic into float64, so every operand is a uint64 (products of two
# 32-bit values fit, and are masked back to 32 bits).
_M32 = np.uint64(MASK32)
_C1 = np.uint64(FMIX_C1)
_C2 = np.uint64(FMIX_C2)
_SALT = np.uint64(SEED_SALT)
_SH13 = np.uint64(13)
_SH16 = np.uint64(16)
_SCAN = 8  # Bezier buckets holding up to this many samples are scanned, not bisected
_MAX_GRID = 1 << 16  # most buckets of the Bezier search accelerator


def numba_kernel_available() -> bool:
    """Whether Numba imported, so that :func:`apply_genesis_cpu` can run."""
    return numba is not None


def _njit(**options):
    """``numba.njit(**options)`` when Numba imports, else the plain function (never called)."""
    return numba.njit(**options) if numba is not None else (lambda fn: fn)


@_njit(cache=True)
def _fmix32(h):
    """MurmurHash3's 32-bit finaliser on a uint64 holding a 32-bit word."""
    h ^= h >> _SH16
    h = (h * _C1) & _M32
    h ^= h >> _SH13
    h = (h * _C2) & _M32
    h ^= h >> _SH16
    return h


@_njit(cache=True)
def _shuffle_cube(y, x, draws, seed, dims, keys, offsets):
    """Local pixel shuffling of one flattened cube: blocks in order, read from ``y`` into ``x``.

    y, x: (H*W*D,) float32; draws: (K, 6) int64 words of the blocks; seed: the cube's shuffle
    seed; dims: (H, W, D); keys (uint32), offsets (int64): scratch of >= V entries.

    Block k's box is ``shuffle_boxes_from_draws`` of its words: size = 1 + (w * (dim // 10)) >> 32
    per axis, then start = (w' * (dim + 1 - size)) >> 32.

    Block voxel l moves to position rank(l) = #{m : key(m) < key(l)}, which is where the stable
    argsort of ``block_permutations`` puts it (the keys of a block are distinct): output voxel j
    takes voxel perm[j] with rank(perm[j]) = j. Counting ranks is branch-free and vectorises, and
    beats sorting for blocks of <= 108 voxels.
    """
    height, width, depth = dims[0], dims[1], dims[2]
    most_h, most_w, most_d = max(height // 10, 1), max(width // 10, 1), max(depth // 10, 1)
    stem = _fmix32((np.uint64(seed) & _M32) ^ _SALT)
    for k in range(draws.shape[0]):
        sh = 1 + ((draws[k, 3] * most_h) >> 32)
        sw = 1 + ((draws[k, 4] * most_w) >> 32)
        sd = 1 + ((draws[k, 5] * most_d) >> 32)
        h0 = (draws[k, 0] * (height + 1 - sh)) >> 32
        w0 = (draws[k, 1] * (width + 1 - sw)) >> 32
        d0 = (draws[k, 2] * (depth + 1 - sd)) >> 32
        volume = sh * sw * sd
        block = _fmix32(stem ^ (np.uint64(k) & _M32))
        for slot in range(volume):
            keys[slot] = np.uint32(_fmix32(block ^ np.uint64(slot)))
        # flat offset of each block voxel (C-order, D fastest) from the block's corner
        slot = 0
        for i in range(sh):
            for j in range(sw):
                row = (i * width + j) * depth
                for kk in range(sd):
                    offsets[slot] = row + kk
                    slot += 1
        corner = (h0 * width + w0) * depth + d0
        for slot in range(volume):
            key = keys[slot]
            rank = np.int32(0)
            for other in range(volume):
                rank += np.int32(keys[other] < key)
            x[corner + offsets[rank]] = y[corner + offsets[slot]]


@_njit(cache=True)
def _bucket_starts(xs, starts):
    """starts[j] = count of xs <= j / G for j = 0..G (G = len(starts) - 1, a power of two).

    Returns the most samples in one bucket (j / G, (j + 1) / G].
    """
    grid = starts.shape[0] - 1
    c = 0
    for j in range(grid + 1):
        edge = j / grid  # exact: G is a power of two
        while c < xs.shape[0] and xs[c] <= edge:
            c += 1
        starts[j] = c
    most = 0
    for j in range(grid):
        most = max(most, starts[j + 1] - starts[j])
    return most


@_njit(cache=True)
def _flip_cube(cube, y, parity, dims):
    """y = the flattened cube mirrored along each axis whose ``parity`` (h, w, d) is odd."""
    height, width, depth = dims[0], dims[1], dims[2]
    for h in range(height):
        sh = height - 1 - h if parity[0] else h
        for w in range(width):
            sw = width - 1 - w if parity[1] else w
            out = (h * width + w) * depth
            src = (sh * width + sw) * depth
            if parity[2]:
                for d in range(depth):
                    y[out + d] = cube[src + depth - 1 - d]
            else:
                for d in range(depth):
                    y[out + d] = cube[src + d]


@_njit(cache=True)
def _noise_mask(mask, paint, inpaint, dims):
    """mask = where painting puts noise: inside the boxes' union (in-painting) or outside it.

    paint: (5, 6) boxes, size 0 where the slot is unused.
    """
    width, depth = dims[1], dims[2]
    mask[:] = not inpaint
    for b in range(_PAINT_SLOTS):
        h0, w0, d0 = paint[b, 0], paint[b, 1], paint[b, 2]
        for h in range(h0, h0 + paint[b, 3]):
            for w in range(w0, w0 + paint[b, 4]):
                row = (h * width + w) * depth
                mask[row + d0 : row + d0 + paint[b, 5]] = inpaint


# The Bezier map is the reference's ``interp``: count = searchsorted(xs, q, right=True), index
# clamped to 1..P-1, weight clamped to [0, 1], all in float64. ``starts`` (_bucket_starts) narrows
# the search: for j / G <= q < (j + 1) / G the count is starts[j] plus the count of xs <= q among
# the bucket's samples. Two loops, chosen per cube (Numba/LLVM compile a loop-invariant choice
# inside the voxel loop 2-3x slower, so it is made outside):
# - _map_scan, when every bucket holds <= _SCAN samples (the default table): counts over the next
#   ``most`` samples in a loop of fixed length, free of mispredicted exits. Samples past the bucket
#   exceed q, and an index clamped to P - 1 only overcounts when every sample is <= q, where the
#   count's clamp to P - 1 gives the same result.
# - _map_bisect, for crowded tables (e.g. 100,000 samples): binary search within the bucket.
# Values outside [0, 1) bisect the whole table in both.


@_njit(cache=True)
def _map_scan(source, x, noise, mask, xs, ys, starts, most, nonlinear):
    """x = noise where ``mask``, else the Bezier map of ``source`` (or a copy if not nonlinear)."""
    points = xs.shape[0]
    grid = starts.shape[0] - 1
    for i in range(source.shape[0]):
        if mask[i]:
            x[i] = noise[i]
            continue
        if not nonlinear:
            x[i] = source[i]
            continue
        q = np.float64(source[i])
        if 0.0 <= q < 1.0:
            lo = starts[np.int64(q * grid)]  # exact: G is a power of two
            count = lo
            for t in range(most):
                count += xs[min(lo + t, points - 1)] <= q
        else:
            lo, hi = 0, points
            while lo < hi:
                mid = (lo + hi) >> 1
                if xs[mid] <= q:
                    lo = mid + 1
                else:
                    hi = mid
            count = lo
        upper = min(max(count, 1), points - 1)
        x0, x1 = xs[upper - 1], xs[upper]
        y0, y1 = ys[upper - 1], ys[upper]
        span = x1 - x0
        weight = (q - x0) / span if span > 0 else 1.0
        weight = min(max(weight, 0.0), 1.0)
        x[i] = y0 + weight * (y1 - y0)


@_njit(cache=True)
def _map_bisect(source, x, noise, mask, xs, ys, starts, nonlinear):
    """:func:`_map_scan` for tables with crowded buckets: binary search within the bucket."""
    points = xs.shape[0]
    grid = starts.shape[0] - 1
    for i in range(source.shape[0]):
        if mask[i]:
            x[i] = noise[i]
            continue
        if not nonlinear:
            x[i] = source[i]
            continue
        q = np.float64(source[i])
        lo, hi = 0, points
        if 0.0 <= q < 1.0:
            j = np.int64(q * grid)  # exact: G is a power of two
            lo, hi = starts[j], starts[j + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if xs[mid] <= q:
                lo = mid + 1
            else:
                hi = mid
        upper = min(max(lo, 1), points - 1)
        x0, x1 = xs[upper - 1], xs[upper]
        y0, y1 = ys[upper - 1], ys[upper]
        span = x1 - x0
        weight = (q - x0) / span if span > 0 else 1.0
        weight = min(max(weight, 0.0), 1.0)
        x[i] = y0 + weight * (y1 - y0)


@_njit(parallel=True, cache=True)
def _genesis_kernel(cubes, flags, draws, seeds, xs, ys, grid, paint, noise, x, y, dims, v_max):
    """All four transforms, one cube per ``prange`` iteration.

    cubes: (N, H*W*D) float32 input; flags: (N, 7) int64 (flip parity h, w, d, do_shuffle,
    do_nonlinear, do_paint, inpaint); draws: (N, K, 6) int64 words of the shuffle blocks; seeds:
    (N,) int64;
    xs, ys: (N, P) float64 Bezier tables; grid: buckets of their search accelerator (a power of
    two); paint: (N, 5, 6) int64 painting boxes, size 0 where the slot is unused; noise:
    (N, H*W*D) float32; x, y: (N, H*W*D) float32 outputs; dims: (H, W, D) int64; v_max: V, slots
    of the largest block.
    """
    for n in prange(cubes.shape[0]):
        # 1. flips: each axis mirrored once per odd number of flips along it.
        _flip_cube(cubes[n], y[n], flags[n, :3], dims)
        # 2. local pixel shuffling into x, reading from the flipped cube y.
        shuffled = flags[n, 3] != 0
        if shuffled:
            x[n, :] = y[n]
            keys = np.empty(v_max, dtype=np.uint32)
            offsets = np.empty(v_max, dtype=np.int64)
            _shuffle_cube(y[n], x[n], draws[n], seeds[n], dims, keys, offsets)
        # 3. + 4. Bezier map and painting, fused: a voxel painted with noise is not mapped.
        mask = np.empty(x.shape[1], dtype=np.bool_)
        if flags[n, 5] != 0:
            _noise_mask(mask, paint[n], flags[n, 6] != 0, dims)
        else:
            mask[:] = False
        nonlinear = flags[n, 4] != 0
        starts = np.empty(grid + 1, dtype=np.int64)
        most = _bucket_starts(xs[n], starts) if nonlinear else 0
        source = x[n] if shuffled else y[n]
        if most <= _SCAN:
            _map_scan(source, x[n], noise[n], mask, xs[n], ys[n], starts, most, nonlinear)
        else:
            _map_bisect(source, x[n], noise[n], mask, xs[n], ys[n], starts, nonlinear)


def apply_genesis_cpu(
    cubes: torch.Tensor, params: GenesisParams, config: GenesisTransformConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies drawn Models Genesis parameters with the Numba kernel (semantics of the reference).

    Args:
        cubes: (N, 1, H, W, D) float32, bfloat16 or float16 CPU tensor, values in [0, 1].
        params: Parameters from :func:`~kernels.genesis_params.sample_genesis_params` for this
            shape (moved to the CPU here). ``params.shuffle_boxes`` and ``params.shuffle_perm`` are
            never read (so never materialised): the kernel derives both.
        config: Only ``bezier_points`` is read (default config if None).

    Returns:
        (x, y): transformed input and target (the flipped cube), each (N, 1, H, W, D) with the
        dtype of ``cubes``, on the CPU.

    Raises:
        ValueError: for a wrong shape, dtype or device.
        RuntimeError: Numba is not installed.
    """
    from kernels.genesis import bezier_lookup  # genesis.py imports this module lazily

    if numba is None:
        raise RuntimeError(
            "the Models Genesis CPU kernel needs numba; install it or use the reference"
        )
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
            f"the Numba Models Genesis kernel takes float32, bfloat16 or float16 cubes, got "
            f"{cubes.dtype}; use the reference (ANATOMIX_KERNELS=torch) for other dtypes"
        )
    if cubes.device.type != "cpu":
        raise ValueError(f"the Numba Models Genesis kernel needs CPU tensors, got {cubes.device}")
    n, _, height, width, depth = (int(s) for s in cubes.shape)
    if n == 0 or height * width * depth == 0:
        return cubes.clone(), cubes.clone()
    params = params.to("cpu")

    flat = cubes.detach().reshape(n, -1).to(torch.float32).contiguous()
    flags = torch.zeros((n, _FLAGS), dtype=torch.int64)
    flags[:, :3] = (params.flips[:, :, None] == torch.arange(1, 4)).sum(1) % 2
    flags[:, 3] = params.do_shuffle.to(torch.int64)
    flags[:, 4] = params.do_nonlinear.to(torch.int64)
    flags[:, 5] = params.do_paint.to(torch.int64)
    flags[:, 6] = params.inpaint.to(torch.int64)
    paint = params.paint_boxes.to(torch.int64).clone()
    paint[..., 3:] *= params.paint_box_valid[..., None].to(torch.int64)  # unused slots: empty
    xs, ys = bezier_lookup(params.control, params.inverted, config.bezier_points)
    grid = min(1 << (4 * config.bezier_points - 1).bit_length(), _MAX_GRID)  # >= 4 buckets/sample
    dims = np.array([height, width, depth], dtype=np.int64)

    x = np.empty((n, height * width * depth), dtype=np.float32)
    y = np.empty_like(x)
    _genesis_kernel(
        flat.numpy(),
        flags.numpy(),
        params.shuffle_draws.to(torch.int64).contiguous().numpy(),
        params.shuffle_seed.to(torch.int64).contiguous().numpy(),
        xs.contiguous().numpy(),
        ys.contiguous().numpy(),
        grid,
        paint.contiguous().numpy(),
        params.noise.reshape(n, -1).to(torch.float32).contiguous().numpy(),
        x,
        y,
        dims,
        max(shuffle_block_volume((height, width, depth)), 1),
    )
    shape = tuple(cubes.shape)
    x_t = torch.from_numpy(x).view(shape).to(cubes.dtype)
    y_t = torch.from_numpy(y).view(shape).to(cubes.dtype)
    return x_t, y_t
