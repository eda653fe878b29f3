"""Models Genesis transforms restated from the published behaviour (docs/METHODS.md §1.2): the
oracles the reference, Numba and Triton paths of :mod:`kernels.genesis` are checked against.

Plain NumPy loops over the drawn parameters; none calls the code it checks.
"""

from __future__ import annotations

import numpy as np


def box_slices(box) -> tuple[slice, slice, slice]:
    """A drawn box ``(h, w, d, size_h, size_w, size_d)`` as slices of the cube."""
    h, w, d, sh, sw, sd = (int(v) for v in box)
    return slice(h, h + sh), slice(w, w + sw), slice(d, d + sd)


def shuffle_restated(cube: np.ndarray, boxes: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """The official loop: each block read from the original cube, permuted, written in order."""
    out = cube.copy()
    for box, p in zip(boxes, perm, strict=True):
        sl = box_slices(box)
        window = cube[sl].reshape(-1)
        out[sl] = window[p[: window.size].astype(np.int64)].reshape(cube[sl].shape)
    return out


def union_restated(boxes, valid, spatial) -> np.ndarray:
    """The union of the valid paint boxes (in- or out-painting region) as a boolean mask."""
    mask = np.zeros(spatial, bool)
    for box, ok in zip(boxes, valid, strict=True):
        if ok:
            mask[box_slices(box)] = True
    return mask
