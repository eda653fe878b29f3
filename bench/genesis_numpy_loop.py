"""The released Models Genesis pipeline, one cube at a time: the baseline of ``kernels/bench.py``.

Restates the structure of the official data pipeline (MrGiovanni/ModelsGenesis,
``pytorch/utils.py``: ``generate_pair`` and the functions it calls; read, not copied) so that the
bench's speed-ups are measured against the algorithm as released, run in the same process:

- float32 cubes, as the released loader gives them; every step's result is written back into the
  float32 batch (``x[n] = ...``), so the float64 results of ``np.interp`` and ``np.random.rand``
  are rounded to float32 at each step, as in the release;
- the release's random calls, in its order: Python's ``random`` module for every probability test
  (``random.random()``), flip axis (``random.choice``) and box (``random.randint``, both ends
  inclusive); NumPy's global ``np.random`` for the in-block permutation (``np.random.shuffle`` of
  each block's flattened copy) and the painting noise (``np.random.rand``);
- 10,000 shuffle blocks per shuffled cube, a 100,000-point Bézier curve applied with ``np.interp``;
- faithful flips: the axis is drawn from {0, 1, 2} of a (1, H, W, D) cube, so axis 0 (the channel)
  is a no-op and D is never flipped.

Seeded per call (``random.seed``, ``np.random.seed``), so a run is reproducible;
``tests/reference/test_genesis_release_loop.py`` checks it gives the same pairs as an independent
restatement of the release, and the same random calls. Left out, as they are no part of the
transforms: ``generate_pair``'s choice of the batch's cubes (``random.shuffle`` of the indices) and
its saving of sample images.
"""

from __future__ import annotations

import random
from math import comb

import numpy as np

SHUFFLE_BLOCKS = 10_000  # local_pixel_shuffling: num_block
BEZIER_POINTS = 100_000  # nonlinear_transformation: bezier_curve(..., nTimes=100000)


def _bezier(points: list[list[float]], n_times: int = BEZIER_POINTS):
    """``bezier_curve``: the curve at ``n_times`` even parameter values, x and y samples.

    The release's Bernstein term i is C(n, i) t^(n-i) (1-t)^i (``bernstein_poly``), so control
    point 0 is reached at t = 1: the samples run from the last point (1, 1) to the first (0, 0).
    """
    order = len(points) - 1
    t = np.linspace(0.0, 1.0, n_times)
    basis = np.array([comb(order, i) * t ** (order - i) * (1 - t) ** i for i in range(order + 1)])
    xs = np.dot(np.array([p[0] for p in points]), basis)
    ys = np.dot(np.array([p[1] for p in points]), basis)
    return xs, ys


def _flip(x: np.ndarray, y: np.ndarray, prob: float):
    """``data_augmentation``: up to three flips of input and target along one drawn axis.

    The probability is tested before the count (``random.random() < prob and cnt > 0``), so a
    fourth uniform is drawn after a third flip. Axis from {0, 1, 2}: channel, H, W (as released).
    """
    cnt = 3
    while random.random() < prob and cnt > 0:
        axis = random.choice([0, 1, 2])
        x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
        cnt -= 1
    return x, y


def _local_shuffle(x: np.ndarray, prob: float) -> np.ndarray:
    """``local_pixel_shuffling``: 10,000 blocks read from the unshuffled cube, shuffled in place of
    a flattened copy by ``np.random.shuffle`` and written in order (later blocks win)."""
    if random.random() >= prob:
        return x
    out, orig = x.copy(), x.copy()
    _, rows, cols, deps = x.shape
    for _ in range(SHUFFLE_BLOCKS):
        bh = random.randint(1, rows // 10)
        bw = random.randint(1, cols // 10)
        bd = random.randint(1, deps // 10)
        h = random.randint(0, rows - bh)
        w = random.randint(0, cols - bw)
        d = random.randint(0, deps - bd)
        window = orig[0, h : h + bh, w : w + bw, d : d + bd].flatten()
        np.random.shuffle(window)
        out[0, h : h + bh, w : w + bw, d : d + bd] = window.reshape((bh, bw, bd))
    return out


def _nonlinear(x: np.ndarray, prob: float) -> np.ndarray:
    """``nonlinear_transformation``: four uniform control values, the 100,000-point curve, then
    (p 0.5) only x sorted -- y keeps the curve's order, 1 to 0: the inverted map -- or both."""
    if random.random() >= prob:
        return x
    r1, r2 = random.random(), random.random()
    r3, r4 = random.random(), random.random()
    points = [[0, 0], [r1, r2], [r3, r4], [1, 1]]
    xs, ys = _bezier(points)
    if random.random() < 0.5:
        xs = np.sort(xs)
    else:
        xs, ys = np.sort(xs), np.sort(ys)
    return np.interp(x, xs, ys)  # float64, rounded to float32 where the caller stores it


def _box(sizes: tuple[int, int, int], dims: tuple[int, int, int]) -> tuple[slice, ...]:
    """The starts of a painting box of ``sizes``: 3..dim-size-3 per axis, inclusive."""
    starts = [random.randint(3, dim - size - 3) for size, dim in zip(sizes, dims, strict=True)]
    return tuple(slice(s, s + size) for s, size in zip(starts, sizes, strict=True))


def _inpaint(x: np.ndarray) -> np.ndarray:
    """``image_in_painting``: while u < 0.95, up to 5 boxes of side dim//6..dim//3 filled with
    ``np.random.rand`` noise, in place (the probability is tested before the first box too)."""
    dims = x.shape[1:]
    cnt = 5
    while cnt > 0 and random.random() < 0.95:
        sizes = tuple(random.randint(dim // 6, dim // 3) for dim in dims)
        box = (slice(None), *_box(sizes, dims))
        x[box] = np.random.rand(*sizes) * 1.0
        cnt -= 1
    return x


def _outpaint(x: np.ndarray) -> np.ndarray:
    """``image_out_painting``: float64 noise everywhere, then the cube kept in one box of side
    dim - (3·dim//7..4·dim//7) and, while u < 0.95, up to 4 more."""
    dims = x.shape[1:]
    kept = x.copy()
    out = np.random.rand(*x.shape) * 1.0
    cnt = 5  # the first box is unconditional, then the release's `cnt = 4` loop
    while cnt == 5 or (cnt > 0 and random.random() < 0.95):
        sizes = tuple(dim - random.randint(3 * dim // 7, 4 * dim // 7) for dim in dims)
        box = (slice(None), *_box(sizes, dims))
        out[box] = kept[box]
        cnt -= 1
    return out


def transform_batch_loop(cubes: np.ndarray, seed: int = 0, rates=(0.4, 0.5, 0.9, 0.9, 0.2)):
    """(N, 1, H, W, D) cubes -> (inputs, targets), float32, one cube at a time as released.

    Args:
        cubes: The batch (float32 as the released loader gives it; other dtypes are converted).
        seed: Seeds Python's ``random`` and NumPy's global ``np.random`` before the batch.
        rates: (flip, local, nonlinear, paint, inpaint) probabilities; the release's config
            values by default.

    Returns:
        (x, y): the transformed inputs and the (flipped) targets, each (N, 1, H, W, D) float32.
    """
    flip_rate, local_rate, nonlinear_rate, paint_rate, inpaint_rate = rates
    random.seed(seed)
    np.random.seed(seed)
    y = np.array(cubes, dtype=np.float32)  # the batch drawn from the float32 cube array
    x = y.copy()
    for n in range(len(y)):
        x[n] = y[n].copy()
        x[n], y[n] = _flip(x[n], y[n], flip_rate)  # NumPy copies overlapping views on assignment
        x[n] = _local_shuffle(x[n], local_rate)
        x[n] = _nonlinear(x[n], nonlinear_rate)
        if random.random() < paint_rate:
            x[n] = _inpaint(x[n]) if random.random() < inpaint_rate else _outpaint(x[n])
    return x, y
