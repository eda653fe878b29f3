"""CT cube extraction for Models Genesis pretraining, and a memory-mapped cube cache.

Follows the official generator (``infinite_generator_3D.py`` of MrGiovanni/ModelsGenesis): HU
clipped to [-1000, 1000] and scaled to [0, 1]; the volume is indexed ``(x, y, z)`` (our
``(D, H, W)`` voxels transposed ``(2, 1, 0)``) so cubes are rows × cols × depth = 64 × 64 × 32 as in
the released weights; random windows start ``border_xy`` voxels from the in-plane borders and
``border_z`` from each end; a window is rejected when its dense-tissue score exceeds ``dense_max``
(0.15) of its voxels, which keeps mostly lung/air cubes; up to ``50 · n`` attempts per volume.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imaging.image import Volume

HU_MIN, HU_MAX = -1000.0, 1000.0
# HU -150 on the [0, 1] scale: the official "HU_thred" for dense tissue.
DENSE_THRESHOLD = (-150.0 - HU_MIN) / (HU_MAX - HU_MIN)
LOOKAHEAD = 3  # the official len_depth: how many slices deeper the density score looks


@dataclass(frozen=True)
class CubeSpec:
    """Where and how cubes are cut (the official values are the defaults)."""

    size: tuple[int, int, int] = (64, 64, 32)  # rows (x), cols (y), depth (z)
    per_volume: int = 32
    border_xy: int = 100
    border_z: int = 30
    dense_max: float = 0.15


def normalize_hu(voxels: np.ndarray) -> np.ndarray:
    """Clip HU to [-1000, 1000] and scale to [0, 1] (float32)."""
    out = (np.clip(voxels, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    return out.astype(np.float32)


def dense_score(window: np.ndarray, depth: int) -> np.ndarray:
    """Official density map of a ``(X, Y, depth + LOOKAHEAD)`` window, shape ``(X, Y, depth)``.

    1 where the voxel itself is dense, 0.5 where the next slice is the first dense one, else 0
    (a hit two slices deeper scores 0, as ``1 - k / (LOOKAHEAD - 1)`` gives in the release).
    """
    dense = window >= DENSE_THRESHOLD
    here = dense[:, :, :depth]
    next_ = dense[:, :, 1 : depth + 1]
    return here.astype(np.float32) + 0.5 * (~here & next_)


def extract_cubes(volume: Volume, spec: CubeSpec, rng: np.random.Generator) -> np.ndarray:
    """Cut up to ``spec.per_volume`` accepted cubes, ``(n, X, Y, Z)`` float32 in [0, 1].

    Returns an empty array when the volume is too small for the borders (the release skips it).
    """
    xyz = normalize_hu(volume.voxels.transpose(2, 1, 0))
    sx, sy, sz = xyz.shape
    cx, cy, cz = spec.size
    hi_x = sx - cx - 1 - spec.border_xy
    hi_y = sy - cy - 1 - spec.border_xy
    hi_z = sz - cz - LOOKAHEAD - 1 - spec.border_z
    out = np.zeros((0, cx, cy, cz), np.float32)
    if hi_x < spec.border_xy or hi_y < spec.border_xy or hi_z < spec.border_z:
        return out
    cubes = []
    limit = spec.dense_max * cx * cy * cz
    for _ in range(50 * spec.per_volume):
        x = int(rng.integers(spec.border_xy, hi_x + 1))  # inclusive bounds, as random.randint
        y = int(rng.integers(spec.border_xy, hi_y + 1))
        z = int(rng.integers(spec.border_z, hi_z + 1))
        window = xyz[x : x + cx, y : y + cy, z : z + cz + LOOKAHEAD]
        if dense_score(window, cz).sum() > limit:
            continue
        cubes.append(window[:, :, :cz].copy())
        if len(cubes) == spec.per_volume:
            break
    return np.stack(cubes) if cubes else out


def build_cube_cache(
    path: Path,
    volumes: Iterable[Callable[[], Volume]],
    spec: CubeSpec,
    seed: int,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> np.ndarray:
    """Extract cubes from every volume once and keep them in a ``.npy`` memmap at ``path``.

    The file is written under a temporary name and renamed, so an interrupted build never leaves
    a half-written cache; a later call with the same ``path`` only memory-maps it.

    Returns:
        ``(N, 1, X, Y, Z)`` float32 read-only memmap.
    """
    path = Path(path)
    if path.is_file():
        return np.load(path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    chunks = [extract_cubes(load(), spec, rng) for load in progress(list(volumes))]
    cubes = np.concatenate(chunks) if chunks else np.zeros((0, *spec.size), np.float32)
    if len(cubes) == 0:
        raise ValueError("no cube passed the size and density rules: check the volumes and borders")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")  # np.save keeps a .npy name
    np.save(tmp, cubes[:, None])
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def cache_key(*parts: object) -> str:
    """A short stable hash naming a cache file after everything that determines its content."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]
