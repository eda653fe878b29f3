"""Models Genesis self-supervised transformations, batched: public op and PyTorch reference.

Zhou et al., "Models Genesis", MICCAI 2019 / MedIA 67:101840 (2021), arXiv:2004.07882; official
code MrGiovanni/ModelsGenesis (``pytorch/utils.py: generate_pair``). Written from the published
behaviour (docs/METHODS.md section 1.2), not copied.

Per cube of shape (1, H, W, D), values in [0, 1], depth last, in this order:

1. flip (each of up to 3 steps while u < 0.4) input *and* target along one axis;
2. local pixel shuffling (p 0.5): K blocks read from the pre-shuffle cube, voxels permuted
   within each block, written in block order (later blocks overwrite earlier ones);
3. non-linear intensity (p 0.9): a cubic Bezier lookup, increasing or (p 0.5) inverted;
4. painting (p 0.9): in-painting (p 0.2, noise boxes) or out-painting (noise everywhere except
   boxes where the cube from after step 3 is kept).

The target is the flipped original cube. Block and box sizes follow the release's inclusive
``random.randint`` ranges (shuffle blocks 1..dim//10 per axis, i.e. 1-6 x 1-6 x 1-3 for
64x64x32); see ``kernels/genesis_params.py`` for every range and for the Bezier table size (default
1,000 samples instead of the release's 100,000; configurable).

Flip axis: the official code draws the axis from {0, 1, 2} of a (1, H, W, D) array, so axis 0
(the channel) is a no-op and D is never flipped. ``flip_mode="faithful"`` reproduces that;
``flip_mode="corrected"`` (the default) draws from {H, W, D}.

Dispatch: :func:`transform_batch` draws :class:`GenesisParams` from a seeded CPU generator (or,
with ``draw_on="batch"``, from a generator on the batch's device seeded by it) and applies them
with :func:`apply_genesis`, which picks one of three implementations of the same semantics: the
Triton kernels of ``kernels/genesis_triton.py`` for CUDA tensors (float32, bfloat16, float16) when
Triton imports; the compiled Numba kernel of ``kernels/genesis_cpu.py`` for CPU tensors of those
dtypes when Numba imports; :func:`apply_genesis_reference` otherwise. Both kernels derive each
shuffle block's box from its drawn words and its permutation from the counter-based hash of
(cube seed, block, slot) where they apply the block, so neither ``params.shuffle_boxes`` nor the
(N, K, V) ``params.shuffle_perm`` is built on their paths; the reference alone materialises them
(on its device, on first use).
``ANATOMIX_KERNELS=triton`` forces the Triton kernels (a CPU tensor then needs
``TRITON_INTERPRET=1``), ``ANATOMIX_KERNELS=numba`` the Numba kernel (CPU tensors only),
``ANATOMIX_KERNELS=torch`` (alias ``reference``) the reference.
"""

from __future__ import annotations

import torch

from kernels._dispatch import kernel_mode
from kernels._dispatch import use_numba as _shared_use_numba
from kernels._dispatch import use_triton as _shared_use_triton
from kernels.genesis_params import (
    GenesisParams,
    GenesisTransformConfig,
    check_cube_shape,
    sample_genesis_params,
)

__all__ = [
    "GenesisParams",
    "GenesisTransformConfig",
    "apply_genesis",
    "apply_genesis_reference",
    "bezier_lookup",
    "device_generator",
    "interp",
    "sample_genesis_params",
    "transform_batch",
    "use_numba",
    "use_triton",
]


def interp(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Batched ``np.interp``: piecewise-linear lookup, constant beyond the ends.

    Args:
        x: (N, M) query points.
        xs: (N, P) sample positions, ascending along P (P >= 2).
        ys: (N, P) sample values.

    Returns:
        (N, M) interpolated values, dtype of ``ys``.
    """
    x = x.to(xs.dtype).contiguous()
    hi = torch.searchsorted(xs.contiguous(), x, right=True).clamp(1, xs.shape[-1] - 1)
    lo = hi - 1
    x0, x1 = xs.gather(-1, lo), xs.gather(-1, hi)
    y0, y1 = ys.gather(-1, lo), ys.gather(-1, hi)
    width = x1 - x0
    # Outside [xs[0], xs[-1]] the weight leaves [0, 1] and clamping gives the end values.
    w = torch.where(width > 0, (x - x0) / torch.where(width > 0, width, 1.0), 1.0).clamp(0, 1)
    return y0 + w * (y1 - y0)


def bezier_lookup(
    control: torch.Tensor, inverted: torch.Tensor, points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lookup table of the Models Genesis intensity curve.

    The cubic Bezier through (0, 0), (r1, r2), (r3, r4), (1, 1) is sampled at ``points`` evenly
    spaced parameter values. As released, the x samples are sorted ascending; the y samples are
    sorted too for an increasing map, or left in the released curve's parameter order (which runs
    from (1, 1) to (0, 0)) for an inverted map, i.e. y descending from 1 to 0. Both coordinates of
    such a curve are monotone in the parameter, so "unsorted" equals "sorted descending".

    Args:
        control: (N, 4) control values (r1, r2, r3, r4) in [0, 1].
        inverted: (N,) bool, True for the decreasing map.
        points: Number of samples P.

    Returns:
        (xs, ys), each (N, P) float64, xs ascending from 0 to 1.
    """
    s = torch.linspace(0.0, 1.0, points, dtype=torch.float64, device=control.device)
    b1, b2, b3 = 3 * s * (1 - s) ** 2, 3 * s**2 * (1 - s), s**3  # b0 multiplies (0, 0)
    c = control.to(torch.float64)
    bx = c[:, 0:1] * b1 + c[:, 2:3] * b2 + b3
    by = c[:, 1:2] * b1 + c[:, 3:4] * b2 + b3
    xs = torch.sort(bx, dim=-1).values
    ys = torch.sort(by, dim=-1).values
    ys = torch.where(inverted[:, None].to(ys.device), ys.flip(-1), ys)
    return xs, ys


def _flip_reference(cubes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W, D) -> each cube flipped along ``flips[n, s]`` (axis of (1, H, W, D))."""
    out = []
    for cube, axes in zip(cubes, flips.tolist(), strict=True):
        for axis in axes:
            if axis >= 0:  # axis 0, the channel, has size 1: flipping it changes nothing
                cube = torch.flip(cube, dims=(axis,))
        out.append(cube)
    return torch.stack(out)


def _block_flat_index(
    boxes: torch.Tensor, local: torch.Tensor, spatial: tuple[int, int, int]
) -> torch.Tensor:
    """Flat (H*W*D) index of voxel number ``local`` (C-order, D fastest) of each block.

    Args:
        boxes: (M, 6) rows (start h, w, d, size h, w, d), one per voxel.
        local: (M,) voxel numbers within the blocks.
        spatial: (H, W, D).
    """
    _, w_dim, d_dim = spatial
    sw, sd = boxes[:, 4], boxes[:, 5]
    i, j, k = local // (sw * sd), (local // sd) % sw, local % sd
    return ((boxes[:, 0] + i) * w_dim + boxes[:, 1] + j) * d_dim + boxes[:, 2] + k


def _shuffle_cube_reference(
    cube: torch.Tensor, boxes: torch.Tensor, perm: torch.Tensor
) -> torch.Tensor:
    """Local pixel shuffling of one (1, H, W, D) cube; blocks (K, 6), permutations (K, V).

    All reads come from the unshuffled cube, so they are gathered at once. Writes must keep the
    sequential rule "block k overwrites blocks < k": for every written voxel only the write with
    the largest (block, slot) order is kept, which makes the scatter free of collisions.
    """
    spatial = tuple(cube.shape[1:])
    slot = torch.arange(perm.shape[1], device=cube.device)
    used = slot < boxes[:, 3:].prod(-1, keepdim=True)  # (K, V)
    block, local = torch.nonzero(used, as_tuple=True)  # block-major order = write order
    voxel_boxes = boxes[block]
    dst = _block_flat_index(voxel_boxes, local, spatial)
    src = _block_flat_index(voxel_boxes, perm[block, local].to(torch.int64), spatial)
    order = torch.arange(dst.numel(), device=cube.device)
    last = torch.full((cube.numel(),), -1, dtype=torch.int64, device=cube.device)
    last = last.scatter_reduce(0, dst, order, reduce="amax")
    keep = last[dst] == order
    flat = cube.reshape(-1)
    out = flat.clone()
    out[dst[keep]] = flat[src[keep]]
    return out.view_as(cube)


def _box_union(boxes: torch.Tensor, valid: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """(N, B, 6) boxes and (N, B) validity -> (N, 1, H, W, D) bool union of the valid boxes."""
    inside = []
    for axis, size in enumerate(spatial):
        pos = torch.arange(size, device=boxes.device)
        start, length = boxes[..., axis : axis + 1], boxes[..., axis + 3 : axis + 4]
        inside.append((pos >= start) & (pos < start + length))  # (N, B, size)
    h, w, d = inside
    union = h[..., :, None, None] & w[..., None, :, None] & d[..., None, None, :]
    return (union & valid[..., None, None, None]).any(dim=1, keepdim=True)


def apply_genesis_reference(
    cubes: torch.Tensor, params: GenesisParams, config: GenesisTransformConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies drawn Models Genesis parameters; plain PyTorch, the oracle for other paths.

    Args:
        cubes: (N, 1, H, W, D) floating tensor, values in [0, 1], depth last.
        params: Parameters from :func:`sample_genesis_params` for this shape.
        config: Only ``bezier_points`` is read here (default config if None).

    Returns:
        (x, y): the transformed input and the target (the flipped cube), both (N, 1, H, W, D)
        with the dtype and device of ``cubes``.
    """
    config = config or GenesisTransformConfig()
    if tuple(cubes.shape) != tuple(params.noise.shape):
        raise ValueError(
            f"cubes of shape {tuple(cubes.shape)} do not match parameters drawn for "
            f"{tuple(params.noise.shape)}"
        )
    if not cubes.is_floating_point():
        raise ValueError(f"cubes must be a floating tensor, got {cubes.dtype}")
    params = params.to(cubes.device)
    spatial = tuple(cubes.shape[2:])

    # 1. flips: input and target alike.
    y = _flip_reference(cubes, params.flips)
    x = y.clone()

    # 2. local pixel shuffling, reading from the flipped (pre-shuffle) cube.
    shuffled = torch.nonzero(params.do_shuffle).flatten().tolist()
    perm = params.shuffle_perm if shuffled else None  # materialised (hash + sort) only if used
    for n in shuffled:
        x[n] = _shuffle_cube_reference(y[n], params.shuffle_boxes[n], perm[n])

    # 3. non-linear intensity.
    chosen = torch.nonzero(params.do_nonlinear).flatten()
    if chosen.numel():
        xs, ys = bezier_lookup(
            params.control[chosen], params.inverted[chosen], config.bezier_points
        )
        mapped = interp(x[chosen].reshape(chosen.numel(), -1), xs, ys)
        x[chosen] = mapped.to(x.dtype).view(-1, 1, *spatial)

    # 4. painting: noise inside (in-painting) or outside (out-painting) the union of boxes.
    # The release draws fresh noise per in-painting box; one U(0, 1) field per cube has the
    # same distribution, overlaps included.
    noise = params.noise.to(x.dtype)
    inside = _box_union(params.paint_boxes, params.paint_box_valid, spatial)
    inpaint = params.inpaint.view(-1, 1, 1, 1, 1)
    painted = torch.where(inpaint, torch.where(inside, noise, x), torch.where(inside, x, noise))
    x = torch.where(params.do_paint.view(-1, 1, 1, 1, 1), painted, x)
    return x, y


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether :func:`apply_genesis` runs the Triton kernels on ``tensor``.

    The shared rule of :mod:`kernels._dispatch` (``ANATOMIX_KERNELS=triton|torch`` forces a path;
    automatic: CUDA tensors when Triton imports), restricted in automatic mode to the kernel's
    dtypes. Forcing Triton where it cannot run raises ``RuntimeError``.
    """
    if kernel_mode() == "auto" and tensor.dtype not in _TRITON_DTYPES:
        return False
    return _shared_use_triton(tensor)


def use_numba(tensor: torch.Tensor) -> bool:
    """Whether :func:`apply_genesis` runs the Numba CPU kernel on ``tensor``.

    The shared rule of :mod:`kernels._dispatch` (``ANATOMIX_KERNELS=numba`` forces it; automatic:
    CPU tensors when Numba imports), restricted in automatic mode to the kernel's dtypes (float32,
    bfloat16, float16; others take the reference). Forcing it on a CUDA tensor or without Numba
    raises ``RuntimeError``.
    """
    if kernel_mode() == "auto" and tensor.dtype not in _TRITON_DTYPES:
        return False
    return _shared_use_numba(tensor)


def apply_genesis(
    cubes: torch.Tensor, params: GenesisParams, config: GenesisTransformConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies drawn Models Genesis parameters with the kernels or the reference (see above).

    Args:
        cubes: (N, 1, H, W, D) floating tensor, values in [0, 1], depth last.
        params: Parameters from :func:`sample_genesis_params` for this shape, any device.
        config: Only ``bezier_points`` is read (default config if None).

    Returns:
        (x, y): transformed input and target (the flipped cube), each (N, 1, H, W, D) with the
        dtype and device of ``cubes``; all paths agree (exactly, up to float rounding of the
        intensity map).
    """
    if use_triton(cubes):
        from kernels import genesis_triton  # imports triton: only where it is used

        return genesis_triton._genesis_triton(cubes, params.to(cubes.device), config)
    if use_numba(cubes):
        from kernels import genesis_cpu  # imports numba (slow): only where it is used

        return genesis_cpu.apply_genesis_cpu(cubes, params, config)
    return apply_genesis_reference(cubes, params, config)


def transform_batch(
    cubes: torch.Tensor,
    config: GenesisTransformConfig | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Models Genesis input/target pairs for a batch of cubes.

    Args:
        cubes: (N, 1, H, W, D) floating tensor, values in [0, 1], depth last (64x64x32 in the
            paper). Every spatial dim must be >= 14 with the default rates.
        config: Rates and sizes; None for the published defaults (with corrected flips).
        generator: CPU ``torch.Generator``, the only source of randomness: the same state gives
            the same batch. With ``config.draw_on == "batch"`` it gives one word only, the seed
            of a generator on the cubes' device that draws the parameters there
            (:func:`device_generator`); otherwise every parameter is drawn from it, on the CPU.

    Returns:
        (x, y): transformed input and target, each (N, 1, H, W, D), values in [0, 1].

    The shuffle boxes and in-block permutations are not materialised here: the Numba and Triton
    kernels derive them per block; the reference builds them on first use, on its device.
    """
    config = config or GenesisTransformConfig()
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got {generator.device}")
    check_cube_shape(cubes.shape, config)
    if config.draw_on == "batch":
        generator = device_generator(generator, cubes.device)
    params = sample_genesis_params(cubes.shape, config, generator)
    return apply_genesis(cubes, params, config)


def device_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with one 63-bit word drawn from the CPU ``generator``.

    What ``draw_on="batch"`` draws from: the parameters come out where the batch is (no transfer,
    no CPU time for the 10,000 blocks' words and the noise field), and they stay reproducible
    from the caller's generator, i.e. from (seed, epoch, step, rank) in training. A CPU
    ``device`` gives a CPU generator, so the path also runs (and is tested) without a GPU.
    """
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    return torch.Generator(device=torch.device(device)).manual_seed(seed)
