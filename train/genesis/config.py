"""Typed config of Models Genesis pretraining (``configs/genesis/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kernels.genesis import GenesisTransformConfig

from ..settings import LoopConfig, OptimConfig


@dataclass
class GenesisDataConfig:
    """Where CT volumes come from and how cubes are cut from them."""

    source: Literal["synthetic", "luna16", "files"] = "synthetic"
    root: str | None = None  # LUNA16 folder holding subset0..subset9
    train_subsets: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    val_subsets: list[int] = field(default_factory=lambda: [5, 6])
    train_files: list[str] = field(default_factory=list)  # NIfTI, .mhd or DICOM series folders
    val_files: list[str] = field(default_factory=list)
    synthetic_train: int = 8  # phantom volumes (seeds 0..n-1)
    synthetic_val: int = 2  # phantom volumes (seeds 10_000..)
    phantom_shape: tuple[int, int, int] = (64, 128, 128)  # (D, H, W)
    phantom_spacing: tuple[float, float, float] = (2.5, 2.5, 2.5)
    cube_size: tuple[int, int, int] = (64, 64, 32)  # rows, cols, depth
    cubes_per_volume: int = 32
    border_xy: int = 100
    border_z: int = 30
    dense_max: float = 0.15
    cache_dir: str | None = None  # default: <run_dir>/cache
    extract_seed: int = 1  # the release seeds its generator with 1


@dataclass
class GenesisModelConfig:
    # Restoration pretraining trains the U-Net only; runs saved before this was fixed record
    # its registry name here, so the field stays readable (None: the U-Net).
    name: str | None = None
    norm: Literal["batch_stats", "standard"] = "batch_stats"  # released: batch statistics always


@dataclass
class GenesisConfig:
    """Pretraining: data, model, transforms, loop and optimiser (paper values as defaults)."""

    data: GenesisDataConfig = field(default_factory=GenesisDataConfig)
    model: GenesisModelConfig = field(default_factory=GenesisModelConfig)
    transform: GenesisTransformConfig = field(default_factory=GenesisTransformConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
