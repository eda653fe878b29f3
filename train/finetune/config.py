"""Typed config of fine-tuning on a 3D task (``configs/genesis/finetune_*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..settings import LoopConfig, OptimConfig


@dataclass
class TaskConfig:
    name: str = "synthetic_nodule_seg"  # a key of train.finetune.tasks.TASKS
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of its builder


@dataclass
class FinetuneModelConfig:
    norm: Literal["batch_stats", "standard"] = "batch_stats"
    # "scratch", or "genesis:<run dir | .safetensors | released Genesis_Chest_CT.pt>"
    init: str = "scratch"
    freeze_encoder: bool = False


@dataclass
class SegLossConfig:
    dice_weight: float = 1.0  # soft Dice with smooth 1, as the Models Genesis examples
    bce_weight: float = 1.0


@dataclass
class EvalConfig:
    threshold: float = 0.5
    overlap: float = 0.5  # sliding-window overlap on full volumes
    blend: Literal["constant", "gaussian"] = "gaussian"
    # how batch-statistics normalisation is made batch independent for whole volumes (the
    # export records the same choice: models.unet3d.batch_independent)
    batch_norm: Literal["per_sample", "running"] = "per_sample"


def _finetune_optim() -> OptimConfig:
    # The official fine-tuning configs (keras/downstream_tasks/config.py) use Adam lr 1e-3.
    return OptimConfig(name="adam", lr=1e-3, scheduler="none")


def _finetune_loop() -> LoopConfig:
    return LoopConfig(epochs=50, batch_size=8, patience=10, checkpoint_every=100)


@dataclass
class FinetuneConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loop: LoopConfig = field(default_factory=_finetune_loop)
    optim: OptimConfig = field(default_factory=_finetune_optim)
