"""Build the optimiser and its per-epoch schedule from :class:`~train.settings.OptimConfig`."""

from __future__ import annotations

import math

import torch

from .settings import OptimConfig


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimiser {cfg.name!r}")


def build_scheduler(optimizer, cfg: OptimConfig, epochs: int):
    """A scheduler stepped once per epoch (the released recipes all schedule per epoch)."""
    if cfg.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    warm = cfg.warmup_epochs
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def cosine(e: int) -> float:
        if warm and e < warm:
            return (e + 1) / warm
        span = max(1, epochs - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * max(0, e - warm) / span))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
