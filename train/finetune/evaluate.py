"""Evaluate a fine-tuned run: cube metrics on a split, and for segmentation the Dice of full
test volumes segmented by sliding-window inference (stitched as the server stitches them:
:mod:`imaging.sliding`, probabilities blended, batch-independent normalisation)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.checkpoint import atomic_write_bytes, load_model
from models.unet3d import batch_independent

from ..config import load_config
from ..inference import sliding_window_inference
from ..metrics import dice, iou
from .config import FinetuneConfig
from .method import score_cubes
from .tasks import build_task


@torch.no_grad()
def evaluate_run(run_dir: str | Path, split: str = "test") -> dict:
    """Score ``run_dir/model.safetensors`` on ``split``; also written to ``eval_<split>.json``."""
    run_dir = Path(run_dir)
    cfg = load_config(FinetuneConfig, run_dir / "config.yaml")
    task = build_task(cfg.task.name, **cfg.task.args)
    model = load_model(run_dir / "model.safetensors").eval()
    cubes = getattr(task, split)
    result = {
        "task": task.name,
        "split": split,
        "n": len(cubes),
        **score_cubes(model, cubes, task.kind, cfg.eval.threshold, torch.device("cpu")),
    }
    volumes = getattr(task, "volumes_test", None) if split == "test" else None
    if task.kind == "segmentation" and volumes:
        # as an export serves it: batch-independent normalisation, probabilities blended
        net, _ = batch_independent(model, cfg.eval.batch_norm)
        dices, ious = [], []
        for x, mask in volumes:
            probs = sliding_window_inference(
                x[None],
                task.cube_size,
                lambda w: torch.sigmoid(net(w, return_logits=True)),
                overlap=cfg.eval.overlap,
                blend=cfg.eval.blend,
            )
            pred = probs >= cfg.eval.threshold
            dices.append(float(dice(pred, mask[None] >= 0.5).mean()))
            ious.append(float(iou(pred, mask[None] >= 0.5).mean()))
        result["volume_dice"] = sum(dices) / len(dices)
        result["volume_iou"] = sum(ious) / len(ious)
    atomic_write_bytes(run_dir / f"eval_{split}.json", json.dumps(result, indent=2).encode())
    return result
