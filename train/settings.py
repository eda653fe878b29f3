"""Settings shared by every method: the loop, the optimiser and the schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class LoopConfig:
    """How long and how the loop runs; checkpoints and logs."""

    epochs: int = 10
    batch_size: int = 6  # per process
    steps_per_epoch: int | None = None  # None: one pass over the training data
    patience: int | None = 50  # early stopping on validation loss, in epochs; None: off
    seed: int = 0
    checkpoint_every: int = 50  # steps; an epoch end always checkpoints
    log_every: int = 10  # steps
    keep_checkpoints: int = 2
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast, CUDA only
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True


@dataclass
class OptimConfig:
    """Optimiser and per-epoch learning-rate schedule."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["none", "step", "cosine"] = "step"
    step_size: int = 40  # epochs (StepLR)
    gamma: float = 0.5
    warmup_epochs: int = 0  # cosine only: linear ramp to lr over these epochs
    min_lr: float = 0.0  # cosine only: the floor the cosine decays to


@dataclass
class RunConfig:
    """The parts of every method's config that the engine reads."""

    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
