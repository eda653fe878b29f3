"""The four findings, each drawn over the normal anatomy and confined to its own voxel mask.

Every finding gets its own random stream (``default_rng([seed, k])``) and writes HU values only
where its mask is True, so toggling a finding leaves every other voxel of the same patient
bit-identical. Masks are computed from the normal anatomy; a later finding does not claim voxels an
earlier one already took (order: cardiomegaly, pneumothorax, effusion, nodule).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._geometry import Grid, ellipsoid
from .anatomy import HU, heart_geometry

#: names of the findings a phantom can carry; the index + 1 selects the finding's random stream
FINDINGS = ("nodule", "effusion", "cardiomegaly", "pneumothorax")
#: order in which findings are drawn (structural changes first, the focal nodule last)
APPLY_ORDER = ("cardiomegaly", "pneumothorax", "effusion", "nodule")


@dataclass
class FindingContext:
    """What a finding reads (anatomy, noise, params) and writes (``hu``, ``occupied``, info)."""

    grid: Grid
    hu: np.ndarray  # (D, H, W) HU, edited in place
    anatomy: dict  # normal-anatomy masks by organ name
    geo: dict  # heart, centrelines and key points
    params: dict  # patient parameters
    noise: np.ndarray  # (D, H, W) unit-std fine noise already present in the normal image
    options: dict  # user options (nodule size range, count)
    occupied: np.ndarray = None  # voxels already changed by an earlier finding
    info: dict = field(default_factory=dict)  # sampled finding parameters, for ChestPhantom.params

    def __post_init__(self):
        if self.occupied is None:
            self.occupied = np.zeros(self.grid.shape, dtype=bool)


def _noisy(ctx: FindingContext, mask: np.ndarray, value: float) -> np.ndarray:
    return value + 10.0 * ctx.noise[mask]


def cardiomegaly(ctx: FindingContext, rng: np.random.Generator) -> np.ndarray:
    """Enlarge the heart until the frontal cardiothoracic ratio is 0.56-0.66.

    The mask is the added heart voxels (enlarged minus normal heart): every voxel that changes.
    """
    p, heart = ctx.params, ctx.geo["heart"]
    target = rng.uniform(0.56, 0.66)
    rot = heart["rot"]

    def half_width(s):  # long and depth axes grow by s, the vertical axis by sqrt(s)
        return np.sqrt(np.sum((rot[2] * heart["axes"] * [s, np.sqrt(s), s]) ** 2))

    lo, hi = 1.0, 3.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if half_width(mid) < target * p["cavity_half_width"] else (lo, mid)
    s = 0.5 * (lo + hi)
    big = heart_geometry(p, scale=(s, np.sqrt(s), s))
    grown = ellipsoid(ctx.grid, heart["center"], big["axes"], rot) < 1
    mask = grown & ctx.geo["allowed_heart"] & ~ctx.anatomy["heart"] & ~ctx.occupied
    ctx.hu[mask] = _noisy(ctx, mask, HU["myocardium"])
    ctx.info["cardiomegaly_scale"] = float(s)
    return mask


def pneumothorax(ctx: FindingContext, rng: np.random.Generator) -> np.ndarray:
    """Collapse one lung towards its lower hilum, leaving an air rim under the chest wall.

    The mask is the air rim plus the visceral pleural line drawn on the collapsed lung's edge.
    """
    side = "right" if rng.random() < 0.5 else "left"
    shrink = rng.uniform(0.6, 0.85)
    lung = ctx.anatomy[f"lung_{side}"] & ~ctx.occupied
    sgn = -1.0 if side == "right" else 1.0
    anchor = ctx.geo["lines"]["points"][f"hilum_{side}"] + np.array([30.0, 0.0, -sgn * 5.0])
    c = ctx.grid.to_voxel(anchor)
    idx = np.array(np.nonzero(lung))  # (3, N) lung voxels
    src = np.rint(c[:, None] + (idx - c[:, None]) / shrink).astype(int)
    ok = np.all((src >= 0) & (src < np.array(ctx.grid.shape)[:, None]), axis=0)
    kept = np.zeros(idx.shape[1], dtype=bool)
    kept[ok] = lung[src[0, ok], src[1, ok], src[2, ok]]
    collapsed = np.zeros_like(lung)
    collapsed[tuple(idx[:, kept])] = True
    rim = lung & ~collapsed
    near = np.zeros_like(rim)
    for axis in range(3):
        for shift in (1, -1):
            near |= np.roll(rim, shift, axis=axis)
    line = collapsed & near
    ctx.hu[rim] = _noisy(ctx, rim, HU["air"])
    ctx.hu[line] = _noisy(ctx, line, -350.0)
    ctx.info["pneumothorax_side"] = side
    ctx.info["pneumothorax_collapse"] = float(shrink)
    return rim | line


def effusion(ctx: FindingContext, rng: np.random.Generator) -> np.ndarray:
    """Pleural fluid layering in the posterior-inferior part of one or both pleural spaces.

    The fluid surface is a tilted plane rising laterally (a meniscus on the radiograph); it is set
    so that 6-20 % of the pleural space fills. The mask is the fluid voxels.
    """
    r = rng.random()
    sides = ("right",) if r < 0.4 else ("left",) if r < 0.75 else ("right", "left")
    fracs = rng.uniform(0.06, 0.2, size=2)
    g, cy = ctx.grid, ctx.params["cavity_center_y"]
    mask = np.zeros(g.shape, dtype=bool)
    for i, side in enumerate(sides):
        lung = ctx.anatomy[f"lung_{side}"]
        sgn = -1.0 if side == "right" else 1.0
        level = g.Z + 0.5 * (g.Y - cy) + 0.3 * sgn * g.X  # (D, H, W): higher = more dependent
        t = np.quantile(level[lung], 1.0 - fracs[i])
        mask |= lung & (level > t)
    mask &= ~ctx.occupied
    ctx.hu[mask] = _noisy(ctx, mask, HU["fluid"])
    ctx.info["effusion_sides"] = list(sides)
    return mask


def nodule(ctx: FindingContext, rng: np.random.Generator) -> np.ndarray:
    """One or more solid spherical nodules (soft tissue, ~+35 HU) wholly inside a lung.

    Diameters (physical mm) are drawn from ``options["nodule_diameter_mm"]``. The mask is every
    voxel the (partial-volume) sphere touches. On a grid too coarse for any whole sphere, one
    nodule of the smallest diameter is drawn clipped to the lung.
    """
    g = ctx.grid
    lo_n, hi_n = ctx.options.get("nodule_count", (1, 3))
    lo_d, hi_d = ctx.options.get("nodule_diameter_mm", (4.0, 30.0))
    free = ctx.anatomy["lungs"] & ~ctx.occupied
    cand = np.flatnonzero(free)
    sp = np.array(g.spacing)
    edge = float(sp.min())
    dirs = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T
    dirs = dirs[np.any(dirs != 0, axis=1)]
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)  # 26 probe directions
    mask = np.zeros(g.shape, dtype=bool)
    found = []
    for _ in range(int(rng.integers(lo_n, hi_n + 1))):
        diam = rng.uniform(lo_d, hi_d)
        if len(cand) == 0:
            break
        for _attempt in range(300):
            c = np.array(np.unravel_index(cand[rng.integers(len(cand))], g.shape), float)
            probe = c + dirs * (diam / 2 + edge) / sp  # voxel indices on a slightly larger sphere
            pi = np.rint(probe).astype(int)
            inb = np.all((pi >= 0) & (pi < np.array(g.shape)), axis=1)
            if inb.all() and free[pi[:, 0], pi[:, 1], pi[:, 2]].all():
                break
            if _attempt % 50 == 49:
                diam *= 0.8  # nothing fits: try a smaller nodule
        else:
            if found:
                continue
            # a grid too coarse for any whole sphere: keep the last centre, clipped to the lung
            diam = lo_d
        r = diam / 2
        lo = np.maximum(np.floor(c - (r + edge) / sp).astype(int), 0)
        hi = np.minimum(np.ceil(c + (r + edge) / sp).astype(int) + 1, np.array(g.shape))
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        axes = [(np.arange(a, b) - ci) * s for a, b, ci, s in zip(lo, hi, c, sp, strict=True)]
        dist = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2] ** 2)
        occ = np.clip((r - dist) / edge + 0.5, 0.0, 1.0) * free[box]
        m = occ > 0
        value = rng.uniform(20.0, 50.0) + 10.0 * ctx.noise[box]
        sub = ctx.hu[box]
        sub[m] = sub[m] * (1 - occ[m]) + value[m] * occ[m]
        mask[box] |= m
        found.append({"center_voxel": c.tolist(), "diameter_mm": float(diam)})
    ctx.info["nodules"] = found
    return mask


FINDING_FUNCS = {
    "nodule": nodule,
    "effusion": effusion,
    "cardiomegaly": cardiomegaly,
    "pneumothorax": pneumothorax,
}
