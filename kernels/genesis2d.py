"""PEAC's 2D Models Genesis appearance distortion, batched: config, parameters, reference, op.

PEAC (POPAR branch (a), "shuffle=0": docs/METHODS.md section 3.3 item 5) distorts crop1 with a 2D
port of the Models Genesis transforms (Zhou et al., MICCAI 2019 / MedIA 2021, arXiv:2004.07882;
docs/METHODS.md section 1.2). Written from the published behaviour, not copied. Per image of shape
(C, H, W) (C = 3 in PEAC), values in [0, 1], in this order:

1. local pixel shuffling, **always**, with exactly ``blocks`` (40) blocks: each block is
   randint(1, H//10) x randint(1, W//10) (inclusive ends, as the 3D code) at a position fully
   inside the image, read from the original image, its pixels permuted within the block, and
   written in block order (later blocks overwrite earlier ones);
2. non-linear Bezier intensity map (p 0.9; table of 500 samples; inverted with p 0.5), the same
   curve for every channel of the image (:func:`kernels.genesis.bezier_lookup` /
   :func:`kernels.genesis.interp`);
3. painting (p 0.9): in-painting (p 0.2, up to 5 noise boxes) or out-painting (noise everywhere but
   1 + up to 4 kept boxes), the 3D box rules restricted to (H, W): in-painting sides
   randint(dim//6, dim//3), out-painting sides dim - randint(3*dim//7, 4*dim//7), 3-pixel margins,
   further boxes while u < 0.95. The noise is one U(0, 1) field per image, (B, 1, H, W), so a
   painted pixel gets the **same noise value in every channel**.

No flips, and no target: PEAC restores the clean crop, which the caller already holds.

Channels and shuffling (a decision): a block's permutation moves whole **pixels**, i.e. the same
permutation for every channel, so a pixel's channel vector travels intact. PEAC's images are
grey-scale radiographs replicated to three channels (``cv2.imread`` BGR); a pixel-wise shuffle
keeps them grey, as the clean target is, while a joint shuffle of the flattened (h, w, c) window
(which some 2D ports of the Genesis code do) would scatter channel values across pixels and create
colour noise that appears nowhere else in the pipeline. The released PEAC loader was not available
to check which of the two it does; the pixel-wise choice is the one the restoration task can
meaningfully invert on grey-scale data.

Randomness is drawn up front by :func:`sample_genesis2d_params` from a seeded CPU generator into a
:class:`Genesis2DParams`; :func:`apply_genesis2d_reference` (plain PyTorch, the oracle) and the
Triton kernel of ``kernels/genesis2d_triton.py`` consume identical parameters. Dispatch follows
:mod:`kernels._dispatch`: the kernel for CUDA tensors (float32, bfloat16, float16) when Triton
imports, the reference otherwise; ``ANATOMIX_KERNELS=triton|torch`` forces a path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from kernels.genesis import (  # same dispatch rule and dtypes as the 3D op
    _box_union,
    _shuffle_cube_reference,
    bezier_lookup,
    interp,
    use_triton,
)
from kernels.genesis_params import (
    block_permutations,
    sample_nonlinear,
    sample_painting,
    sample_shuffle_blocks,
    shuffle_block_volume,
)

__all__ = [
    "Genesis2DConfig",
    "Genesis2DParams",
    "apply_genesis2d",
    "apply_genesis2d_reference",
    "check_image_shape",
    "genesis2d",
    "sample_genesis2d_params",
    "use_triton",
]


@dataclass(frozen=True)
class Genesis2DConfig:
    """Settings of PEAC's Genesis-2D appearance distortion.

    Attributes:
        blocks: Shuffle blocks per image, applied always (PEAC: 40).
        nonlinear_rate: Probability of the Bezier intensity map (0.9).
        paint_rate: Probability of painting (0.9).
        inpaint_rate: Given painting, probability of in-painting; otherwise out-painting (0.2).
        bezier_points: Samples of the Bezier curve in the lookup table (PEAC: 500).
        paint_box_rate: Probability of each further painting box (0.95); as in 3D, in-painting
            tests it before its first box too, out-painting always keeps its first box.
    """

    blocks: int = 40
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    bezier_points: int = 500
    paint_box_rate: float = 0.95

    def __post_init__(self) -> None:
        for name in ("nonlinear_rate", "paint_rate", "inpaint_rate", "paint_box_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {self.blocks}")
        if self.bezier_points < 2:
            raise ValueError(f"bezier_points must be >= 2, got {self.bezier_points}")


@dataclass
class Genesis2DParams:
    """Every random choice of one batch of B images of shape (C, H, W).

    Tensors are drawn for every image whether or not its transform fires. Boxes are rows
    ``(start_h, start_w, size_h, size_w)`` in pixels.

    Attributes:
        shuffle_boxes: (B, K, 4) int64. K = ``blocks`` shuffle blocks, applied in order.
        shuffle_perm: (B, K, V) int16 (int32 if V > 32767), V = (H//10)*(W//10). For a block of
            v pixels, entries 0..v-1 are a permutation: output pixel l of the block (row-major)
            takes the original pixel ``shuffle_perm[b, k, l]`` of the block, in every channel.
            Entries >= v are unused.
        do_nonlinear: (B,) bool. The Bezier map fires.
        control: (B, 4) float64. Control values (r1, r2, r3, r4) in [0, 1].
        inverted: (B,) bool. The map decreases.
        do_paint: (B,) bool. Painting fires.
        inpaint: (B,) bool. In-painting (True) or out-painting (False), given painting.
        paint_boxes: (B, 5, 4) int64. In-painting: noise boxes; out-painting: kept boxes.
        paint_box_valid: (B, 5) bool. Which slots are used (a prefix), given painting.
        noise: (B, 1, H, W) float32. U(0, 1) painting noise, shared by all channels.
    """

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

    def to(self, device: torch.device | str) -> Genesis2DParams:
        """Returns a copy with every tensor on ``device``."""
        return Genesis2DParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def check_image_shape(shape: tuple[int, ...] | torch.Size, config: Genesis2DConfig) -> None:
    """Raises ``ValueError`` unless a (B, C, H, W) batch can take the enabled transforms."""
    if len(shape) != 4 or int(shape[1]) < 1:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(shape)}")
    dims = (int(shape[2]), int(shape[3]))
    if config.blocks > 0 and min(dims) < 10:
        raise ValueError(f"local pixel shuffling needs H, W >= 10 (blocks of dim//10); got {dims}")
    if config.paint_rate > 0 and config.inpaint_rate > 0 and min(dims) < 9:
        raise ValueError(f"in-painting needs H, W >= 9 (3-pixel margins); got {dims}")
    if config.paint_rate > 0 and config.inpaint_rate < 1 and min(dims) < 14:
        raise ValueError(f"out-painting needs H, W >= 14 (3-pixel margins); got {dims}")


def sample_genesis2d_params(
    shape: tuple[int, ...] | torch.Size, config: Genesis2DConfig, generator: torch.Generator
) -> Genesis2DParams:
    """Draws all random parameters of one batch from ``generator`` alone, in a fixed order.

    Args:
        shape: Batch shape (B, C, H, W).
        config: Rates and sizes.
        generator: A CPU ``torch.Generator``; the same state gives the same parameters.

    Returns:
        The parameters, on the CPU (see :class:`Genesis2DParams`).
    """
    check_image_shape(shape, config)
    n = int(shape[0])
    dims = torch.tensor([int(shape[2]), int(shape[3])], dtype=torch.int64)  # (H, W)
    g = generator

    # 1. local pixel shuffling: sizes 1..dim//10, starts 0..dim-size, always applied.
    k = config.blocks
    shuffle_boxes, shuffle_seed = sample_shuffle_blocks(g, dims, n, k)
    v_max = shuffle_block_volume(dims.tolist())
    shuffle_perm = block_permutations(shuffle_seed, shuffle_boxes, v_max)  # hash keys, argsorted

    # 2. non-linear intensity.
    do_nonlinear, control, inverted = sample_nonlinear(g, n, config.nonlinear_rate)

    # 3. painting.
    do_paint, inpaint, paint_boxes, paint_box_valid = sample_painting(g, dims, n, config)
    noise = torch.rand((n, 1, int(shape[2]), int(shape[3])), generator=g)

    return Genesis2DParams(
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


def _as_3d_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) rows (h, w, size h, size w) -> (..., 6) rows of the 3D helpers with D = 1."""
    zero, one = torch.zeros_like(boxes[..., :1]), torch.ones_like(boxes[..., :1])
    return torch.cat([boxes[..., :2], zero, boxes[..., 2:], one], dim=-1)


def _check_images(images: torch.Tensor, params: Genesis2DParams) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    want = (images.shape[0], 1, *images.shape[2:])
    if tuple(params.noise.shape) != tuple(want):
        raise ValueError(
            f"images of shape {tuple(images.shape)} do not match parameters drawn for "
            f"noise of shape {tuple(params.noise.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating tensor, got {images.dtype}")


def apply_genesis2d_reference(
    images: torch.Tensor, params: Genesis2DParams, config: Genesis2DConfig | None = None
) -> torch.Tensor:
    """Applies drawn Genesis-2D parameters; plain PyTorch, the oracle for the kernel.

    Args:
        images: (B, C, H, W) floating tensor, values in [0, 1].
        params: Parameters from :func:`sample_genesis2d_params` for this shape.
        config: Only ``bezier_points`` is read (default config if None).

    Returns:
        The distorted images, (B, C, H, W), dtype and device of ``images``.
    """
    config = config or Genesis2DConfig()
    _check_images(images, params)
    params = params.to(images.device)
    b, c, h, w = images.shape

    # 1. local pixel shuffling, always: one pixel permutation per block, shared by the channels
    # (each channel is a (1, H, W, 1) "cube" for the 3D helper, with the same blocks).
    x = images.clone()
    if params.shuffle_boxes.shape[1] > 0:
        boxes = _as_3d_boxes(params.shuffle_boxes)
        for n in range(b):
            for ch in range(c):
                cube = images[n, ch].reshape(1, h, w, 1)
                x[n, ch] = _shuffle_cube_reference(cube, boxes[n], params.shuffle_perm[n])[
                    0, ..., 0
                ]

    # 2. non-linear intensity, one curve per image for all its channels.
    chosen = torch.nonzero(params.do_nonlinear).flatten()
    if chosen.numel():
        xs, ys = bezier_lookup(
            params.control[chosen], params.inverted[chosen], config.bezier_points
        )
        mapped = interp(x[chosen].reshape(chosen.numel(), -1), xs, ys)
        x[chosen] = mapped.to(x.dtype).view(-1, c, h, w)

    # 3. painting with one noise field per image, broadcast over the channels.
    noise = params.noise.to(x.dtype)
    inside = _box_union(_as_3d_boxes(params.paint_boxes), params.paint_box_valid, (h, w, 1))
    inside = inside[..., 0]  # (B, 1, H, W)
    inpaint = params.inpaint.view(-1, 1, 1, 1)
    painted = torch.where(inpaint, torch.where(inside, noise, x), torch.where(inside, x, noise))
    return torch.where(params.do_paint.view(-1, 1, 1, 1), painted, x)


def apply_genesis2d(
    images: torch.Tensor, params: Genesis2DParams, config: Genesis2DConfig | None = None
) -> torch.Tensor:
    """Applies drawn parameters with the Triton kernel or the reference (see the module doc).

    Args:
        images: (B, C, H, W) floating tensor, values in [0, 1].
        params: Parameters from :func:`sample_genesis2d_params` for this shape, any device.
        config: Only ``bezier_points`` is read (default config if None).

    Returns:
        (B, C, H, W) distorted images; both paths agree (exactly, up to float rounding of the
        intensity map).
    """
    if use_triton(images):
        from kernels import genesis2d_triton  # imports triton: only where it is used

        return genesis2d_triton._genesis2d_triton(images, params.to(images.device), config)
    return apply_genesis2d_reference(images, params, config)


def genesis2d(
    images: torch.Tensor, config: Genesis2DConfig | None, generator: torch.Generator
) -> torch.Tensor:
    """PEAC's Genesis-2D appearance distortion of a batch of images.

    Args:
        images: (B, C, H, W) floating tensor, values in [0, 1] (C = 3, 448x448 in PEAC). H and W
            must be >= 14 with the default rates.
        config: Rates and sizes; None for PEAC's.
        generator: CPU ``torch.Generator``, the only source of randomness.

    Returns:
        The distorted images, (B, C, H, W), values in [0, 1], dtype and device of ``images``.
    """
    config = config or Genesis2DConfig()
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got {generator.device}")
    params = sample_genesis2d_params(images.shape, config, generator)
    return apply_genesis2d(images, params, config)
