"""Patient parameters and the soft-tissue anatomy of the chest phantom (no bones, no findings).

Everything is an implicit shape evaluated on the whole grid (body and cavity superellipses, a
rotated ellipsoid for the heart, parabolic diaphragm domes and lung apices) or a tube splatted
along a centreline (airways, great vessels). Lengths are canonical mm (see ``_geometry``).
"""

from __future__ import annotations

import numpy as np

from ._geometry import Grid, ellipsoid, polyline_points, smoothstep, splat_tubes, superellipse

#: tissue values (HU) of the normal anatomy
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 40.0,
    "lung": -855.0,
    "vessel": 40.0,
    "blood": 45.0,
    "myocardium": 38.0,
    "liver": 58.0,
    "abdomen": 30.0,
    "fluid": 12.0,
    "airway_wall": 30.0,
}


def sample_params(rng: np.random.Generator) -> dict:
    """Draw one patient's body size, organ positions and pose (canonical mm, degrees)."""
    u = rng.uniform
    p = {
        "yaw_deg": u(-4, 4),
        "shift_x": u(-6, 6),
        "shift_y": u(-5, 5),
        "cavity_half_width": u(106, 126),
        "cavity_half_depth": u(68, 84),
        "cavity_center_y": -14.0 + u(-4, 4),
        "muscle_mm": u(4, 10),
        "fat_mm": u(3, 14),
        "back_wall_mm": u(38, 48),
        "apex_z": u(12, 26),
        "dome_right_z": u(196, 222),
        "dome_left_offset": u(6, 16),
        "heart_dx": u(-8, 8),
        "heart_dy": u(-6, 6),
        "heart_dz": u(-6, 6),
        "heart_tilt_deg": u(28, 42),
        "heart_turn_deg": u(18, 32),
        "target_ctr": u(0.39, 0.46),
        "carina_z": u(96, 112),
        "arch_above_carina": u(22, 30),
    }
    p["dome_left_z"] = p["dome_right_z"] + p["dome_left_offset"]
    p["arch_z"] = p["carina_z"] - p["arch_above_carina"]
    return p


def cavity_axes(Z, p: dict):
    """Half-width and half-depth (mm) of the thoracic cavity at height ``Z`` (narrow at the top)."""
    a = p["cavity_half_width"] * (0.6 + 0.4 * smoothstep(Z, 0.0, 180.0))
    b = p["cavity_half_depth"] * (0.72 + 0.28 * smoothstep(Z, 0.0, 150.0))
    return a, b


def diaphragm_z(X, Y, p: dict):
    """Height ``Z`` (mm) of the diaphragm surface under ``(X, Y)``: two parabolic domes."""
    a, b, cy = p["cavity_half_width"], p["cavity_half_depth"], p["cavity_center_y"]
    kx, ky = 50.0 / (0.55 * a) ** 2, 70.0 / (1.1 * b) ** 2
    zs = []
    for side, top in ((-1, p["dome_right_z"]), (1, p["dome_left_z"])):
        zs.append(top + kx * (X - side * 0.45 * a) ** 2 + ky * (Y - (cy - 0.1 * b)) ** 2)
    return np.minimum(zs[0], zs[1])


def dome_points(p: dict) -> dict:
    """Patient ``(Z, Y, X)`` of the top of each diaphragm dome."""
    a, b, cy = p["cavity_half_width"], p["cavity_half_depth"], p["cavity_center_y"]
    y = cy - 0.1 * b
    return {
        "right": np.array([p["dome_right_z"], y, -0.45 * a]),
        "left": np.array([p["dome_left_z"], y, 0.45 * a]),
    }


def heart_geometry(p: dict, scale=(1.0, 1.0, 1.0)) -> dict:
    """Centre, semi-axes and orientation of the heart ellipsoid (patient ``(Z, Y, X)`` mm).

    The size is solved so that the frontal cardiothoracic ratio equals ``p["target_ctr"]``;
    ``scale`` then multiplies the semi-axes (long, vertical, depth), as cardiomegaly does.
    """
    phi, psi = np.deg2rad(p["heart_tilt_deg"]), np.deg2rad(p["heart_turn_deg"])
    e1 = np.array([np.sin(phi), -np.cos(phi) * np.sin(psi), np.cos(phi) * np.cos(psi)])
    e2 = np.array([1.0, 0.0, 0.0]) - np.sin(phi) * e1
    e2 /= np.linalg.norm(e2)
    rot = np.stack([e1, e2, np.cross(e1, e2)], axis=1)  # columns: long, vertical, depth
    base = np.array([60.0, 47.0, 44.0])
    half_width = np.sqrt(np.sum((rot[2] * base) ** 2))
    axes = base * (p["target_ctr"] * p["cavity_half_width"] / half_width) * np.asarray(scale)
    half_height = np.sqrt(np.sum((rot[0] * axes) ** 2))
    x = 0.17 * p["cavity_half_width"] + p["heart_dx"]
    y = p["cavity_center_y"] - 0.3 * p["cavity_half_depth"] + p["heart_dy"]
    base_axes = base * (p["target_ctr"] * p["cavity_half_width"] / half_width)
    base_height = np.sqrt(np.sum((rot[0] * base_axes) ** 2))
    z = float(diaphragm_z(x, y, p)) - 0.8 * base_height + p["heart_dz"]
    return {"center": np.array([z, y, x]), "axes": axes, "rot": rot, "half_height": half_height}


def centerlines(p: dict, heart: dict) -> dict:
    """Control points ``(N, 3)`` and radii ``(N,)`` of the mediastinal tubes, and key points."""
    a, b, cy = p["cavity_half_width"], p["cavity_half_depth"], p["cavity_center_y"]
    yv = cy + b - 4.0  # vertebral body centre
    ytr = yv - 16.0 - 28.0  # trachea: in front of oesophagus and spine
    zc, za = p["carina_z"], p["arch_z"]
    zh, yh, xh = heart["center"]
    top = zh - heart["half_height"]
    carina = np.array([zc, ytr, 0.0])
    hilum_r = np.array([zc + 25.0, ytr + 6.0, -0.30 * a])
    hilum_l = np.array([zc + 33.0, ytr + 10.0, 0.36 * a])
    zd = float(diaphragm_z(14.0, yv - 18.0, p))
    tubes = {
        "trachea": ([[0.0, ytr - 6, -2.0], [zc * 0.5, ytr - 3, -1.0], carina], [9, 9, 8.5]),
        "bronchus_right": ([carina, hilum_r], [7.0, 6.0]),
        "bronchus_left": ([carina, hilum_l], [6.5, 5.5]),
        "aorta": (
            [
                [top + 15, yh - 5, xh - 22],
                [za + 35, ytr - 32, -14.0],
                [za, ytr - 22, 12.0],
                [za + 8, ytr + 4, 28.0],
                [za + 30, yv - 20, 24.0],
                [zd + 20, yv - 18, 14.0],
                [330.0, yv - 16, 8.0],
            ],
            [14, 14, 13, 12, 11, 11, 10],
        ),
        "svc": ([[0.0, ytr - 18, -34.0], [top + 10, ytr - 18, -30.0]], [9, 10]),
        "pulmonary_trunk": (
            [[top + 20, yh - 10, xh - 8], [zc + 12, ytr - 20, 10.0], [zc + 10, ytr + 2, 0.3 * a]],
            [13, 11, 9],
        ),
        "pulmonary_right": (
            [[zc + 12, ytr - 20, 10.0], [zc + 14, ytr - 10, -0.2 * a], hilum_r + [10, -4, 0]],
            [10, 9, 8],
        ),
        "oesophagus": ([[0.0, ytr + 17, 2.0], [zd + 20, ytr + 19, 30.0]], [7, 7]),
    }
    points = {"carina": carina, "hilum_right": hilum_r, "hilum_left": hilum_l}
    points["aortic_arch"] = np.array([za, ytr - 22, 12.0])
    return {"tubes": tubes, "points": points, "spine_y": yv, "trachea_y": ytr}


def draw_tubes(grid: Grid, lines: dict, names, grow: float = 0.0) -> np.ndarray:
    """Occupancy ``(D, H, W)`` of the named tubes, radii grown by ``grow`` mm."""
    occ = np.zeros(grid.shape, dtype=np.float32)
    step = 0.5 * float(grid.vox.min())
    for name in names:
        ctrl, radii = lines["tubes"][name]
        pts, rs = polyline_points(ctrl, np.asarray(radii, float) + grow, step)
        splat_tubes(grid, pts, rs, occ)
    return occ


def soft_tissue(grid: Grid, p: dict) -> tuple[np.ndarray, dict, dict]:
    """Body, chest wall, mediastinum, heart, lungs and upper abdomen.

    Returns:
        HU ``(D, H, W)`` float32 without noise, bool masks by organ name, and geometry (heart,
        centrelines, key points) used by the bones, trees, findings and landmarks.
    """
    Z, Y, X = grid.Z, grid.Y, grid.X
    a, b = cavity_axes(Z, p)
    cy = p["cavity_center_y"]
    wall = 10.0 + p["muscle_mm"]
    fat = p["fat_mm"]
    taper = 0.85 + 0.15 * smoothstep(Z, 0.0, 120.0)
    a_body = (p["cavity_half_width"] + wall) * taper
    b_body = np.where(Y < cy, b + wall, b + p["back_wall_mm"])
    body = superellipse(X, Y, 0.0, cy, a_body + fat, b_body + fat, 2.4) < 1
    inner = superellipse(X, Y, 0.0, cy, a_body, b_body, 2.4) < 1
    cavity = superellipse(X, Y, 0.0, cy, a, b, 2.2) < 1
    zd = diaphragm_z(X, Y, p)

    heart = heart_geometry(p)
    lines = centerlines(p, heart)
    hq = ellipsoid(grid, heart["center"], heart["axes"], heart["rot"])
    heart_mask = (hq < 1) & (Z < zd + 8)
    blood = ellipsoid(grid, heart["center"], heart["axes"] * 0.72, heart["rot"]) < 1
    grown = ellipsoid(grid, heart["center"], heart["axes"] + 5.0, heart["rot"]) < 1

    med_names = ("trachea", "bronchus_right", "bronchus_left", "aorta", "svc")
    med_names += ("pulmonary_trunk", "pulmonary_right", "oesophagus")
    med_grown = draw_tubes(grid, lines, med_names, grow=4.0) > 0
    vessels = draw_tubes(grid, lines, ("aorta", "svc", "pulmonary_trunk", "pulmonary_right"))
    oesophagus = draw_tubes(grid, lines, ("oesophagus",))
    airway = draw_tubes(grid, lines, ("trachea", "bronchus_right", "bronchus_left"))
    airway_wall = draw_tubes(grid, lines, ("trachea", "bronchus_right", "bronchus_left"), 1.5)

    yv = lines["spine_y"]
    mw = 8.0 + 14.0 * (1.0 - smoothstep(Z, p["arch_z"] + 10.0, p["carina_z"] + 40.0))
    spine_zone = np.hypot(X, Y - yv) < 26.0
    lungs = {}
    for side, name in ((-1, "lung_right"), (1, "lung_left")):
        xa, ya = side * 0.42 * p["cavity_half_width"], cy + 0.1 * p["cavity_half_depth"]
        below_apex = Z > p["apex_z"] + ((X - xa) ** 2 + (Y - ya) ** 2) / 50.0
        lungs[name] = (
            cavity & below_apex & (Z < zd) & (side * X > mw) & ~grown & ~spine_zone & ~med_grown
        )

    hu = np.full(grid.shape, HU["air"], dtype=np.float32)
    hu[body] = HU["fat"]
    hu[inner] = HU["muscle"]
    hu[cavity] = HU["fat"]  # mediastinal fat unless an organ is drawn over it
    abdomen = cavity & (Z > zd)
    liver = abdomen & cavity & (X < 25.0 - 0.2 * (Z - p["dome_right_z"]))
    hu[abdomen] = HU["abdomen"]
    hu[liver] = HU["liver"]
    stomach_c = np.array([p["dome_left_z"] + 24.0, cy - 0.15 * p["cavity_half_depth"], 58.0])
    stomach = (ellipsoid(grid, stomach_c, np.array([22.0, 26.0, 30.0]), np.eye(3)) < 1) & (
        Z > zd + 4.0
    )
    hu[stomach] = HU["fluid"]
    hu[stomach & (Z < stomach_c[0] + 2.0)] = HU["air"]
    hu = np.where(oesophagus > 0, HU["muscle"], hu)
    hu = np.where(vessels > 0, hu + vessels * (HU["blood"] - hu), hu)
    hu[heart_mask] = HU["myocardium"]
    hu[heart_mask & blood] = HU["blood"]
    for name in lungs:
        hu[lungs[name]] = HU["lung"]
    hu = np.where(airway_wall > 0, hu + airway_wall * (HU["airway_wall"] - hu), hu)
    hu = np.where(airway > 0, hu + airway * (HU["air"] - hu), hu)

    masks = {
        "body": np.broadcast_to(body, grid.shape).copy(),
        **lungs,
        "lungs": lungs["lung_right"] | lungs["lung_left"],
        "heart": heart_mask,
        "aorta": draw_tubes(grid, lines, ("aorta",)) > 0.5,
        "airway": airway > 0.5,
        "liver": liver,
        "abdomen": abdomen,
    }
    geo = {
        "heart": heart,
        "lines": lines,
        "allowed_heart": cavity & (Z < zd + 8) & ~med_grown & ~spine_zone,
    }
    return hu, masks, geo
