"""A per-cube NumPy baseline with the structure of the published Models Genesis data pipeline.

Written from the published description (docs/METHODS.md §1.2), not from its code: each cube is
transformed on its own with Python loops — flips, 10,000 block shuffles read from the original
cube, a 100,000-point Bézier curve applied with ``np.interp``, painting box by box. It exists only
as the baseline of ``kernels/bench.py`` (same transform probabilities as the batched paths).
"""

from __future__ import annotations

from math import comb

import numpy as np


def _bezier(rng: np.random.Generator, n_times: int = 100_000):
    pts = np.array([[0, 0], [rng.random(), rng.random()], [rng.random(), rng.random()], [1, 1]])
    t = np.linspace(0.0, 1.0, n_times)
    basis = np.stack([comb(3, i) * t ** (3 - i) * (1 - t) ** i for i in range(4)])
    xs, ys = pts[:, 0] @ basis, pts[:, 1] @ basis
    return xs, ys


def _nonlinear(x, rng):
    xs, ys = _bezier(rng)
    if rng.random() < 0.5:
        xs = np.sort(xs)  # only x sorted: decreasing map (inverted intensities)
    else:
        xs, ys = np.sort(xs), np.sort(ys)
    return np.interp(x, xs, ys)


def _local_shuffle(x, rng, blocks=10_000):
    out = x.copy()
    _, h, w, d = x.shape
    for _ in range(blocks):
        bh, bw, bd = (int(rng.integers(1, s // 10 + 1)) for s in (h, w, d))
        r, c, z = (int(rng.integers(0, s - b + 1)) for s, b in ((h, bh), (w, bw), (d, bd)))
        window = x[0, r : r + bh, c : c + bw, z : z + bd].flatten()
        rng.shuffle(window)
        out[0, r : r + bh, c : c + bw, z : z + bd] = window.reshape(bh, bw, bd)
    return out


def _inpaint(x, rng):
    _, h, w, d = x.shape
    for _ in range(5):
        if rng.random() >= 0.95:
            break
        bh, bw, bd = (int(rng.integers(s // 6, s // 3 + 1)) for s in (h, w, d))
        r, c, z = (int(rng.integers(3, s - b - 3 + 1)) for s, b in ((h, bh), (w, bw), (d, bd)))
        x[:, r : r + bh, c : c + bw, z : z + bd] = rng.random((bh, bw, bd))
    return x


def _outpaint(x, rng):
    _, h, w, d = x.shape
    out = rng.random(x.shape)
    for k in range(5):
        if k and rng.random() >= 0.95:
            break
        bh, bw, bd = (s - int(rng.integers(3 * s // 7, 4 * s // 7 + 1)) for s in (h, w, d))
        r, c, z = (int(rng.integers(3, s - b - 3 + 1)) for s, b in ((h, bh), (w, bw), (d, bd)))
        out[:, r : r + bh, c : c + bw, z : z + bd] = x[:, r : r + bh, c : c + bw, z : z + bd]
    return out


def transform_cube(cube: np.ndarray, rng: np.random.Generator):
    """One ``(1, H, W, D)`` cube → (input, target), the published order and probabilities."""
    x, y = cube.copy(), cube.copy()
    for _ in range(3):
        if rng.random() >= 0.4:
            break
        axis = int(rng.integers(1, 4))  # corrected flips: H, W or D
        x, y = np.flip(x, axis), np.flip(y, axis)
    if rng.random() < 0.5:
        x = _local_shuffle(x, rng)
    if rng.random() < 0.9:
        x = _nonlinear(x, rng)
    if rng.random() < 0.9:
        x = _inpaint(x, rng) if rng.random() < 0.2 else _outpaint(x, rng)
    return x, y


def transform_batch_loop(cubes: np.ndarray, seed: int = 0):
    """(N, 1, H, W, D) → stacked (inputs, targets), one cube at a time."""
    rng = np.random.default_rng(seed)
    pairs = [transform_cube(c, rng) for c in cubes]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
