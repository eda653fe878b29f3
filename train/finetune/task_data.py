"""Data behind the fine-tuning tasks: array-backed splits, cube cropping, cube extraction.

Every cube is ``(X, Y, Z)`` = rows × cols × depth, the ``(D, H, W)`` voxels transposed
``(2, 1, 0)`` as in :mod:`train.data.cubes`, with HU mapped to [0, 1] by
:func:`~train.data.cubes.normalize_hu`. A cube "centred" on voxel ``c`` starts at
``c - size // 2``, so ``c`` lands on index ``size // 2``; parts outside the volume are filled
with 0 (air, -1000 HU).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from imaging.datasets.base import read_volume_hu, stable_seed
from imaging.phantoms import make_chest_ct
from train.data.cubes import normalize_hu


class ArraySplit:
    """One split of cubes held in arrays (in memory or ``.npy`` memmaps).

    Args:
        x: ``(N, X, Y, Z)`` or ``(N, 1, X, Y, Z)`` cubes, [0, 1] (or HU with ``hu=True``).
        y: segmentation: masks shaped like ``x``; classification: ``(N,)`` or ``(N, 1)`` 0/1.
        kind: "segmentation" or "classification".
        hu: ``x`` holds HU: each batch goes through ``normalize_hu``.
        meta: per-cube provenance arrays (e.g. ``seed``, ``start``), each indexed like ``x``.
    """

    def __init__(self, x, y, kind: str, *, hu: bool = False, meta: dict | None = None) -> None:
        if kind not in ("segmentation", "classification"):
            raise ValueError(f"kind must be 'segmentation' or 'classification', got {kind!r}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} cubes but {len(y)} targets")
        if x.ndim not in (4, 5) or (x.ndim == 5 and x.shape[1] != 1):
            raise ValueError(f"cubes must be (N, X, Y, Z) or (N, 1, X, Y, Z), got {x.shape}")
        if kind == "segmentation" and y.shape[-3:] != x.shape[-3:]:
            raise ValueError(f"mask shape {y.shape} does not match cube shape {x.shape}")
        self.x, self.y, self.kind, self.hu = x, y, kind, hu
        self.meta = meta or {}

    def __len__(self) -> int:
        return len(self.x)

    @property
    def cube_size(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x.shape[-3:])  # type: ignore[return-value]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cubes ``(B, 1, X, Y, Z)`` float32 in [0, 1] and targets: masks ``(B, 1, X, Y, Z)``
        float32 0/1 (segmentation) or labels ``(B, 1)`` float32 0/1 (classification)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        x = np.asarray(self.x[idx], dtype=np.float32)
        x = normalize_hu(x) if self.hu else x
        x = x.reshape(len(idx), 1, *x.shape[-3:])
        y = np.asarray(self.y[idx])
        if self.kind == "segmentation":
            y = (y > 0.5).astype(np.float32).reshape(len(idx), 1, *y.shape[-3:])
        else:
            y = (y.reshape(len(idx), -1)[:, :1] > 0.5).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value=0) -> np.ndarray:
    """``array[s0:s0+n0, s1:s1+n1, s2:s2+n2]``, ``pad_value`` wherever that leaves the array."""
    out = np.full(tuple(size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape, strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def centred_start(centre: Sequence[float], size: Sequence[int]) -> np.ndarray:
    """Start of the cube of ``size`` whose voxel ``size // 2`` is ``round(centre)``."""
    return np.rint(np.asarray(centre, float)).astype(int) - np.asarray(size) // 2


def inside_start(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """``start`` moved so the cube lies inside ``shape`` (centred where the axis is too short)."""
    start, size, shape = (np.asarray(v, int) for v in (start, size, shape))
    return np.where(
        shape >= size, np.clip(start, 0, np.maximum(shape - size, 0)), (shape - size) // 2
    )


def phantom_xyz(seed: int, shape, spacing, diameter_mm, count) -> tuple:
    """A nodule phantom as ``(x [0,1] float32, nodule mask bool, lung mask bool, centres)``, all
    ``(X, Y, Z)``; ``centres`` is ``(K, 3)`` nodule centre voxels in ``(x, y, z)``."""
    p = make_chest_ct(
        seed,
        shape=tuple(shape),
        spacing=tuple(spacing),
        findings=("nodule",),
        nodule_diameter_mm=tuple(diameter_mm),
        nodule_count=tuple(count),
    )
    x = normalize_hu(p.volume.voxels.transpose(2, 1, 0))
    mask = np.ascontiguousarray(p.masks["nodule"].transpose(2, 1, 0))
    lungs = np.ascontiguousarray(p.masks["anatomy/lungs"].transpose(2, 1, 0))
    centres = [np.asarray(n["center_voxel"], float)[::-1] for n in p.params.get("nodules", [])]
    centres = np.rint(np.array(centres).reshape(-1, 3)).astype(int)
    centres = np.array([c for c in centres if mask[tuple(c)]], int).reshape(-1, 3)
    return x, mask, lungs, centres


def _jitter(rng: np.random.Generator, amount: Sequence[int]) -> np.ndarray:
    return np.array([rng.integers(-a, a + 1) for a in amount], int)


def _random_voxel(rng: np.random.Generator, where: np.ndarray) -> np.ndarray:
    coords = np.argwhere(where)
    if len(coords) == 0:
        coords = np.argwhere(np.ones_like(where))
    return coords[rng.integers(len(coords))]


def segmentation_cubes(
    vol, rng, size, jitter, per_nodule: int, random_cubes: int, background_cubes: int = 0
) -> list:
    """``(start, cube, mask cube)`` tuples: ``per_nodule`` jittered cubes around each nodule
    (kept inside the volume), ``random_cubes`` cubes centred on random lung voxels and
    ``background_cubes`` centred on random voxels anywhere (body wall, mediastinum, air: what a
    sliding window over the whole volume mostly sees)."""
    x, mask, lungs, centres = vol
    starts = [
        centred_start(c + _jitter(rng, jitter), size) for c in centres for _ in range(per_nodule)
    ]
    starts += [centred_start(_random_voxel(rng, lungs), size) for _ in range(random_cubes)]
    anywhere = np.ones_like(lungs)
    starts += [centred_start(_random_voxel(rng, anywhere), size) for _ in range(background_cubes)]
    starts = [inside_start(s, size, x.shape) for s in starts]
    return [(s, crop(x, s, size), crop(mask, s, size)) for s in starts]


def classification_cubes(vol, rng, size, jitter, per_nodule: int, attempts: int = 200) -> list:
    """Balanced ``(start, cube, label)`` tuples: positives centred on a nodule voxel near each
    nodule centre (``jitter`` voxels at most), negatives centred on lung voxels whose whole cube
    holds no nodule voxel. Cubes may reach outside the volume (zero padded)."""
    x, mask, lungs, centres = vol
    pos = []
    for c in centres:
        for _ in range(per_nodule):
            centre = c + _jitter(rng, jitter)
            inside = np.all((centre >= 0) & (centre < x.shape))
            pos.append(centred_start(centre if inside and mask[tuple(centre)] else c, size))
    neg = []
    for _ in range(attempts):
        if len(neg) == len(pos):
            break
        s = centred_start(_random_voxel(rng, lungs & ~mask), size)
        if not crop(mask, s, size).any():
            neg.append(s)
    pos = pos[: len(neg)]  # keep the classes balanced when negatives are scarce
    return [(s, crop(x, s, size), 1) for s in pos] + [(s, crop(x, s, size), 0) for s in neg]


def phantom_split(
    kind: str,
    phantom_seeds: Sequence[int],
    seed: int,
    size: tuple,
    jitter: tuple,
    *,
    phantom_shape,
    phantom_spacing,
    nodule_diameter_mm,
    nodule_count,
    cubes_per_nodule: int,
    random_cubes: int,
    background_cubes: int = 0,
    keep_volumes: bool = False,
) -> tuple[ArraySplit, list]:
    """Cubes of the phantoms ``phantom_seeds`` as one split, and (``keep_volumes``) the whole
    volumes and nodule masks as ``(1, X, Y, Z)`` float32 tensors. The cube generator of each
    phantom is seeded by ``(seed, phantom seed)``; ``meta`` records ``seed`` and ``start``."""
    xs, ys, starts, seeds, volumes = [], [], [], [], []
    for ps in phantom_seeds:
        vol = phantom_xyz(ps, phantom_shape, phantom_spacing, nodule_diameter_mm, nodule_count)
        rng = np.random.default_rng([seed, ps])
        if kind == "segmentation":
            items = segmentation_cubes(
                vol, rng, size, jitter, cubes_per_nodule, random_cubes, background_cubes
            )
        else:
            items = classification_cubes(vol, rng, size, jitter, cubes_per_nodule)
        if keep_volumes:
            volumes.append(
                (torch.from_numpy(vol[0][None]), torch.from_numpy(vol[1][None] * 1.0).float())
            )
        for start, cube, target in items:
            starts.append(start)
            xs.append(cube)
            ys.append(target)
            seeds.append(ps)
    x = np.stack(xs)[:, None] if xs else np.zeros((0, 1, *size), np.float32)
    if kind == "segmentation":
        y = np.stack(ys)[:, None].astype(np.float32) if ys else np.zeros_like(x)
    else:
        y = np.asarray(ys, np.float32).reshape(-1, 1)
    meta = {"seed": np.asarray(seeds, int), "start": np.asarray(starts, int).reshape(-1, 3)}
    return ArraySplit(x, y, kind, meta=meta), volumes


def luna_selection(ds, max_negatives: int | None, seed: int) -> list:
    """``(path, [candidate, ...])`` per scan: every positive, negatives subsampled per scan by a
    generator seeded from ``(seed, seriesuid)``; file order kept."""
    out = []
    for entry in ds.entries:
        cands = entry.meta["candidates"]
        neg = [i for i, c in enumerate(cands) if c["class"] == 0]
        if max_negatives is not None and len(neg) > max_negatives:
            rng = np.random.default_rng(
                stable_seed("luna16_candidates", seed, entry.meta["seriesuid"])
            )
            neg = sorted(rng.choice(neg, size=max_negatives, replace=False).tolist())
        keep = sorted({i for i, c in enumerate(cands) if c["class"] != 0} | set(neg))
        if keep:
            out.append((entry.path, [cands[i] for i in keep]))
    return out


def luna_fill(selection: list, size: tuple) -> Callable[[np.ndarray], None]:
    """A function writing the cube of every selected candidate into rows of ``(N, 1, *size)``,
    one scan read at a time."""

    def fill(out: np.ndarray) -> None:
        row = 0
        for path, cands in selection:
            xyz = normalize_hu(read_volume_hu(path).voxels.transpose(2, 1, 0))
            for c in cands:
                centre = c["voxel"][::-1]  # (d, h, w) → (x, y, z)
                out[row, 0] = crop(xyz, centred_start(centre, size), size)
                row += 1

    return fill


def write_npy_atomic(path: Path, shape: tuple, dtype, fill) -> np.ndarray:
    """Create ``path`` as a ``.npy`` of ``shape`` filled by ``fill(memmap)``, atomically.

    The array is written under a temporary name and renamed, so an interrupted build never
    leaves a half-written file; an existing ``path`` is only memory-mapped.

    Returns:
        The read-only memmap.
    """
    path = Path(path)
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == tuple(shape):
            return arr
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
    try:
        fill(out)
        out.flush()
    except BaseException:
        del out
        tmp.unlink(missing_ok=True)
        raise
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")
