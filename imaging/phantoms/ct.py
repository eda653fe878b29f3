"""``make_chest_ct``: a seeded synthetic chest CT with organ masks, findings and landmarks.

Volume layout ``(D, H, W)``: slices superior -> inferior (``d = 0`` is the top, nearest the head),
rows anterior -> posterior, columns patient right -> left, i.e. a stack of DICOM axial images
viewed from the feet. The affine maps ``(d, h, w)`` to patient LPS mm accordingly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..image import Volume
from ._geometry import Grid, smooth_noise, splat_tubes
from .anatomy import HU, sample_params, soft_tissue
from .findings import APPLY_ORDER, FINDING_FUNCS, FINDINGS, FindingContext
from .landmarks import find_landmarks
from .skeleton import draw_bones
from .trees import grow_tree, hilar_directions


@dataclass
class ChestPhantom:
    """A synthetic chest CT and its ground truth.

    Attributes:
        volume: HU voxels float32 ``(D, H, W)``, spacing ``(d, h, w)`` mm, affine voxel -> LPS mm.
        masks: bool ``(D, H, W)``: one per finding present (keys from :data:`FINDINGS`), and the
            normal anatomy under ``"anatomy/<organ>"``. Anatomy masks do not depend on findings
            (the enlarged heart is ``anatomy/heart | masks["cardiomegaly"]``).
        labels: 0/1 for every name in :data:`FINDINGS`.
        landmarks: float ``(3,)`` voxel coordinates ``(d, h, w)`` for every name in ``LANDMARKS``.
        seed: the patient seed.
        params: sampled patient parameters (canonical mm, degrees), the finding parameters, and
            the measured ``cardiothoracic_ratio``.
        findings: the findings drawn, in :data:`FINDINGS` order.
    """

    volume: Volume
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    landmarks: dict[str, np.ndarray]
    seed: int
    params: dict = field(default_factory=dict)
    findings: tuple[str, ...] = ()


def lps_affine(shape, spacing) -> np.ndarray:
    """4x4 voxel ``(d, h, w)`` -> LPS mm for axial slices: ``d`` towards the feet (-z), ``h``
    posterior (+y), ``w`` patient left (+x); the volume centre sits at the origin."""
    D, H, W = shape
    sd, sh, sw = spacing
    aff = np.zeros((4, 4))
    aff[:3, 0] = (0.0, 0.0, -sd)
    aff[:3, 1] = (0.0, sh, 0.0)
    aff[:3, 2] = (sw, 0.0, 0.0)
    aff[:3, 3] = (-(W - 1) * sw / 2, -(H - 1) * sh / 2, (D - 1) * sd / 2)
    aff[3, 3] = 1.0
    return aff


def _lung_trees(rng, grid: Grid, hu: np.ndarray, masks: dict, points: dict) -> None:
    """Draw pulmonary vessels (soft tissue) and intrapulmonary bronchi (air, thin wall) in place."""
    step = 0.5 * float(grid.vox.min())
    vessels = np.zeros(grid.shape, dtype=np.float32)
    lumen = np.zeros(grid.shape, dtype=np.float32)
    wall = np.zeros(grid.shape, dtype=np.float32)
    for side, name in ((-1, "right"), (1, "left")):
        lung = masks[f"lung_{name}"]
        root = points[f"hilum_{name}"] + np.array([6.0, -6.0, side * 4.0])
        pts, rs = grow_tree(
            rng, grid, lung, root, hilar_directions(side), radius=3.6, length=36.0, depth=8,
            shrink_rad=0.8, shrink_len=0.8, step=step,
        )  # fmt: skip
        splat_tubes(grid, pts, rs, vessels)
        pts, rs = grow_tree(
            rng, grid, lung, points[f"hilum_{name}"], hilar_directions(side), radius=4.0,
            length=30.0, depth=3, shrink_rad=0.75, step=step,
        )  # fmt: skip
        splat_tubes(grid, pts, rs, lumen)
        splat_tubes(grid, pts, rs + 1.2, wall)
    lungs = masks["lungs"]
    for occ, value in ((vessels, HU["vessel"]), (wall, HU["airway_wall"]), (lumen, HU["air"])):
        occ *= lungs
        hu += occ * (value - hu)


def _cardiothoracic_ratio(heart: np.ndarray, lungs: np.ndarray) -> float:
    """Widest frontal heart extent / widest extent of the lungs, in columns (same spacing)."""

    def widest(mask):
        cols = mask.any(axis=1)  # (D, W)
        rows = cols.any(axis=1)
        first = np.argmax(cols, axis=1)
        last = cols.shape[1] - 1 - np.argmax(cols[:, ::-1], axis=1)
        return float(np.max(np.where(rows, last - first + 1, 0)))

    return widest(heart) / widest(lungs)


def make_chest_ct(
    seed: int,
    shape=(64, 128, 128),
    spacing=(2.5, 2.5, 2.5),
    findings: Iterable[str] = (),
    *,
    nodule_diameter_mm=(4.0, 30.0),
    nodule_count=(1, 3),
) -> ChestPhantom:
    """Generate a deterministic synthetic chest CT (HU) for one patient seed.

    The thorax is stretched to fill the field of view whatever ``shape``/``spacing`` are (anatomy
    is drawn in a canonical frame), so every landmark is present; nodule sizes are physical mm.

    Args:
        seed: patient seed; the same seed and findings give bit-identical arrays.
        shape: ``(D, H, W)`` voxels; ``d = 0`` is the most superior slice.
        spacing: ``(d, h, w)`` voxel size in mm.
        findings: names from :data:`FINDINGS` to draw; toggling one changes voxels only inside
            its mask.
        nodule_diameter_mm: range of nodule diameters (mm).
        nodule_count: inclusive range of the number of nodules.

    Returns:
        A :class:`ChestPhantom`.
    """
    findings = tuple(findings)
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; valid names are {list(FINDINGS)}")
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be (D, H, W) with every size >= 16, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values, got {tuple(spacing)}")

    rng = np.random.default_rng(seed)
    p = sample_params(rng)
    grid = Grid(shape, spacing, p["yaw_deg"], (p["shift_x"], p["shift_y"]))
    hu, anatomy, geo = soft_tissue(grid, p)
    _lung_trees(rng, grid, hu, anatomy, geo["lines"]["points"])
    anatomy.update(draw_bones(grid, p, hu, geo["lines"]["spine_y"]))
    anatomy["bone"] = anatomy["ribs"] | anatomy["spine"] | anatomy["sternum"] | anatomy["clavicles"]
    for name in ("lung_left", "lung_right", "lungs"):
        anatomy[name] &= ~anatomy["bone"]  # a clavicle may cross an apex

    # texture and noise: drawn from the patient stream, identical whatever the findings
    texture = smooth_noise(rng, grid.shape, 7.0, grid.vox)
    fine = rng.standard_normal(grid.shape, dtype=np.float32)
    gravity = 40.0 * (grid.Y - p["cavity_center_y"]) / p["cavity_half_depth"]
    lungs = anatomy["lungs"]
    hu += np.where(lungs & (hu < -500), gravity + 22.0 * texture, 5.0 * texture)
    hu += 10.0 * fine

    present = tuple(f for f in FINDINGS if f in findings)
    ctx = FindingContext(grid, hu, anatomy, geo, p, fine, {
        "nodule_diameter_mm": tuple(nodule_diameter_mm), "nodule_count": tuple(nodule_count),
    })  # fmt: skip
    masks = {}
    for name in APPLY_ORDER:
        if name in present:
            frng = np.random.default_rng([seed, FINDINGS.index(name) + 1])
            masks[name] = FINDING_FUNCS[name](ctx, frng)
            ctx.occupied |= masks[name]
    np.clip(hu, -1024.0, 3071.0, out=hu)

    heart = anatomy["heart"] | masks.get("cardiomegaly", False)
    landmarks = find_landmarks(grid, anatomy, heart, geo, p)
    params = dict(p, **ctx.info)
    params["cardiothoracic_ratio"] = _cardiothoracic_ratio(heart, anatomy["lungs"])
    volume = Volume(
        voxels=hu.astype(np.float32, copy=False),
        spacing=tuple(float(s) for s in spacing),
        affine=lps_affine(shape, spacing),
        modality="CT",
        meta={"phantom_seed": int(seed), "findings": list(present)},
    )
    out_masks = {k: masks[k] for k in FINDINGS if k in masks}
    out_masks.update({f"anatomy/{k}": v for k, v in anatomy.items()})
    return ChestPhantom(
        volume=volume,
        masks=out_masks,
        labels={f: int(f in present) for f in FINDINGS},
        landmarks=landmarks,
        seed=int(seed),
        params=params,
        findings=present,
    )
