"""Typed config of Ark pretraining (``configs/ark/*.yaml``).

Ark: Ma et al., "Foundation Ark: Accruing and Reusing Knowledge for Superior and Robust
Performance", MICCAI 2023 (official code jlianglab/Ark). Defaults are the published values
(docs/METHODS.md §2); the ``tiny`` preset shrinks them for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..settings import LoopConfig, OptimConfig


@dataclass
class ArkDatasetConfig:
    """One labelled dataset: its reader, its label policies and its head.

    Attributes:
        name: an ``imaging.datasets.build_dataset`` reader (``chexpert``, ``mimic_cxr``,
            ``chestxray14``, ``rsna_pneumonia``, ``vindr_cxr``, ``shenzhen``, ``synth_cxpt``, ...).
        head: the head's name (default: ``name``); heads follow the order of ``datasets``.
        root: the dataset folder (real readers).
        train_split / val_split / test_split: split names of the reader.
        reader: extra reader keyword arguments — the label policies are data, e.g.
            ``{uncertain: lsr_ones}`` for CheXpert (U(0.55, 0.85), as published),
            ``{uncertain: ones}`` for MIMIC, ``{classes: ark}`` for VinDr's 6-way head.
        per_split: reader arguments for one split only, e.g. ``{val: {n: 64}}`` (synthetic
            datasets take their size ``n`` per split).
        missing: labels the reader marks unknown (mask 0: blank or ignored): ``zero`` trains them
            as negatives, as published; ``mask`` leaves them out of the loss (no gradient).
        task: ``multilabel`` (sigmoid per label) or ``multiclass`` (one-hot target, e.g. RSNA's
            3 classes; trained with BCE as published, scored with softmax).
    """

    name: str = "synth_cxpt"
    head: str | None = None
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    reader: dict = field(default_factory=dict)
    per_split: dict = field(default_factory=dict)
    missing: Literal["zero", "mask"] = "zero"
    task: Literal["multilabel", "multiclass"] = "multilabel"

    @property
    def head_name(self) -> str:
        return self.head or self.name


@dataclass
class ArkDataConfig:
    """The datasets (visited in this order each round) and how images are loaded."""

    datasets: list[ArkDatasetConfig] = field(
        default_factory=lambda: [
            ArkDatasetConfig(name="synth_cxpt", reader={"uncertain": "lsr_ones"}),
            ArkDatasetConfig(name="synth_nih"),
            ArkDatasetConfig(name="synth_vindr"),
        ]
    )
    load_size: int = 256  # images are resized to load_size x load_size when read
    cache_dir: str | None = None  # synthetic renders; default <run_dir>/cache
    workers: int = 4  # threads decoding real images for one batch


@dataclass
class ArkViewsConfig:
    """Training views (albumentations-style, applied on the device, docs/METHODS.md §2.2)."""

    size: int = 224  # RandomResizedCrop output
    scale: tuple[float, float] = (0.08, 1.0)
    rotate: float = 10.0  # ShiftScaleRotate rotate_limit (degrees)
    photometric_p: float = 0.3  # OneOf(brightness/contrast, gamma), student only


@dataclass
class ArkModelConfig:
    backbone: str = "swin_base_patch4_window7_224"
    embed_dim: int = 1376
    projector: Literal["linear", "mlp", "none"] = "linear"


@dataclass
class ArkSchedule:
    """Teacher momentum and consistency weight, cosine over rounds x datasets (one entry per
    dataset epoch, Ark's ``ema_mode="epoch"``)."""

    momentum_start: float = 0.9
    momentum_end: float = 1.0
    consistency_start: float = 0.0
    consistency_end: float = 0.5


@dataclass
class ArkConfig:
    """Ark pretraining; ``loop.epochs`` counts rounds (each visits every dataset once)."""

    data: ArkDataConfig = field(default_factory=ArkDataConfig)
    model: ArkModelConfig = field(default_factory=ArkModelConfig)
    views: ArkViewsConfig = field(default_factory=ArkViewsConfig)
    schedule: ArkSchedule = field(default_factory=ArkSchedule)
    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
