"""One model on pooled labels: the baseline Ark's accrual has to beat (issue #18, item 4).

What a user without Ark would train on several datasets: map every dataset's labels onto one
union label set, train one backbone with one head on all items, and leave a label out of the loss
for the items of a dataset that does not have it. Labels are pooled by what they *mean*: two
labels are one output when ``labels.yaml`` reads them off the same phantom findings (CheXpert's
"Pleural Effusion", NIH's "Effusion" and VinDr's "Pleural effusion" are all ``effusion``), so this
needs the synthetic sources' rules; for real datasets such a mapping has to be written by hand.

Trained with :class:`~train.ark.transfer.TransferMethod`'s recipe (views, masked BCE, no teacher);
scored per dataset by reading each dataset's labels back out of the union.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imaging.datasets.labels import load_label_rules
from models.checkpoint import atomic_write_bytes, load_model

from .config import ArkDatasetConfig
from .data import ArraySource, build_source
from .evaluate import predict, score_source
from .transfer import TransferConfig, TransferMethod

POOLED = "pooled"


def union_labels(datasets: list[ArkDatasetConfig], label_names: list[tuple[str, ...]]):
    """``(union names, columns)``: one union label per distinct rule, named by its first
    spelling (datasets in order), and per dataset the union column of each of its labels.

    Raises:
        ValueError: a dataset without rules (a real reader) or with a one-class-per-image task.
    """
    rules: dict[str, int] = {}
    names: list[str] = []
    columns = []
    for ds, labels in zip(datasets, label_names, strict=True):
        if ds.task != "multilabel":
            raise ValueError(f"{ds.name}: pooling needs multi-label datasets, not {ds.task}")
        try:
            of = load_label_rules(ds.name)
        except KeyError as err:
            raise ValueError(
                f"{ds.name}: pooling labels needs each label's meaning (the rules of a synthetic "
                f"source in labels.yaml); map a real dataset's labels by hand ({err})"
            ) from None
        cols = []
        for label in labels:
            rule = " ".join(of[label].split())
            if rule not in rules:
                rules[rule] = len(names)
                names.append(label)
            cols.append(rules[rule])
        columns.append(cols)
    return tuple(names), columns


def pool_sources(parts: list[ArraySource], names, columns) -> ArraySource:
    """All ``parts``' items in one source over the union ``names``; a label a part does not have
    gets target 0 and mask 0 (no gradient); every item feeds head 0."""
    n = sum(len(p) for p in parts)
    target = np.zeros((n, len(names)), np.float32)
    mask = np.zeros((n, len(names)), np.float32)
    images, start = [], 0
    for part, cols in zip(parts, columns, strict=True):
        stop = start + len(part)
        target[start:stop, cols] = part.target
        mask[start:stop, cols] = part.mask
        images.append(np.asarray(part.images, np.float32))
        start = stop
    return ArraySource(POOLED, np.concatenate(images), target, mask, 0, names)


def pooled_config(datasets: list[ArkDatasetConfig], base: TransferConfig) -> TransferConfig:
    """``base`` (init, model, size, loop, optimiser) set to train one ``pooled`` head on
    ``datasets``."""
    base.data.datasets = list(datasets)
    base.dataset = ArkDatasetConfig(name=POOLED, head=POOLED)
    return base


class PooledMethod(TransferMethod):
    """:class:`TransferMethod` whose one dataset is the union of ``cfg.data.datasets``."""

    def parts(self, split: str) -> list[ArraySource]:
        """Each dataset's own ``split`` (head 0, the pooled model's only head)."""
        key = f"parts/{split}"
        if key not in self._sources:
            cache = Path(self.cfg.data.cache_dir or self.run_dir / "cache")
            self._sources[key] = [
                build_source(ds, 0, split, self.cfg.data, cache, self.cfg.loop.progress)
                for ds in self.cfg.data.datasets
            ]
        return self._sources[key]

    def union(self):
        parts = self.parts("train")
        return union_labels(self.cfg.data.datasets, [p.label_names for p in parts])

    def source(self, split: str):
        if split not in self._sources:
            names, columns = self.union()
            self._sources[split] = pool_sources(self.parts(split), names, columns)
        return self._sources[split]


def evaluate_pooled_run(run_dir: str | Path, cfg: TransferConfig, split: str = "test") -> dict:
    """Each dataset's ``split`` scored with its own labels read out of the pooled head (the best
    weights of ``run_dir``); written to ``eval_<split>.json`` in :func:`score_sources`' layout."""
    run_dir = Path(run_dir)
    method = PooledMethod(cfg, run_dir)
    model = load_model(run_dir / "model.safetensors").eval()
    _, columns = method.union()
    per = {}
    for ds, part, cols in zip(cfg.data.datasets, method.parts(split), columns, strict=True):
        probs = predict(
            model, part, torch.device("cpu"), size=cfg.size, ten_crop_test=cfg.ten_crop,
            stats=method.stats,
        )  # fmt: skip
        per[ds.head_name] = score_source(probs[:, cols], part)
    means = [r["mean_auroc"] for r in per.values() if not np.isnan(r["mean_auroc"])]
    result = {"mode": POOLED, "split": split, "datasets": per,
              "mean_auroc": float(np.mean(means)) if means else float("nan")}  # fmt: skip
    atomic_write_bytes(run_dir / f"eval_{split}.json", json.dumps(result, indent=2).encode())
    return result
