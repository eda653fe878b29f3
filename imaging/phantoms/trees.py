"""Branching tubes: the pulmonary vessel trees and the intrapulmonary bronchi.

A tree grows from a hilum by recursive bifurcation (each child shorter and thinner, turned by a
random angle) and stops where a branch would leave the lung, so branches fill the lung the way
vessels do instead of being placed as independent blobs.
"""

from __future__ import annotations

import numpy as np

from ._geometry import Grid, segment_points


def _turn(rng: np.random.Generator, d: np.ndarray, angle_deg: float) -> np.ndarray:
    """Unit vector at ``angle_deg`` (plus jitter) from ``d`` in a random azimuth around it."""
    d = d / np.sqrt(d @ d)
    helper = (1.0, 0.0, 0.0) if abs(d[0]) < 0.9 else (0.0, 1.0, 0.0)
    u = np.array(
        [
            d[1] * helper[2] - d[2] * helper[1],
            d[2] * helper[0] - d[0] * helper[2],
            d[0] * helper[1] - d[1] * helper[0],
        ]
    )
    u /= np.sqrt(u @ u)
    v = np.array([d[1] * u[2] - d[2] * u[1], d[2] * u[0] - d[0] * u[2], d[0] * u[1] - d[1] * u[0]])
    phi = rng.uniform(0, 2 * np.pi)
    a = np.deg2rad(angle_deg * rng.uniform(0.7, 1.3))
    return np.cos(a) * d + np.sin(a) * (np.cos(phi) * u + np.sin(phi) * v)


def grow_tree(
    rng: np.random.Generator,
    grid: Grid,
    inside: np.ndarray,
    root,
    directions,
    *,
    radius: float,
    length: float,
    depth: int,
    shrink_len: float = 0.8,
    shrink_rad: float = 0.72,
    angle_deg: float = 32.0,
    step: float = 1.0,
):
    """Grow a bifurcating tree of tubes inside ``inside`` (bool ``(D, H, W)``).

    Args:
        root: patient ``(Z, Y, X)`` start point (mm).
        directions: initial branch directions ``(K, 3)`` leaving the root.
        radius / length: first-generation tube radius and length (canonical mm).
        depth: number of generations.
        step: centreline sampling distance (mm) for the returned points.

    Returns:
        points ``(M, 3)`` (patient mm) and radii ``(M,)`` along all centrelines.
    """
    pts, rads = [], []
    stack = [(np.asarray(root, float), np.asarray(d, float), radius, length, 0) for d in directions]
    while stack:
        p0, d, r, L, g = stack.pop()
        d = d / np.linalg.norm(d)
        # a branch that would leave the lung tries other directions, then half its length
        p1 = p0 + d * L
        if not grid.lookup(inside, p1[None])[0]:
            tries = [d] + [_turn(rng, d, angle_deg) for _ in range(3)]
            ends = np.array([p0 + t * L * f for f in (1.0, 0.5) for t in tries])
            ok = np.flatnonzero(grid.lookup(inside, ends))
            if len(ok) == 0:
                continue
            p1 = ends[ok[0]]
        d = (p1 - p0) / np.linalg.norm(p1 - p0)
        seg, sr = segment_points(p0, p1, r, r * 0.92, step)
        pts.append(seg)
        rads.append(sr)
        if g + 1 < depth:
            for _ in range(2):
                stack.append((p1, _turn(rng, d, angle_deg), r * shrink_rad, L * shrink_len, g + 1))
    if not pts:
        return np.zeros((0, 3)), np.zeros(0)
    return np.vstack(pts), np.concatenate(rads)


def hilar_directions(side: int) -> np.ndarray:
    """First-generation directions ``(5, 3)`` from a hilum: apical, lateral, anterior, posterior
    basal, lateral basal (``side`` -1 right, +1 left; vectors are patient ``(Z, Y, X)``)."""
    s = float(side)
    return np.array(
        [
            [-1.0, 0.0, 0.25 * s],  # up to the apex
            [-0.3, -0.2, 1.0 * s],  # lateral, upper lobe
            [0.2, -1.0, 0.4 * s],  # anterior
            [1.0, 0.6, 0.3 * s],  # posterior basal
            [0.8, -0.1, 0.8 * s],  # lateral basal
        ]
    )
