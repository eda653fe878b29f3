"""The phantom's coordinate frame and the vectorised drawing primitives organs are built from.

Anatomy is designed in a *canonical* frame (mm of a reference patient) that is stretched per
axis to fill the requested field of view, so any ``shape``/``spacing`` shows the whole thorax:

* ``Z`` 0..320 superior -> inferior (slice index ``d``; ``d = 0`` is the top slice),
* ``Y`` -160..160 anterior -> posterior (row index ``h``),
* ``X`` -160..160 patient right -> left (column ``w``, a DICOM axial image seen from the feet).

The patient frame is the canonical frame shifted and turned about ``Z`` by the sampled patient pose;
organs are written in patient coordinates.
"""

from __future__ import annotations

import numpy as np

#: canonical extent of the field of view along (Z, Y, X), in canonical mm
CANON_EXTENT = np.array([320.0, 320.0, 320.0])


class Grid:
    """Voxel grid ``(D, H, W)`` with the canonical and patient coordinates of every voxel centre.

    Args:
        shape: ``(D, H, W)``.
        spacing: physical voxel size ``(d, h, w)`` in mm.
        yaw_deg: patient rotation about the cranio-caudal axis (degrees).
        shift: patient ``(X, Y)`` offset in canonical mm.
    """

    def __init__(self, shape, spacing, yaw_deg: float = 0.0, shift=(0.0, 0.0)):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.vox = CANON_EXTENT / np.array(self.shape)  # canonical mm per voxel (d, h, w)
        #: physical mm per canonical mm along (d, h, w)
        self.scale = np.array(self.spacing) / self.vox
        self.yaw = np.deg2rad(yaw_deg)
        self.shift = np.asarray(shift, dtype=float)
        D, H, W = self.shape
        self.Z = ((np.arange(D) + 0.5) * self.vox[0]).astype(np.float32)[:, None, None]
        yc = ((np.arange(H) + 0.5) * self.vox[1] - 160.0).astype(np.float32)[:, None]
        xc = ((np.arange(W) + 0.5) * self.vox[2] - 160.0).astype(np.float32)[None, :]
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        # patient X/Y of each (h, w): rotate the shifted canonical position; shape (1, H, W)
        self.X = (c * (xc - shift[0]) + s * (yc - shift[1])).astype(np.float32)[None]
        self.Y = (-s * (xc - shift[0]) + c * (yc - shift[1])).astype(np.float32)[None]

    def to_voxel(self, pts) -> np.ndarray:
        """Patient ``(Z, Y, X)`` points ``(..., 3)`` -> continuous voxel indices ``(d, h, w)``."""
        pts = np.asarray(pts, dtype=float)
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        x = c * pts[..., 2] - s * pts[..., 1] + self.shift[0]
        y = s * pts[..., 2] + c * pts[..., 1] + self.shift[1]
        canon = np.stack([pts[..., 0], y + 160.0, x + 160.0], axis=-1)
        return canon / self.vox - 0.5

    def to_patient(self, idx) -> np.ndarray:
        """Continuous voxel indices ``(..., 3)`` -> patient ``(Z, Y, X)`` in canonical mm."""
        canon = (np.asarray(idx, dtype=float) + 0.5) * self.vox
        xc, yc = canon[..., 2] - 160.0 - self.shift[0], canon[..., 1] - 160.0 - self.shift[1]
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.stack([canon[..., 0], -s * xc + c * yc, c * xc + s * yc], axis=-1)

    def lookup(self, mask: np.ndarray, pts) -> np.ndarray:
        """Nearest-voxel value of ``mask`` at patient points ``(N, 3)``; False outside the grid."""
        idx = np.rint(self.to_voxel(pts)).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=-1)
        out = np.zeros(idx.shape[:-1], dtype=bool)
        i = idx[inside]
        out[inside] = mask[i[:, 0], i[:, 1], i[:, 2]]
        return out


def smoothstep(x, lo: float, hi: float):
    """0 below ``lo``, 1 above ``hi``, a smooth cubic ramp between (gentle organ tapers)."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def superellipse(X, Y, cx, cy, a, b, p: float = 2.0):
    """``(|X-cx|/a)^p + (|Y-cy|/b)^p``: below 1 inside the (rounded-rectangle-ish) cross-section."""
    return (np.abs(X - cx) / a) ** p + (np.abs(Y - cy) / b) ** p


def ellipsoid(grid: Grid, center, axes, rot: np.ndarray) -> np.ndarray:
    """Quadratic form of a rotated ellipsoid over the grid ``(D, H, W)``: below 1 inside.

    ``center`` and ``axes`` are patient ``(Z, Y, X)`` mm; ``rot`` (3, 3) maps ellipsoid-local axes
    to patient ``(Z, Y, X)`` (columns are the local axes).
    """
    dz, dy, dx = grid.Z - center[0], grid.Y - center[1], grid.X - center[2]
    q = np.zeros(np.broadcast_shapes(dz.shape, dy.shape), dtype=np.float32)
    for k in range(3):
        u = rot[0, k] * dz + rot[1, k] * dy + rot[2, k] * dx
        q += (u / axes[k]) ** 2
    return q


def polyline_points(ctrl, radii, step: float):
    """Sample a smooth curve through control points ``(N, 3)`` (Catmull-Rom).

    Samples are ``step`` mm apart, or a third of the radius for thick tubes (balls that close
    together already make a smooth tube).

    Returns the points ``(M, 3)`` and linearly interpolated radii ``(M,)``.
    """
    ctrl = np.asarray(ctrl, dtype=float)
    radii = np.asarray(radii, dtype=float)
    p = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    pts, rs = [], []
    for i in range(len(ctrl) - 1):
        p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
        local = max(step, min(radii[i], radii[i + 1]) / 3.0)
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / local)) + 1)
        t = np.linspace(0.0, 1.0, n)[:-1, None]
        seg = 0.5 * (
            2 * p1
            + (-p0 + p2) * t
            + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
            + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
        )
        pts.append(seg)
        rs.append(radii[i] + (radii[i + 1] - radii[i]) * t[:, 0])
    pts.append(ctrl[-1:])
    rs.append(radii[-1:])
    return np.vstack(pts), np.concatenate(rs)


def segment_points(p0, p1, r0: float, r1: float, step: float):
    """Points ``(M, 3)`` and radii ``(M,)`` every ``step`` mm along the segment p0 -> p1."""
    p0, p1 = np.asarray(p0, dtype=float), np.asarray(p1, dtype=float)
    n = max(2, int(np.ceil(np.linalg.norm(p1 - p0) / step)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return p0 + (p1 - p0) * t, r0 + (r1 - r0) * t[:, 0]


def splat_tubes(grid: Grid, pts, radii, out: np.ndarray | None = None) -> np.ndarray:
    """Partial-volume occupancy in [0, 1] of a union of balls (``pts`` patient mm, ``radii`` mm).

    Densely sampled balls along a centreline make a tube. Every ball touches only a small stencil
    of voxels, so the cost grows with the tube length, not with the volume.

    Returns:
        float32 ``(D, H, W)`` occupancy (``out`` updated in place with the maximum when given).
    """
    if out is None:
        out = np.zeros(grid.shape, dtype=np.float32)
    pts = np.asarray(pts, dtype=float).reshape(-1, 3)
    radii = np.asarray(radii, dtype=float).reshape(-1)
    if len(pts) == 0:
        return out
    vox = grid.vox
    edge = float(np.cbrt(np.prod(vox)))  # width of the soft partial-volume edge
    centers = grid.to_voxel(pts)
    # group balls by stencil size so that thin vessels do not pay for the aorta's stencil
    half = np.ceil((radii[:, None] + edge) / vox[None, :]).astype(int)  # (N, 3)
    keys = half[:, 0] * 10000 + half[:, 1] * 100 + half[:, 2]
    flat_out = out.reshape(-1)
    dims = np.array(grid.shape)
    for key in np.unique(keys):
        sel = keys == key
        k = half[sel][0]
        offs = np.stack(
            np.meshgrid(*[np.arange(-k[i], k[i] + 1) for i in range(3)], indexing="ij"), -1
        ).reshape(-1, 3)
        c = centers[sel]
        idx = np.rint(c).astype(int)[:, None, :] + offs[None]  # (n, K, 3)
        dist = np.linalg.norm((idx - c[:, None, :]) * vox, axis=-1)
        occ = np.clip((radii[sel][:, None] - dist) / edge + 0.5, 0.0, 1.0)
        ok = (occ > 0) & np.all((idx >= 0) & (idx < dims), axis=-1)
        flat = np.ravel_multi_index(tuple(idx[ok].T), grid.shape)
        np.maximum.at(flat_out, flat, occ[ok].astype(np.float32))
    return out


def _upsample_axis(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` from its coarse length to ``n`` samples."""
    m = a.shape[axis]
    x = np.linspace(0.0, m - 1.0, n)
    i0 = np.minimum(np.floor(x).astype(int), m - 2)
    t = (x - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n
    t = t.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - t) + np.take(a, i0 + 1, axis=axis) * t


def smooth_noise(rng: np.random.Generator, shape, cell_mm: float, vox) -> np.ndarray:
    """Zero-mean, unit-ish std band-limited noise ``(D, H, W)`` with features ~``cell_mm`` wide."""
    coarse = [max(2, int(np.ceil(n * v / cell_mm)) + 2) for n, v in zip(shape, vox, strict=True)]
    a = rng.standard_normal(coarse, dtype=np.float32)
    for axis, n in enumerate(shape):
        a = _upsample_axis(a, n, axis)
    return (a / 0.67).astype(np.float32)  # linear interpolation shrinks the std to ~2/3
