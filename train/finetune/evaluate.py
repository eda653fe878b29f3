"""Evaluate a fine-tuned run: cube metrics on a split, and for segmentation the Dice of full
test volumes segmented by sliding-window inference (stitched as the server stitches them:
:mod:`imaging.sliding`, probabilities blended, batch-independent normalisation).

Whole volumes hold far more background than the nodule-centred training cubes, so a threshold
that suits cubes marks false positives across a volume (bench/RESULTS.md, Genesis).
:func:`calibrate_threshold` picks the threshold with the best mean Dice on the *validation*
volumes and writes it into the run's best weights (the card the export serves), so evaluation
and serving use the same one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.checkpoint import (
    WeightsInfo,
    atomic_write_bytes,
    load_weights,
    model_from_weights,
    save_weights,
)
from models.unet3d import batch_independent

from ..config import load_config
from ..inference import sliding_window_inference
from ..metrics import dice, iou
from .config import FinetuneConfig
from .method import score_cubes
from .tasks import build_task

#: Thresholds :func:`calibrate_threshold` tries: 0.05, 0.10, ..., 0.95.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@torch.no_grad()
def volume_probabilities(model, volumes, cube_size, ev) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(probabilities, mask)`` of each whole volume, as an export serves it: batch-independent
    normalisation (``ev.batch_norm``), sliding windows blended with ``ev.blend``."""
    net, _ = batch_independent(model, ev.batch_norm)
    out = []
    for x, mask in volumes:
        probs = sliding_window_inference(
            x[None],
            cube_size,
            lambda w: torch.sigmoid(net(w, return_logits=True)),
            overlap=ev.overlap,
            blend=ev.blend,
        )
        out.append((probs, mask[None] >= 0.5))
    return out


def volume_scores(probs_masks, threshold: float) -> dict:
    """Mean whole-volume Dice and IoU at ``threshold``."""
    dices = [float(dice(p >= threshold, m).mean()) for p, m in probs_masks]
    ious = [float(iou(p >= threshold, m).mean()) for p, m in probs_masks]
    return {"volume_dice": sum(dices) / len(dices), "volume_iou": sum(ious) / len(ious)}


def served_threshold(info: WeightsInfo, cfg: FinetuneConfig) -> float:
    """The threshold in the weights' card ``info`` (what an export serves), else the config's."""
    return float(info.metadata.get("inference", {}).get("threshold", cfg.eval.threshold))


def calibrate_threshold(run_dir: str | Path) -> dict:
    """Pick the whole-volume threshold with the best mean Dice on the validation volumes (ties:
    the one nearest 0.5) and write it into ``model.safetensors``' card; returns the choice and
    the validation Dice of every threshold tried.

    Raises:
        ValueError: the run's task has no validation volumes (not a synthetic segmentation).
    """
    run_dir = Path(run_dir)
    cfg = load_config(FinetuneConfig, run_dir / "config.yaml")
    task = build_task(cfg.task.name, **cfg.task.args)
    if task.kind != "segmentation" or not task.volumes_val:
        raise ValueError(f"{run_dir}: task {task.name} has no validation volumes to calibrate on")
    path = run_dir / "model.safetensors"
    state, info = load_weights(path)
    model = model_from_weights(state, info, path).eval()
    probs = volume_probabilities(model, task.volumes_val, task.cube_size, cfg.eval)
    grid = {t: volume_scores(probs, t)["volume_dice"] for t in THRESHOLDS}
    best = max(grid.values())
    chosen = min((t for t, d in grid.items() if d == best), key=lambda t: abs(t - 0.5))
    card = dict(info.metadata.get("inference", {})) | {"threshold": chosen}
    metadata = info.metadata | {"inference": card, "threshold_from": "validation volumes"}
    save_weights(state, path, model_name=info.model_name, model_args=info.model_args,
                 metadata=metadata)  # fmt: skip
    return {"threshold": chosen, "val_volume_dice": best, "n_val_volumes": len(probs),
            "grid": {str(t): round(d, 4) for t, d in grid.items()}}  # fmt: skip


@torch.no_grad()
def evaluate_run(run_dir: str | Path, split: str = "test") -> dict:
    """Score ``run_dir/model.safetensors`` on ``split`` at the threshold its card serves; also
    written to ``eval_<split>.json``."""
    run_dir = Path(run_dir)
    cfg = load_config(FinetuneConfig, run_dir / "config.yaml")
    task = build_task(cfg.task.name, **cfg.task.args)
    path = run_dir / "model.safetensors"
    state, info = load_weights(path)
    model = model_from_weights(state, info, path).eval()
    threshold = served_threshold(info, cfg)
    cubes = getattr(task, split)
    result = {
        "task": task.name,
        "split": split,
        "n": len(cubes),
        "threshold": threshold,
        **score_cubes(model, cubes, task.kind, threshold, torch.device("cpu")),
    }
    volumes = getattr(task, "volumes_test", None) if split == "test" else None
    if task.kind == "segmentation" and volumes:
        probs = volume_probabilities(model, volumes, task.cube_size, cfg.eval)
        result |= volume_scores(probs, threshold)
    atomic_write_bytes(run_dir / f"eval_{split}.json", json.dumps(result, indent=2).encode())
    return result
