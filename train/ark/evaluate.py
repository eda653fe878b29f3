"""Score an Ark model per dataset: per-class AUROC and their mean (optionally ten-crop test).

Evaluation views follow the release: Resize 256 → CenterCrop 224 (scaled to the model's size),
or Resize 256 → TenCrop 224 with the per-crop probabilities averaged. Multi-label heads are scored
with sigmoid probabilities; multi-class heads (RSNA's 3 classes) with softmax, plus accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import atomic_write_bytes, load_model

from ..config import load_config
from ..metrics import roc_auc
from ..views2d import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    average_crops,
    normalize,
    resize_center_crop,
    ten_crop,
)
from .config import ArkConfig
from .data import build_sources, eval_resize


@torch.no_grad()
def predict(
    model, source, device, *, size: int, ten_crop_test: bool, batch_size: int = 32, stats=None
):
    """Probabilities ``(N, C)`` of ``source``'s head over every item, as a NumPy array.

    ``stats``: ``(mean, std)`` the model was trained with (None: ImageNet's, as Ark's release).
    """
    mean, std = stats or (IMAGENET_MEAN, IMAGENET_STD)
    model.eval()
    out = []
    for start in range(0, len(source), batch_size):
        images, _, _, head = source.batch(list(range(start, min(start + batch_size, len(source)))))
        images = images.to(device)
        if ten_crop_test:
            x = normalize(ten_crop(images, eval_resize(size), size), mean, std)
        else:
            x = normalize(resize_center_crop(images, eval_resize(size), size), mean, std)
        _, logits = model(x, head=int(head[0]))
        logits = logits.float()
        probs = logits.softmax(-1) if source.task == "multiclass" else logits.sigmoid()
        if ten_crop_test:
            probs = average_crops(probs, 10)
        out.append(probs.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, source.num_classes), np.float32)


def score_probs(probs: np.ndarray, target: np.ndarray, mask: np.ndarray, names, task: str):
    """Per-class AUROC over the items whose label is known and hard (0 or 1); NaN (and left out
    of the mean) for a class with only one label value."""
    per_class = {}
    for c, name in enumerate(names):
        keep = (mask[:, c] > 0) & ((target[:, c] == 0) | (target[:, c] == 1))
        labels = target[keep, c]
        if labels.size == 0 or labels.min() == labels.max():
            per_class[name] = math.nan
        else:
            per_class[name] = float(roc_auc(probs[keep, c], labels))
    valid = [v for v in per_class.values() if not math.isnan(v)]
    result = {"auroc": per_class, "mean_auroc": float(np.mean(valid)) if valid else math.nan}
    if task == "multiclass":
        result["accuracy"] = float((probs.argmax(1) == target.argmax(1)).mean())
    return result


def score_source(probs: np.ndarray, source) -> dict:
    """:func:`score_probs` of ``probs`` against ``source``'s own labels; where the source knows
    the clean labels (synthetic data), also against those under ``"truth"``."""
    result = score_probs(
        probs, np.asarray(source.target), np.asarray(source.mask), source.label_names, source.task
    )
    truth = getattr(source, "truth", None)
    if truth is not None:
        result["truth"] = score_probs(
            probs, truth, np.ones_like(truth), source.label_names, source.task
        )
    result["n"] = len(source)
    return result


def score_sources(model, sources, device, *, size: int, ten_crop: bool = False, stats=None) -> dict:
    """``{"datasets": {head name: scores}, "mean_auroc": mean over datasets}`` (``stats`` as in
    :func:`predict`)."""
    per = {}
    for source in sources:
        probs = predict(model, source, device, size=size, ten_crop_test=ten_crop, stats=stats)
        per[source.name] = score_source(probs, source)
    means = [r["mean_auroc"] for r in per.values() if not math.isnan(r["mean_auroc"])]
    return {"datasets": per, "mean_auroc": float(np.mean(means)) if means else math.nan}


def evaluate_ark_run(run_dir: str | Path, split: str = "test", ten_crop: bool = False) -> dict:
    """Score ``run_dir/model.safetensors`` (the teacher) on every dataset's ``split``; written to
    ``eval_<split>.json``."""
    run_dir = Path(run_dir)
    cfg = load_config(ArkConfig, run_dir / "config.yaml")
    model = load_model(run_dir / "model.safetensors").eval()
    cache = cfg.data.cache_dir or str(run_dir / "cache")
    sources = build_sources(cfg.data, cache, splits=(split,), show=False)[split]
    result = {"split": split, "ten_crop": ten_crop}
    result |= score_sources(model, sources, torch.device("cpu"), size=cfg.views.size,
                            ten_crop=ten_crop)  # fmt: skip
    atomic_write_bytes(run_dir / f"eval_{split}.json", json.dumps(result, indent=2).encode())
    return result
