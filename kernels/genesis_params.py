"""Random parameters of the Models Genesis transformations, drawn up front as small tensors.

Zhou et al., "Models Genesis", MICCAI 2019 / MedIA 2021, arXiv:2004.07882; official code
MrGiovanni/ModelsGenesis (``pytorch/utils.py``). This module holds the configuration and the
sampling of every random choice of one batch; ``kernels/genesis.py`` applies them. Because all
randomness lives in a :class:`GenesisParams`, the PyTorch reference and a future Triton kernel
consume identical parameters and their outputs can be compared exactly.

Integer ranges follow the official code, which uses Python's ``random.randint(a, b)``: both ends
are **inclusive**. So a shuffle block side is 1..dim//10 (1-6 x 1-6 x 1-3 for 64x64x32), an
in-painting side is dim//6..dim//3 and an out-painting side is dim - (3*dim//7..4*dim//7).

Local shuffling is drawn compactly and derived where it is used. Each block gets six 32-bit
words (``shuffle_draws``), which integer arithmetic turns into its box
(:func:`shuffle_boxes_from_draws`). In-block permutations are not drawn at all: each cube gets one
31-bit ``shuffle_seed`` and the permutation of block k is the argsort of counter-based hash keys
``key(seed, k, l)`` over its slots l (:func:`block_permutations`). Any implementation (these
PyTorch functions, the Numba kernel of ``kernels/genesis_cpu.py``, a GPU kernel) computes the same
box and permutation of any block on its own, without a stateful RNG and without the (N, K, V)
table, which was most of the cost of sampling a batch; :class:`GenesisParams` materialises both
lazily for the paths that read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

FLIP_MODES = ("faithful", "corrected")
DRAW_ON = ("cpu", "batch")
_MAX_FLIPS = 3  # the official loop flips at most three times
_PAINT_SLOTS = 5  # in-painting: up to 5 boxes; out-painting: 1 + up to 4
_BORDER = 3  # painting boxes keep at least this many voxels to every face

# Counter-based hash of the shuffle permutations (see block_permutations). Constants of
# MurmurHash3's 32-bit finaliser (Appleyard, public domain) and the golden-ratio salt.
MASK32 = 0xFFFFFFFF
FMIX_C1 = 0x85EBCA6B
FMIX_C2 = 0xC2B2AE35
SEED_SALT = 0x9E3779B9


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
            The release uses 100,000; the default 1,000 is 3-5x faster on a CPU. Its mapping
            differs from the 100,000-sample one, over every input in [0, 1] (both tables'
            breakpoints evaluated), by at most 5.4e-4 over 3 x 2,000 random curves (median 5e-7,
            99 % of curves under 4e-5) and by up to 1.2e-3 for extreme control points such as
            (0, 1, 0, 1): near a vertical tangent the coarse table's chord is off by up to ~0.4
            of its step in y there (3/999 at most). That is at most ~1 HU for random curves and
            2.3 HU at worst (one HU is 1/2000 after the [-1000, 1000] HU -> [0, 1] scaling), at
            few voxels. ``tests/kernels/test_genesis_bezier.py`` checks these figures. Set
            100_000 to use the release's table.
        paint_box_rate: Probability of each further painting box (official 0.95). In-painting
            draws it for its first box too (the official loop tests ``rand < 0.95`` before every
            box, so 5 % of in-painted cubes get no box); out-painting always has its first box.
        draw_on: Where :func:`kernels.genesis.transform_batch` draws the parameters. ``"cpu"``
            (default): from the caller's CPU generator, the parameters every release so far drew.
            ``"batch"``: on the batch's device, from a generator there seeded with one 63-bit word
            of the caller's generator, so still reproducible from (seed, epoch, step, rank). A CUDA
            generator (Philox) cannot reproduce the CPU stream (Mersenne Twister), so ``"batch"``
            gives other parameters than ``"cpu"`` for the same seed, with the same distributions:
            the draws pass the same uniforms through the same code.
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
    draw_on: str = "cpu"

    def __post_init__(self) -> None:
        if self.flip_mode not in FLIP_MODES:
            raise ValueError(f"flip_mode must be one of {FLIP_MODES}, got {self.flip_mode!r}")
        if self.draw_on not in DRAW_ON:
            raise ValueError(f"draw_on must be one of {DRAW_ON}, got {self.draw_on!r}")
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
        shuffle_draws: (N, K, 6) int64 32-bit words, K = ``shuffle_blocks``: the drawn
            randomness of the shuffle blocks, turned into boxes by :func:`shuffle_boxes_from_draws`.
        shuffle_seed: (N,) int64 in [0, 2**31). Seeds the hash keys of every in-block
            permutation of the cube (:func:`block_permutations`).
        shuffle_boxes: (property) (N, K, 6) int64 blocks, applied in order k = 0..K-1.
        shuffle_perm: (property) (N, K, V) int16 (int32 if V > 32767), V = (H//10)*(W//10)*
            (D//10). For a block with v voxels, entries 0..v-1 are a permutation of 0..v-1: output
            voxel l of the block (C-order, D fastest) takes the pre-shuffle value at block voxel
            ``shuffle_perm[n, k, l]``. Entries >= v are unused.

    The two properties are computed on first access, on the device of the draws and seeds, and
    cached (do not modify ``shuffle_draws`` or ``shuffle_seed`` in place afterwards). The Numba CPU
    and Triton kernels need neither: they derive each block's box and permutation where they apply
    it, which spares sampling a batch most of its cost (the boxes' arithmetic over N * K * 6
    values, and the (N, K, V) hash-and-sort of the permutations).
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
    shuffle_draws: torch.Tensor
    shuffle_seed: torch.Tensor
    do_nonlinear: torch.Tensor
    control: torch.Tensor
    inverted: torch.Tensor
    do_paint: torch.Tensor
    inpaint: torch.Tensor
    paint_boxes: torch.Tensor
    paint_box_valid: torch.Tensor
    noise: torch.Tensor
    _boxes: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _perm: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def shuffle_boxes(self) -> torch.Tensor:
        """(N, K, 6) shuffle blocks (starts, sizes), materialised on first use."""
        if self._boxes is None or self._boxes.device != self.shuffle_draws.device:
            self._boxes = shuffle_boxes_from_draws(self.shuffle_draws, self.noise.shape[2:])
        return self._boxes

    @property
    def shuffle_perm(self) -> torch.Tensor:
        """(N, K, V) in-block permutations, materialised on first use (see the class doc)."""
        if self._perm is None or self._perm.device != self.shuffle_seed.device:
            v_max = shuffle_block_volume(self.noise.shape[2:])
            self._perm = block_permutations(self.shuffle_seed, self.shuffle_boxes, v_max)
        return self._perm

    def to(self, device: torch.device | str) -> GenesisParams:
        """Returns a copy with every tensor (and materialised box or permutation) on ``device``;
        ``self`` if they are all there already (like ``Tensor.to``), which keeps what was
        materialised cached across calls."""
        device = torch.device(device)
        tensors = [getattr(self, f.name) for f in fields(self) if f.init]
        if all(_same_device(t.device, device) for t in tensors):
            return self
        moved = GenesisParams(
            **{f.name: getattr(self, f.name).to(device) for f in fields(self) if f.init}
        )
        if self._boxes is not None:
            moved._boxes = self._boxes.to(device)
        if self._perm is not None:
            moved._perm = self._perm.to(device)
        return moved


def _same_device(have: torch.device, want: torch.device) -> bool:
    """Whether a tensor on ``have`` is on ``want`` (``cuda`` without an index means the current)."""
    if have.type != want.type:
        return False
    return want.index is None or have.index == want.index


def _randint(
    generator: torch.Generator, low: torch.Tensor, high: torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """Uniform integers in [low, high], both inclusive (Python's ``random.randint``).

    ``low`` and ``high`` are int64 tensors (or ints) broadcastable to ``shape``, so every draw may
    have its own range. A uniform 32-bit word r maps to ``low + (r * span) >> 32`` (Lemire's
    multiply-shift): each value's probability is within span / 2**32 of 1 / span, and integer
    arithmetic keeps this cheap for the 10,000 shuffle blocks per cube. Spans must be < 2**31.
    """
    span = torch.as_tensor(high) + (1 - torch.as_tensor(low))
    span = span.clamp_(min=1)  # empty ranges give `low`
    word = torch.randint(
        0, 2**32, shape, generator=generator, dtype=torch.int64, device=generator.device
    )
    return word.mul_(span).bitwise_right_shift_(32).add_(low)


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
        generator: A ``torch.Generator``; the only source of randomness. Every draw happens on
            its device: a CPU generator gives today's (and every earlier release's) parameters;
            a CUDA one draws there with the same code, so the same distributions from another
            stream (CUDA's Philox cannot reproduce the CPU's Mersenne Twister).

    Returns:
        The parameters, on the generator's device (see :class:`GenesisParams` for shapes and
        meaning).
    """
    check_cube_shape(shape, config)
    n = int(shape[0])
    g = generator
    dims = torch.tensor([int(s) for s in shape[2:]], dtype=torch.int64, device=g.device)  # H W D

    # 1. flips: the official loop tests rand < flip_rate before each of up to three flips.
    flip_on = _prefix_while(
        torch.rand((n, _MAX_FLIPS), generator=g, device=g.device), config.flip_rate
    )
    first_axis = 0 if config.flip_mode == "faithful" else 1
    axis = torch.randint(first_axis, first_axis + 3, (n, _MAX_FLIPS), generator=g, device=g.device)
    flips = torch.where(flip_on, axis, torch.full_like(axis, -1))

    # 2. local pixel shuffling: sizes 1..dim//10, starts 0..dim-size (block fully inside).
    k = config.shuffle_blocks
    do_shuffle = torch.rand(n, generator=g, device=g.device) < config.local_rate
    shuffle_draws, shuffle_seed = sample_shuffle_draws(g, n, k, len(dims))

    # 3. non-linear intensity: control points r1..r4 ~ U(0, 1); inverted with p 0.5.
    do_nonlinear, control, inverted = sample_nonlinear(g, n, config.nonlinear_rate)

    # 4. painting: box sides drawn per kind, then starts keeping 3 voxels to every face.
    do_paint, inpaint, paint_boxes, paint_box_valid = sample_painting(g, dims, n, config)
    noise = torch.rand(tuple(int(s) for s in shape), generator=g, device=g.device)

    return GenesisParams(
        flips=flips,
        do_shuffle=do_shuffle,
        shuffle_draws=shuffle_draws,
        shuffle_seed=shuffle_seed,
        do_nonlinear=do_nonlinear,
        control=control,
        inverted=inverted,
        do_paint=do_paint,
        inpaint=inpaint,
        paint_boxes=paint_boxes,
        paint_box_valid=paint_box_valid,
        noise=noise,
    )


def sample_shuffle_draws(
    g: torch.Generator, n: int, k: int, s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The drawn randomness of local shuffling: ``k`` blocks for each of ``n`` samples, S axes.

    Returns (draws, seed): (n, k, 2S) int64 uniform 32-bit words (``[..., :S]`` place the
    blocks, ``[..., S:]`` size them; :func:`shuffle_boxes_from_draws`) and one permutation seed
    per sample, (n,) int64 in [0, 2**31) (:func:`block_permutations`).
    """
    words = dict(generator=g, dtype=torch.int64, device=g.device)
    draws = torch.randint(0, 2**32, (n, k, 2 * s), **words)
    seed = torch.randint(0, 2**31, (n,), **words)
    return draws, seed


def shuffle_boxes_from_draws(draws: torch.Tensor, spatial) -> torch.Tensor:
    """Shuffle blocks from their 32-bit words, :func:`_randint`'s multiply-shift rule.

    With dims = ``spatial`` (S of them) and words w: size = 1 + (w[S + a] * max(dim // 10, 1)) >> 32
    (1..dim//10 per axis), then start = (w[a] * (dim + 1 - size)) >> 32 (0..dim-size: the block
    lies inside). Integer arithmetic, so every implementation (this one, the Numba kernel) gets
    the same boxes.

    Args:
        draws: (N, K, 2S) int64 words in [0, 2**32).
        spatial: The S spatial dims, each < 2**31.

    Returns:
        (N, K, 2S) int64 rows (starts, sizes), on the device of ``draws``.
    """
    s = draws.shape[-1] // 2
    dims = torch.tensor([int(d) for d in spatial], dtype=torch.int64, device=draws.device)
    max_block = torch.clamp(dims // 10, min=1)
    boxes = draws.clone()
    sizes, starts = boxes[..., s:], boxes[..., :s]
    sizes.mul_(max_block).bitwise_right_shift_(32).add_(1)
    starts.mul_(dims + 1 - sizes).bitwise_right_shift_(32)
    return boxes


def sample_shuffle_blocks(
    g: torch.Generator, dims: torch.Tensor, n: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local-shuffle blocks for ``n`` samples of spatial size ``dims`` (S axes), ``k`` each.

    Sizes are 1..dim//10 per axis, starts 0..dim-size (the block lies inside). Returns boxes
    (n, k, 2S) = (starts, sizes) and one permutation seed per sample, (n,) int64 in [0, 2**31);
    :func:`block_permutations` turns them into the in-block permutations. Draws exactly what
    :func:`sample_shuffle_draws` draws.
    """
    draws, seed = sample_shuffle_draws(g, n, k, len(dims))
    return shuffle_boxes_from_draws(draws, dims.tolist()), seed


def shuffle_block_volume(spatial) -> int:
    """V, the largest shuffle block's voxel count: prod(max(dim // 10, 1)) over the spatial dims."""
    return math.prod(max(int(d) // 10, 1) for d in spatial)


def _mul32_(h: torch.Tensor, c: int) -> torch.Tensor:
    """In place: h <- (h * c) mod 2**32, for int64 ``h`` in [0, 2**32) and c in [2**31, 2**32).

    Never overflows int64: h * c = h * (c - 2**31) + h * 2**31, the first product is < 2**63 and
    the second is (h & 1) << 31 modulo 2**32.
    """
    odd = (h & 1) << 31
    return h.mul_(c - 2**31).add_(odd).bitwise_and_(MASK32)


def fmix32_(h: torch.Tensor) -> torch.Tensor:
    """In place: MurmurHash3's 32-bit finaliser on int64 values in [0, 2**32).

    A bijection of 32-bit words in which every input bit flips every output bit with probability
    close to 1/2. Only right shifts of non-negative values and masked products: exact in int64.
    """
    h ^= h >> 16
    _mul32_(h, FMIX_C1)
    h ^= h >> 13
    _mul32_(h, FMIX_C2)
    h ^= h >> 16
    return h


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """:func:`fmix32_` on a copy of ``h`` (int64 values in [0, 2**32))."""
    return fmix32_(h.to(torch.int64, copy=True))


def block_hash(shuffle_seed: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """b(seed, k) = fmix32(fmix32(seed ^ SEED_SALT) ^ k): the per-block stem of the keys.

    Args:
        shuffle_seed: (...) int64 seeds in [0, 2**31).
        block: int64 block indices k in [0, 2**32), broadcastable against ``shuffle_seed``.
    """
    return fmix32_(fmix32_((shuffle_seed & MASK32) ^ SEED_SALT) ^ (block & MASK32))


def block_permutations(
    shuffle_seed: torch.Tensor, shuffle_boxes: torch.Tensor, v_max: int
) -> torch.Tensor:
    """In-block permutations of the local pixel shuffling, from a counter-based hash.

    The key of slot l of block k of a sample with seed s is the 32-bit word

        key(s, k, l) = fmix32(b(s, k) ^ l),   b(s, k) = fmix32(fmix32(s ^ 0x9E3779B9) ^ k),

    with ``fmix32`` MurmurHash3's finaliser (:func:`fmix32`). A block of v voxels is permuted by
    the argsort of the keys of its slots 0..v-1: output voxel l takes block voxel ``perm[l]``.
    Since fmix32 is a bijection, the keys of one block are distinct (the sort has no ties) and,
    being well mixed, their order is a uniform random permutation (tested in
    ``tests/kernels/test_genesis_cpu.py``). Why a hash rather than keys drawn from the generator:
    any implementation computes the same permutation of any block from (s, k) alone, in any
    order and without a stateful RNG (issue #5), so a CPU or GPU kernel can sort a block's keys
    where it uses them instead of reading an (N, K, V) table drawn and sorted up front.

    Args:
        shuffle_seed: (N,) int64 seeds in [0, 2**31).
        shuffle_boxes: (N, K, 2S) int64 rows (starts, sizes) over S spatial axes.
        v_max: V, the slots per block (:func:`shuffle_block_volume`), >= every block's volume.

    Returns:
        (N, K, V) int16 (int32 if V > 32767) on the device of the inputs: entries 0..v-1 of a
        block of v voxels are a permutation of 0..v-1; slots >= v are keyed last (entries unused).
    """
    n, k = shuffle_boxes.shape[:2]
    s = shuffle_boxes.shape[-1] // 2
    device = shuffle_boxes.device
    perm_dtype = torch.int16 if v_max <= torch.iinfo(torch.int16).max else torch.int32
    if n * k * v_max == 0:
        return torch.zeros((n, k, v_max), dtype=perm_dtype, device=device)
    blocks = torch.arange(k, dtype=torch.int64, device=device)
    stem = block_hash(shuffle_seed.to(device=device, dtype=torch.int64)[:, None], blocks)
    slot = torch.arange(v_max, dtype=torch.int64, device=device)
    keys = torch.empty((n, k, v_max), dtype=torch.int64, device=device)
    rows = max(1, 2**22 // (k * v_max))  # chunks of ~4M keys: fewer, cache-friendlier passes
    for i in range(0, n, rows):
        chunk = keys[i : i + rows]
        torch.bitwise_xor(stem[i : i + rows, :, None], slot, out=chunk)
        fmix32_(chunk)
    volume = shuffle_boxes[..., s:].prod(-1, keepdim=True)
    keys.masked_fill_(slot >= volume, MASK32 + 1)  # unused slots sort last
    return torch.argsort(keys, dim=-1, stable=True).to(perm_dtype)


def sample_nonlinear(g: torch.Generator, n: int, rate: float):
    """Bézier map draws: whether it fires, control points r1..r4 ~ U(0, 1), inverted (p 0.5)."""
    do_nonlinear = torch.rand(n, generator=g, device=g.device) < rate
    control = torch.rand((n, 4), dtype=torch.float64, generator=g, device=g.device)
    inverted = torch.rand(n, generator=g, device=g.device) < 0.5
    return do_nonlinear, control, inverted


def sample_painting(g: torch.Generator, dims: torch.Tensor, n: int, config):
    """Painting draws for S spatial axes: (do_paint, inpaint, boxes (n, 5, 2S), valid (n, 5)).

    In-painting tests ``u < paint_box_rate`` before every box, out-painting always keeps its
    first; sides are dim//6..dim//3 (in) or dim - (3·dim//7..4·dim//7) (out), placed
    ``_BORDER`` voxels from every face. ``config`` needs paint_rate, inpaint_rate, paint_box_rate.
    """
    s = len(dims)
    dims = dims.to(g.device)
    do_paint = torch.rand(n, generator=g, device=g.device) < config.paint_rate
    inpaint = torch.rand(n, generator=g, device=g.device) < config.inpaint_rate
    u = torch.rand((n, _PAINT_SLOTS), generator=g, device=g.device)
    more = _prefix_while(u, config.paint_box_rate)
    out_valid = torch.cat([torch.ones_like(more[:, :1]), more[:, :-1]], dim=1)
    valid = torch.where(inpaint[:, None], more, out_valid)
    in_sizes = _randint(g, dims // 6, dims // 3, (n, _PAINT_SLOTS, s))
    out_sizes = dims - _randint(g, 3 * dims // 7, 4 * dims // 7, (n, _PAINT_SLOTS, s))
    sizes = torch.where(inpaint[:, None, None], in_sizes, out_sizes)
    starts = _randint(g, torch.full_like(sizes, _BORDER), dims - sizes - _BORDER, sizes.shape)
    return do_paint, inpaint, torch.cat([starts, sizes], dim=-1), valid
