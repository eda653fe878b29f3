"""The released Models Genesis ``generate_pair`` restated once more, with a log of what fired: the
oracle of ``bench/genesis_numpy_loop.py`` (tests/reference/test_genesis_release_loop.py).

Restates MrGiovanni/ModelsGenesis ``pytorch/utils.py`` (read, not copied): ``data_augmentation``,
``local_pixel_shuffling``, ``nonlinear_transformation`` with ``bezier_curve``/``bernstein_poly``,
``image_in_painting``, ``image_out_painting`` and the per-cube loop of ``generate_pair``, drawing
from Python's ``random`` and NumPy's global ``np.random`` in the release's order. Written apart
from the baseline it checks and never calls it. The Bézier samples use the release's arithmetic
(Bernstein basis C(3, i) t^(3-i) (1-t)^i, then a dot product) so that equal draws give equal bits.
"""

from __future__ import annotations

import random

import numpy as np

BLOCKS = 10_000  # local_pixel_shuffling's num_block
CURVE_SAMPLES = 100_000  # nonlinear_transformation's nTimes


def release_pairs(cubes: np.ndarray, seed: int, rates=(0.4, 0.5, 0.9, 0.9, 0.2)):
    """Seeds both generators with ``seed`` and runs the release's per-cube loop on float32 cubes.

    Returns (x, y, log): float32 inputs and targets, and per cube a dict of what fired
    (``flips``: drawn axes; ``shuffled``; ``nonlinear``: None, "increasing" or "inverted";
    ``paint``: None, "in" or "out"; ``boxes``: painting boxes made).
    """
    p_flip, p_local, p_nonlinear, p_paint, p_inpaint = rates
    random.seed(seed)
    np.random.seed(seed)
    targets = cubes.astype(np.float32, copy=True)
    inputs = targets.copy()
    log = []
    for n in range(targets.shape[0]):
        event = {"flips": [], "shuffled": False, "nonlinear": None, "paint": None, "boxes": 0}
        cube_x, cube_y = targets[n].copy(), targets[n]
        # data_augmentation: the rate test comes first, then the remaining-flips test.
        left = 3
        while random.random() < p_flip and left > 0:
            axis = random.choice([0, 1, 2])
            event["flips"].append(axis)
            cube_x, cube_y = np.flip(cube_x, axis), np.flip(cube_y, axis)
            left -= 1
        inputs[n], targets[n] = cube_x.copy(), cube_y.copy()

        if random.random() < p_local:  # local_pixel_shuffling
            event["shuffled"] = True
            inputs[n] = _shuffled(inputs[n])
        if random.random() < p_nonlinear:  # nonlinear_transformation
            inputs[n], event["nonlinear"] = _bezier_mapped(inputs[n])
        if random.random() < p_paint:
            if random.random() < p_inpaint:
                event["paint"], event["boxes"] = "in", _inpainted(inputs[n])
            else:
                event["paint"] = "out"
                inputs[n], event["boxes"] = _outpainted(inputs[n])
        log.append(event)
    return inputs, targets, log


def _shuffled(cube: np.ndarray) -> np.ndarray:
    dims = cube.shape[1:]
    rows, cols, deps = dims
    result = cube.copy()
    for _ in range(BLOCKS):
        size = [random.randint(1, rows // 10), random.randint(1, cols // 10)]
        size.append(random.randint(1, deps // 10))
        corner = [random.randint(0, dim - s) for dim, s in zip(dims, size, strict=True)]
        where = (0, *(slice(c, c + s) for c, s in zip(corner, size, strict=True)))
        voxels = cube[where].reshape(-1).copy()  # from the unshuffled cube
        np.random.shuffle(voxels)
        result[where] = voxels.reshape(size)
    return result


def _bezier_mapped(cube: np.ndarray):
    r = [random.random() for _ in range(4)]
    ctrl_x, ctrl_y = np.array([0.0, r[0], r[2], 1.0]), np.array([0.0, r[1], r[3], 1.0])
    t = np.linspace(0.0, 1.0, CURVE_SAMPLES)
    basis = np.array([[1, 3, 3, 1][i] * t ** (3 - i) * (1 - t) ** i for i in range(4)])
    curve_x, curve_y = np.dot(ctrl_x, basis), np.dot(ctrl_y, basis)
    if random.random() < 0.5:  # y left in curve order, 1 -> 0
        return np.interp(cube, np.sort(curve_x), curve_y), "inverted"
    return np.interp(cube, np.sort(curve_x), np.sort(curve_y)), "increasing"


def _paint_box(sides, dims):
    starts = [random.randint(3, dim - side - 3) for side, dim in zip(sides, dims, strict=True)]
    return (slice(None), *(slice(a, a + side) for a, side in zip(starts, sides, strict=True)))


def _inpainted(cube: np.ndarray) -> int:
    """In place, as released; returns the number of noise boxes."""
    dims = cube.shape[1:]
    made = 0
    while made < 5 and random.random() < 0.95:
        sides = [random.randint(dim // 6, dim // 3) for dim in dims]
        where = _paint_box(sides, dims)
        cube[where] = np.random.rand(*sides)
        made += 1
    return made


def _outpainted(cube: np.ndarray):
    dims = cube.shape[1:]
    canvas = np.random.rand(*cube.shape)
    made = 0
    while made == 0 or (made < 5 and random.random() < 0.95):
        sides = [dim - random.randint(3 * dim // 7, 4 * dim // 7) for dim in dims]
        where = _paint_box(sides, dims)
        canvas[where] = cube[where]
        made += 1
    return canvas, made
