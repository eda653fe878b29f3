"""Ark's per-dataset sources: clean images at one load size, targets, masks and the head index.

The loader only reads: a batch is ``(images (B, 1, S, S) float in [0, 1], target (B, C),
mask (B, C), head (B,) int64)``; views are cut on the device by the method. Synthetic datasets are
rendered once into a memmap cache (:mod:`imaging.datasets.image_cache`); real datasets are
decoded per batch by a small thread pool and resized to ``load_size``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imaging.datasets import build_dataset

from .config import ArkDataConfig, ArkDatasetConfig

SYNTHETIC_PREFIX = "synth"


def eval_resize(size: int) -> int:
    """Shorter side before the evaluation centre crop: 256 for 224, as released (Resize 256 →
    CenterCrop 224), scaled for other sizes."""
    return int(round(size * 256 / 224))


def apply_missing(target: np.ndarray, mask: np.ndarray, policy: str):
    """``zero``: unknown labels become trained negatives (as released); ``mask``: kept out."""
    if policy == "zero":
        return np.where(mask > 0, target, 0.0).astype(np.float32), np.ones_like(mask)
    return target.astype(np.float32), mask.astype(np.float32)


class ArraySource:
    """Images already in memory (or a memmap) at the load size; ``truth``: the clean labels
    where the data has them (synthetic sources), else None."""

    def __init__(
        self, name, images, target, mask, head, label_names, task="multilabel", truth=None
    ) -> None:
        self.name, self.head, self.task = name, head, task
        self.images, self.target, self.mask = images, target, mask
        self.label_names = tuple(label_names)
        self.truth = None if truth is None else np.asarray(truth, np.float32)

    @property
    def num_classes(self) -> int:
        return int(self.target.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: list[int]):
        idx = np.asarray(indices)
        images = torch.from_numpy(np.ascontiguousarray(self.images[idx], dtype=np.float32))
        return (
            images[:, None],
            torch.from_numpy(self.target[idx]),
            torch.from_numpy(self.mask[idx]),
            torch.full((len(idx),), self.head, dtype=torch.int64),
        )


class ReaderSource:
    """A real dataset reader; images decoded per batch and resized to ``size`` x ``size``."""

    def __init__(self, name, dataset, head, size, missing, task="multilabel", workers=4) -> None:
        self.name, self.dataset, self.head, self.task = name, dataset, head, task
        self.size, self.missing, self.workers = size, missing, workers
        self.label_names = tuple(dataset.label_names)
        target, mask = apply_missing(dataset.targets, dataset.masks, missing)
        self.target, self.mask = target, mask

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, i: int) -> torch.Tensor:
        image = torch.from_numpy(np.asarray(self.dataset[i].image, np.float32))
        return resize_square(image[None, None], self.size)[0]

    def batch(self, indices: list[int]):
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            images = torch.stack(list(pool.map(self._load, indices)))
        idx = np.asarray(indices)
        return (
            images,
            torch.from_numpy(self.target[idx]),
            torch.from_numpy(self.mask[idx]),
            torch.full((len(idx),), self.head, dtype=torch.int64),
        )


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) → (N, C, size, size), bilinear with antialiasing (aspect not kept, as the
    released loaders resize to a square)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)


def _synthetic_source(ds: ArkDatasetConfig, head: int, split: str, kwargs, size, cache, show):
    from imaging.datasets.image_cache import cache_images

    kwargs.setdefault("size", (size, size))
    dataset = build_dataset(ds.name, split=split, **kwargs)
    cached = cache_images(dataset, cache, progress=show)
    target, mask = apply_missing(np.asarray(cached.targets), np.asarray(cached.masks), ds.missing)
    images = cached.images
    if images.shape[-2:] != (size, size):
        images = resize_square(torch.from_numpy(np.asarray(images))[:, None], size)[:, 0].numpy()
    return ArraySource(
        ds.head_name, images, target, mask, head, cached.label_names, ds.task, cached.truth
    )


def build_source(ds: ArkDatasetConfig, head: int, split: str, data: ArkDataConfig, cache, show):
    """The source of one dataset's ``split`` (``split`` is train / val / test)."""
    name = {"train": ds.train_split, "val": ds.val_split, "test": ds.test_split}[split]
    kwargs = dict(ds.reader) | dict(ds.per_split.get(split, {}))
    if ds.name.startswith(SYNTHETIC_PREFIX):
        return _synthetic_source(ds, head, name, kwargs, data.load_size, cache, show)
    dataset = build_dataset(ds.name, root=ds.root, split=name, **kwargs)
    return ReaderSource(
        ds.head_name, dataset, head, data.load_size, ds.missing, ds.task, data.workers
    )


def build_sources(
    data: ArkDataConfig, cache: str | Path, splits=("train", "val"), show: bool = True
) -> dict:
    """``{split: [source per dataset, in head order]}``."""
    return {
        split: [
            build_source(ds, head, split, data, Path(cache), show)
            for head, ds in enumerate(data.datasets)
        ]
        for split in splits
    }
