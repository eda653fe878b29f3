"""Volumes for Models Genesis pretraining → cached cubes.

Any source the imaging layer reads works: LUNA16 ``subsetK/*.mhd``, NIfTI, DICOM series folders,
or the synthetic phantoms. Cubes are extracted once into a memmapped ``.npy`` cache named after the
data settings, so later epochs and runs never re-read the scans.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imaging.image import Volume
from imaging.phantoms import make_chest_ct
from imaging.series import read_series, read_volume

from ..data.cubes import CubeSpec, build_cube_cache, cache_key
from .config import GenesisDataConfig

SYNTHETIC_VAL_SEED = 10_000


class CubeArray:
    """``(N, 1, X, Y, Z)`` cubes in [0, 1] with batched access by index."""

    def __init__(self, cubes: np.ndarray) -> None:
        self.cubes = cubes

    def __len__(self) -> int:
        return len(self.cubes)

    def batch(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.cubes[np.asarray(indices)]))


def _read_any(path: str) -> Volume:
    p = Path(path)
    return read_series(p) if p.is_dir() else read_volume(p)


def _loaders(cfg: GenesisDataConfig, split: str) -> list[Callable[[], Volume]]:
    if cfg.source == "synthetic":
        n = cfg.synthetic_train if split == "train" else cfg.synthetic_val
        base = 0 if split == "train" else SYNTHETIC_VAL_SEED
        return [
            partial(
                lambda s: make_chest_ct(s, cfg.phantom_shape, cfg.phantom_spacing).volume, base + i
            )
            for i in range(n)
        ]
    if cfg.source == "luna16":
        if not cfg.root:
            raise ValueError("data.root must point at the LUNA16 folder (subset0..subset9)")
        subsets = cfg.train_subsets if split == "train" else cfg.val_subsets
        files = sorted(f for k in subsets for f in (Path(cfg.root) / f"subset{k}").glob("*.mhd"))
        if not files:
            raise FileNotFoundError(f"no .mhd files in {cfg.root}/subset{subsets}")
        return [partial(read_volume, f) for f in files]
    files = cfg.train_files if split == "train" else cfg.val_files
    if not files:
        raise ValueError(f"data.{split}_files is empty")
    return [partial(_read_any, f) for f in files]


def load_cubes(cfg: GenesisDataConfig, split: str, cache_dir: Path, progress: bool) -> CubeArray:
    """Build (once) or open the cube cache of ``split`` ("train" or "val")."""
    spec = CubeSpec(
        tuple(cfg.cube_size), cfg.cubes_per_volume, cfg.border_xy, cfg.border_z, cfg.dense_max
    )
    key = cache_key(
        split,
        cfg.source,
        cfg.root,
        cfg.train_subsets,
        cfg.val_subsets,
        cfg.train_files,
        cfg.val_files,
        cfg.synthetic_train,
        cfg.synthetic_val,
        cfg.phantom_shape,
        cfg.phantom_spacing,
        spec,
        cfg.extract_seed,
    )
    path = cache_dir / f"genesis_{split}_{key}.npy"
    bar = partial(tqdm, desc=f"extracting {split} cubes", disable=not progress)
    seed = cfg.extract_seed + (0 if split == "train" else 1)
    return CubeArray(build_cube_cache(path, _loaders(cfg, split), spec, seed, progress=bar))
