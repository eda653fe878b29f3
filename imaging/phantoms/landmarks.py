"""Anatomical landmarks of a phantom, in continuous voxel coordinates ``(d, h, w)``.

Points that are defined by the construction (carina, hila, aortic arch, diaphragm domes) come from
the centrelines and surfaces the anatomy was drawn from; points defined by a shape's extent (lung
apices, costophrenic angles, heart borders, cardiac apex) are read off the drawn masks, so they
are always on a voxel of the organ they name.
"""

from __future__ import annotations

import numpy as np

from ._geometry import Grid
from .anatomy import dome_points

#: names of the landmarks every phantom carries ("left"/"right" are the patient's sides)
LANDMARKS = (
    "carina",
    "lung_apex_left",
    "lung_apex_right",
    "costophrenic_angle_left",
    "costophrenic_angle_right",
    "heart_border_left",
    "heart_border_right",
    "diaphragm_dome_left",
    "diaphragm_dome_right",
    "aortic_arch",
    "hilum_left",
    "hilum_right",
    "cardiac_apex",
)


def _column_voxel(mask: np.ndarray, d: int, w: int) -> np.ndarray:
    """The voxel of ``mask`` in column ``(d, :, w)`` at the median row: a point on the organ."""
    hs = np.flatnonzero(mask[d, :, w])
    return np.array([d, hs[len(hs) // 2], w], dtype=float)


def _apex(lung: np.ndarray) -> np.ndarray:
    """Top-most slice of the lung; the voxel of that slice nearest its centroid."""
    d = int(np.flatnonzero(lung.any(axis=(1, 2)))[0])
    hw = np.argwhere(lung[d])
    best = hw[np.argmin(np.sum((hw - hw.mean(axis=0)) ** 2, axis=1))]
    return np.array([d, best[0], best[1]], dtype=float)


def _costophrenic(grid: Grid, lung: np.ndarray, side: int) -> np.ndarray:
    """Lowest-and-most-lateral point of the lung's frontal projection (the CP angle)."""
    proj = lung.any(axis=1)  # (D, W)
    d, w = np.nonzero(proj)
    score = (d + 0.5) * grid.vox[0] + side * ((w + 0.5) * grid.vox[2] - 160.0)
    i = int(np.argmax(score))
    return _column_voxel(lung, int(d[i]), int(w[i]))


def _heart_borders(heart: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patient-left (max ``w``) and patient-right (min ``w``) heart edge on its widest slice."""
    proj = heart.any(axis=1)  # (D, W)
    rows = np.flatnonzero(proj.any(axis=1))
    first = np.array([np.flatnonzero(proj[d])[0] for d in rows])
    last = np.array([np.flatnonzero(proj[d])[-1] for d in rows])
    k = int(np.argmax(last - first))
    d = int(rows[k])
    return _column_voxel(heart, d, int(last[k])), _column_voxel(heart, d, int(first[k]))


def find_landmarks(grid: Grid, anatomy: dict, heart: np.ndarray, geo: dict, params: dict) -> dict:
    """All :data:`LANDMARKS` as float ``(3,)`` voxel coordinates ``(d, h, w)``.

    Args:
        anatomy: normal-anatomy masks (``lung_left``, ``lung_right``, ...), each ``(D, H, W)``.
        heart: the heart as drawn (enlarged when the phantom has cardiomegaly), ``(D, H, W)``.
        geo: centrelines and heart geometry from :func:`anatomy.soft_tissue`.
    """
    pts = geo["lines"]["points"]
    domes = dome_points(params)
    out = {
        "carina": grid.to_voxel(pts["carina"]),
        "aortic_arch": grid.to_voxel(pts["aortic_arch"]),
        "hilum_left": grid.to_voxel(pts["hilum_left"]),
        "hilum_right": grid.to_voxel(pts["hilum_right"]),
        "diaphragm_dome_left": grid.to_voxel(domes["left"]),
        "diaphragm_dome_right": grid.to_voxel(domes["right"]),
        "lung_apex_left": _apex(anatomy["lung_left"]),
        "lung_apex_right": _apex(anatomy["lung_right"]),
        "costophrenic_angle_left": _costophrenic(grid, anatomy["lung_left"], 1),
        "costophrenic_angle_right": _costophrenic(grid, anatomy["lung_right"], -1),
    }
    out["heart_border_left"], out["heart_border_right"] = _heart_borders(heart)
    vox = np.argwhere(heart)
    along = grid.to_patient(vox) @ geo["heart"]["rot"][:, 0]  # position along the long axis
    out["cardiac_apex"] = vox[int(np.argmax(along))].astype(float)
    return {k: np.asarray(out[k], dtype=float) for k in LANDMARKS}
