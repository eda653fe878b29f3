"""The bony thorax: ribs, costal cartilage, thoracic spine, sternum and clavicles.

Ribs are drawn all at once: every voxel near the rib cage finds its angle around the chest and
the nearest rib at that angle (ribs descend from the spine towards the sternum), so twelve rib
pairs cost a handful of whole-volume operations.
"""

from __future__ import annotations

import numpy as np

from ._geometry import Grid, polyline_points, splat_tubes, superellipse
from .anatomy import cavity_axes

#: bone values (HU)
BONE_HU = {"cortex": 950.0, "rib_marrow": 380.0, "vertebra": 430.0, "disc": 80.0, "canal": 20.0}
CARTILAGE_HU = 120.0
N_RIBS = 12


def rib_layout(p: dict) -> dict:
    """First posterior rib height, rib pitch and anterior drop (canonical mm)."""
    z1 = p["apex_z"] + 8.0
    pitch = (p["dome_right_z"] + 35.0 - z1) / 10.0
    return {"z1": z1, "pitch": pitch, "drop": 1.7 * pitch}


def draw_bones(grid: Grid, p: dict, hu: np.ndarray, spine_y: float) -> dict:
    """Paint the bones into ``hu`` (``(D, H, W)``, HU, modified in place); return bone masks."""
    Z, Y, X = grid.Z, grid.Y, grid.X
    cy = p["cavity_center_y"]
    a, b = cavity_axes(Z, p)
    lay = rib_layout(p)

    # --- ribs and costal cartilage around a superellipse just outside the cavity
    se = superellipse(X, Y, 0.0, cy, a + 5.0, b + 5.0, 2.2)
    rho = se ** (1.0 / 2.2)
    radial = np.hypot(X, Y - cy) * (1.0 - 1.0 / rho)  # mm outside (+) / inside (-) the rib path
    theta = np.abs(np.arctan2(X, Y - cy))  # 0 at the spine, pi at the sternum
    u = (Z - lay["z1"] - lay["drop"] * (1.0 - np.cos(theta)) / 2.0) / lay["pitch"]
    k = np.rint(u)
    dz = (u - k) * lay["pitch"]
    q = (radial / 4.5) ** 2 + (dz / 7.0) ** 2
    valid = (k >= 0) & (k < N_RIBS) & (q < 1.0)
    theta_max = np.where(k < 7, 2.45, np.where(k < 10, 2.2, 1.6))
    cavity = superellipse(X, Y, 0.0, cy, a, b, 2.2) < 1
    ribs = valid & (theta > 0.22) & (theta < theta_max) & ~cavity
    cartilage = valid & (theta >= theta_max) & (theta < 2.95) & (k < 10) & ~cavity
    hu[cartilage] = CARTILAGE_HU
    hu[ribs] = np.where(q[ribs] > 0.4, BONE_HU["cortex"], BONE_HU["rib_marrow"])

    # --- thoracic spine: vertebral bodies with discs, canal, neural arch and processes
    level = (Z - lay["z1"]) / lay["pitch"] + 0.4
    frac = level - np.floor(level)
    r_body = np.hypot(X, Y - spine_y)
    canal_y = spine_y + 16.0 + 9.0
    r_canal = np.hypot(X, Y - canal_y)
    body = r_body < 16.0
    disc = body & (frac > 0.8)
    vert = body & ~disc
    cortex = vert & ((r_body > 13.5) | (frac < 0.06) | (frac > 0.74))
    arch = (r_canal >= 8.0) & (r_canal < 13.5) & (Y > spine_y + 12.0) & (frac < 0.85)
    spinous = (np.abs(X) < 4.0) & (Y > canal_y + 8.0) & (Y < canal_y + 28.0) & (frac > 0.1)
    transverse = (np.abs(X) < 36.0) & (np.abs(Y - canal_y - 2.0) < 5.0) & (frac < 0.7)
    posterior = (arch | spinous | transverse) & ~(r_canal < 8.0)
    hu[np.broadcast_to(r_canal < 8.0, hu.shape)] = BONE_HU["canal"]
    hu[disc] = BONE_HU["disc"]
    hu[vert] = BONE_HU["vertebra"]
    hu[cortex | posterior] = BONE_HU["cortex"] * 0.85
    spine = vert | posterior

    # --- sternum: manubrium (wider) and body, in front of the cavity
    z_notch, z_xiph = p["arch_z"] - 15.0, p["dome_right_z"] - 10.0
    half_w = np.where(Z < p["carina_z"], 20.0, 12.0)
    sternum = (
        (np.abs(X) < half_w)
        & (Y > cy - b - 15.0)
        & (Y < cy - b - 3.0)
        & (Z > z_notch)
        & (Z < z_xiph)
    )
    hu[sternum] = BONE_HU["cortex"] * 0.6

    # --- clavicles: S-shaped tubes from the sternal notch out to the shoulders
    clav = np.zeros(grid.shape, dtype=np.float32)
    b_top = float(cavity_axes(z_notch, p)[1])
    step = 0.5 * float(grid.vox.min())
    for side in (-1, 1):
        ctrl = [
            [z_notch - 4.0, cy - b_top - 14.0, side * 18.0],
            [z_notch - 10.0, cy - b_top - 8.0, side * 70.0],
            [z_notch - 24.0, cy - 15.0, side * 135.0],
        ]
        pts, rs = polyline_points(ctrl, [7.0, 6.5, 8.0], step)
        splat_tubes(grid, pts, rs, clav)
    clav *= hu > -500.0  # only inside the body: the film's field ends at the shoulders
    hu += clav * (BONE_HU["cortex"] * 0.8 - hu)
    return {
        "ribs": ribs,
        "spine": np.broadcast_to(spine, grid.shape).copy(),
        "sternum": np.broadcast_to(sternum, grid.shape).copy(),
        "clavicles": clav > 0.5,
    }
