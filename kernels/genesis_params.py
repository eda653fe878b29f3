"""Random parameters of the Models Genesis transformations, drawn up front as small tensors.

Zhou et al., "Models Genesis", MICCAI 2019 / MedIA 2021, arXiv:2004.07882; official code
MrGiovanni/ModelsGenesis (``pytorch/utils.py``). This module holds the configuration and the
sampling of every random choice of one batch; ``kernels/genesis.py`` applies them. Because all
randomness lives in a :class:`GenesisParams`, the PyTorch reference and a future Triton kernel
consume identical parameters and their outputs can be compared exactly.

Integer ranges follow the official code, which uses Python's ``random.randint(a, b)``: both ends
are **inclusive**. So a shuffle block side is 1..dim//10 (1-6 x 1-6 x 1-3 for 64x64x32), an
in-painting side is dim//6..dim//3 and an out-painting side is dim - (3*dim//7..4*dim//7).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

FLIP_MODES = ("faithful", "corrected")
_MAX_FLIPS = 3  # the official loop flips at most three times
_PAINT_SLOTS = 5  # in-painting: up to 5 boxes; out-painting: 1 + up to 4
_BORDER = 3  # painting boxes keep at least this many voxels to every face


@dataclass(frozen=True)
class GenesisTransformConfig:
    """Probabilities and sizes of the Models Genesis transformations.

    Attributes:
        flip_rate: Probability of each of up to three successive flips (official 0.4).
        local_rate: Probability of local pixel shuffling (official 0.5).
        nonlinear_rate: Probability of the Bezier intensity mapping (official 0.9).
        paint_rate: Probability of painting (official 0.9).
        inpaint_rate: Given painting, probability of in-painting; otherwise out-painting (0.2).
        flip_mode: ``"faithful"`` draws the axis from {channel, H, W} exactly as released: the
            channel flip is a no-op and D is never flipped. ``"corrected"`` (default) draws from
            {H, W, D}, which is what the code evidently meant.
        shuffle_blocks: Number of shuffled blocks per cube (official 10,000).
        bezier_points: Samples of the Bezier curve used as a piecewise-linear lookup table.
            The release uses 100,000; the default 1,000 is 3-5x faster on a CPU and its mapping
            differs from the 100,000-sample one by at most 2.4e-5 (measured over 2,000 random
            curves), far below one HU (1/2000 after the [-1000, 1000] HU -> [0, 1] scaling). Set
            100_000 to use the release's table.
        paint_box_rate: Probability of each further painting box (official 0.95). In-painting
            draws it for its first box too (the official loop tests ``rand < 0.95`` before every
            box, so 5 % of in-painted cubes get no box); out-painting always has its first box.
    """

    flip_rate: float = 0.4
    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    flip_mode: str = "corrected"
    shuffle_blocks: int = 10_000
    bezier_points: int = 1_000
    paint_box_rate: float = 0.95

    def __post_init__(self) -> None:
        if self.flip_mode not in FLIP_MODES:
            raise ValueError(f"flip_mode must be one of {FLIP_MODES}, got {self.flip_mode!r}")
        for name in ("flip_rate", "local_rate", "nonlinear_rate", "paint_rate", "inpaint_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if not 0.0 <= self.paint_box_rate <= 1.0:
            raise ValueError(f"paint_box_rate must lie in [0, 1], got {self.paint_box_rate}")
        if self.shuffle_blocks < 0:
            raise ValueError(f"shuffle_blocks must be >= 0, got {self.shuffle_blocks}")
        if self.bezier_points < 2:
            raise ValueError(f"bezier_points must be >= 2, got {self.bezier_points}")


@dataclass
class GenesisParams:
    """Every random choice of one batch of N cubes of shape (1, H, W, D).

    Tensors are drawn for every cube whether or not its transform fires (fixed shapes keep the
    stream of random numbers, and so the batch, independent of the outcomes). Boxes are rows
    ``(start_h, start_w, start_d, size_h, size_w, size_d)`` in voxels of the flipped cube.

    Attributes:
        flips: (N, 3) int64. Axis of the (1, H, W, D) cube flipped at each step (0 = channel,
            a no-op, 1 = H, 2 = W, 3 = D), or -1 where the loop stopped. Steps apply in order.
        do_shuffle: (N,) bool. Local pixel shuffling fires.
        shuffle_boxes: (N, K, 6) int64. K = ``shuffle_blocks`` blocks, applied in order k = 0..K-1.
        shuffle_perm: (N, K, V) int16 (int32 if V > 32767), V = (H//10)*(W//10)*(D//10). For
            a block with v voxels, entries 0..v-1 are a permutation of 0..v-1: output voxel l of
            the block (C-order, D fastest) takes the pre-shuffle value at block voxel
            ``shuffle_perm[n, k, l]``. Entries >= v are unused. It is the stable argsort of
            U(0, 1) keys (unused slots keyed last), so it is uniform; storing the permutation
            rather than the keys spares a kernel the sort.
        do_nonlinear: (N,) bool. The Bezier intensity mapping fires.
        control: (N, 4) float64. (r1, r2, r3, r4): control points (0,0), (r1,r2), (r3,r4), (1,1).
        inverted: (N,) bool. The mapping decreases (1 -> 0) instead of increasing.
        do_paint: (N,) bool. Painting fires.
        inpaint: (N,) bool. In-painting (True) or out-painting (False), given painting.
        paint_boxes: (N, 5, 6) int64. In-painting: noise boxes; out-painting: kept boxes.
        paint_box_valid: (N, 5) bool. Which slots are used (a prefix), given painting.
        noise: (N, 1, H, W, D) float32. U(0, 1) noise used by either kind of painting.
    """

    flips: torch.Tensor
    do_shuffle: torch.Tensor
    shuffle_boxes: torch.Tensor
    shuffle_perm: torch.Tensor
    do_nonlinear: torch.Tensor
    control: torch.Tensor
    inverted: torch.Tensor
    do_paint: torch.Tensor
    inpaint: torch.Tensor
    paint_boxes: torch.Tensor
    paint_box_valid: torch.Tensor
    noise: torch.Tensor

    def to(self, device: torch.device | str) -> GenesisParams:
        """Returns a copy with every tensor on ``device``."""
        return GenesisParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _randint(
    generator: torch.Generator, low: torch.Tensor, high: torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """Uniform integers in [low, high], both inclusive (Python's ``random.randint``).

    ``low`` and ``high`` are int64 tensors broadcastable to ``shape``, so every draw may have its
    own range. Float64 uniforms keep ``floor(u * n)`` below n for any practical n.
    """
    u = torch.rand(shape, dtype=torch.float64, generator=generator)
    span = torch.clamp(high - low + 1, min=1).to(torch.float64)  # empty ranges give `low`
    offset = torch.minimum(torch.floor(u * span), span - 1).to(torch.int64)
    return low + offset


def _prefix_while(u: torch.Tensor, rate: float) -> torch.Tensor:
    """(N, S) uniforms -> (N, S) bool: step s happens while every u[:, :s+1] < rate."""
    return torch.cumprod((u < rate).to(torch.int64), dim=1).bool()


def check_cube_shape(shape: tuple[int, ...] | torch.Size, config: GenesisTransformConfig) -> None:
    """Raises ``ValueError`` unless a batch of this shape can take the enabled transforms.

    Args:
        shape: (N, 1, H, W, D).
        config: The transformation settings (only enabled transforms impose sizes).
    """
    if len(shape) != 5 or shape[1] != 1:
        raise ValueError(f"expected cubes of shape (N, 1, H, W, D), got {tuple(shape)}")
    dims = tuple(int(s) for s in shape[2:])
    if config.local_rate > 0 and min(dims) < 10:
        raise ValueError(
            f"local pixel shuffling needs H, W, D >= 10 (blocks of dim//10); got {dims}"
        )
    if config.paint_rate > 0 and config.inpaint_rate > 0 and min(dims) < 9:
        raise ValueError(f"in-painting needs H, W, D >= 9 (3-voxel margins); got {dims}")
    if config.paint_rate > 0 and config.inpaint_rate < 1 and min(dims) < 14:
        raise ValueError(f"out-painting needs H, W, D >= 14 (3-voxel margins); got {dims}")


def sample_genesis_params(
    shape: tuple[int, ...] | torch.Size,
    config: GenesisTransformConfig,
    generator: torch.Generator,
) -> GenesisParams:
    """Draws all random parameters of one batch from ``generator`` alone.

    The same generator state always gives the same parameters; the order of draws is fixed.

    Args:
        shape: Batch shape (N, 1, H, W, D).
        config: Probabilities and sizes.
        generator: A CPU ``torch.Generator``; the only source of randomness.

    Returns:
        The parameters, on the CPU (see :class:`GenesisParams` for shapes and meaning).
    """
    check_cube_shape(shape, config)
    n = int(shape[0])
    dims = torch.tensor([int(s) for s in shape[2:]], dtype=torch.int64)  # (H, W, D)
    g = generator

    # 1. flips: the official loop tests rand < flip_rate before each of up to three flips.
    flip_on = _prefix_while(torch.rand((n, _MAX_FLIPS), generator=g), config.flip_rate)
    first_axis = 0 if config.flip_mode == "faithful" else 1
    axis = torch.randint(first_axis, first_axis + 3, (n, _MAX_FLIPS), generator=g)
    flips = torch.where(flip_on, axis, torch.full_like(axis, -1))

    # 2. local pixel shuffling: sizes 1..dim//10, starts 0..dim-size (block fully inside).
    k = config.shuffle_blocks
    do_shuffle = torch.rand(n, generator=g) < config.local_rate
    shuffle_boxes, shuffle_perm = sample_shuffle_blocks(g, dims, n, k)

    # 3. non-linear intensity: control points r1..r4 ~ U(0, 1); inverted with p 0.5.
    do_nonlinear, control, inverted = sample_nonlinear(g, n, config.nonlinear_rate)

    # 4. painting: box sides drawn per kind, then starts keeping 3 voxels to every face.
    do_paint, inpaint, paint_boxes, paint_box_valid = sample_painting(g, dims, n, config)
    noise = torch.rand(tuple(int(s) for s in shape), generator=g)

    return GenesisParams(
        flips=flips,
        do_shuffle=do_shuffle,
        shuffle_boxes=shuffle_boxes,
        shuffle_perm=shuffle_perm,
        do_nonlinear=do_nonlinear,
        control=control,
        inverted=inverted,
        do_paint=do_paint,
        inpaint=inpaint,
        paint_boxes=paint_boxes,
        paint_box_valid=paint_box_valid,
        noise=noise,
    )


def sample_shuffle_blocks(
    g: torch.Generator, dims: torch.Tensor, n: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local-shuffle blocks for ``n`` samples of spatial size ``dims`` (S axes), ``k`` each.

    Sizes are 1..dim//10 per axis, starts 0..dim-size (the block lies inside). Returns boxes
    (n, k, 2S) = (starts, sizes) and in-block permutations (n, k, V), V = prod(dim//10): the
    stable argsort of U(0, 1) keys with unused slots keyed last, so entries 0..v-1 of a block of
    v voxels are a uniform permutation of 0..v-1.
    """
    s = len(dims)
    max_block = torch.clamp(dims // 10, min=1)
    sizes = _randint(g, torch.ones(s, dtype=torch.int64), max_block, (n, k, s))
    starts = _randint(g, torch.zeros_like(sizes), dims - sizes, (n, k, s))
    v_max = int(max_block.prod())
    keys = torch.rand((n, k, v_max), generator=g)
    slot = torch.arange(v_max)
    keys = torch.where(slot < sizes.prod(-1, keepdim=True), keys, 2.0)  # unused slots sort last
    perm_dtype = torch.int16 if v_max <= torch.iinfo(torch.int16).max else torch.int32
    perm = torch.argsort(keys, dim=-1, stable=True).to(perm_dtype)
    return torch.cat([starts, sizes], dim=-1), perm


def sample_nonlinear(g: torch.Generator, n: int, rate: float):
    """Bézier map draws: whether it fires, control points r1..r4 ~ U(0, 1), inverted (p 0.5)."""
    do_nonlinear = torch.rand(n, generator=g) < rate
    control = torch.rand((n, 4), dtype=torch.float64, generator=g)
    inverted = torch.rand(n, generator=g) < 0.5
    return do_nonlinear, control, inverted


def sample_painting(g: torch.Generator, dims: torch.Tensor, n: int, config):
    """Painting draws for S spatial axes: (do_paint, inpaint, boxes (n, 5, 2S), valid (n, 5)).

    In-painting tests ``u < paint_box_rate`` before every box, out-painting always keeps its
    first; sides are dim//6..dim//3 (in) or dim - (3·dim//7..4·dim//7) (out), placed
    ``_BORDER`` voxels from every face. ``config`` needs paint_rate, inpaint_rate, paint_box_rate.
    """
    s = len(dims)
    do_paint = torch.rand(n, generator=g) < config.paint_rate
    inpaint = torch.rand(n, generator=g) < config.inpaint_rate
    more = _prefix_while(torch.rand((n, _PAINT_SLOTS), generator=g), config.paint_box_rate)
    out_valid = torch.cat([torch.ones((n, 1), dtype=torch.bool), more[:, :-1]], dim=1)
    valid = torch.where(inpaint[:, None], more, out_valid)
    in_sizes = _randint(g, dims // 6, dims // 3, (n, _PAINT_SLOTS, s))
    out_sizes = dims - _randint(g, 3 * dims // 7, 4 * dims // 7, (n, _PAINT_SLOTS, s))
    sizes = torch.where(inpaint[:, None, None], in_sizes, out_sizes)
    starts = _randint(g, torch.full_like(sizes, _BORDER), dims - sizes - _BORDER, sizes.shape)
    return do_paint, inpaint, torch.cat([starts, sizes], dim=-1), valid
