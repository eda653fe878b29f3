"""PEAC's image sources: square grey-scale radiographs at the grid load size, labels ignored.

A batch is ``(B, 1, L, L)`` float in [0, 1] with ``L = (window + max_offset + 1) * cell`` (608 for
PEAC): the loader only reads, resizes the shorter side to ``L`` and crops the centre square
(docs/METHODS.md §3.3 item 1); the jitter, the crops, the POPAR distortions and the normalisation
run on the device in the method. Synthetic datasets are rendered once into a memmap cache
(:mod:`imaging.datasets.image_cache`) at the load size; real datasets (ChestX-ray14) are decoded
per batch by a small thread pool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from imaging.datasets import build_dataset

from .config import PEACDataConfig
from .views import square_image

SYNTHETIC_PREFIX = "synth"  # synthetic_chest, synth_nih, synth_cxpt, ...


class ImageArraySource:
    """Images already at the load size, in memory or a memmap: (N, L, L)."""

    def __init__(self, images: np.ndarray, indices: np.ndarray | None = None) -> None:
        self.images = images
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, indices: list[int]) -> torch.Tensor:
        rows = self.indices[np.asarray(indices, dtype=np.int64)]
        images = np.ascontiguousarray(self.images[rows], dtype=np.float32)
        return torch.from_numpy(images)[:, None]


class ImageReaderSource:
    """A real dataset reader: each image decoded per batch, then squared to the load size."""

    def __init__(self, dataset, size: int, workers: int = 4, indices=None) -> None:
        self.dataset, self.size, self.workers = dataset, size, workers
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, i: int) -> torch.Tensor:
        image = torch.from_numpy(np.asarray(self.dataset[int(i)].image, np.float32))
        return square_image(image[None, None], self.size)[0]

    def batch(self, indices: list[int]) -> torch.Tensor:
        rows = self.indices[np.asarray(indices, dtype=np.int64)]
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return torch.stack(list(pool.map(self._load, rows)))


def evenly_spaced(n: int, limit: int | None) -> np.ndarray | None:
    """``limit`` evenly spaced indices of ``0 .. n - 1`` (None: all of them)."""
    if limit is None or limit >= n:
        return None
    return np.unique(np.linspace(0, n - 1, max(1, limit)).round().astype(np.int64))


def build_source(
    data: PEACDataConfig,
    split: str,
    load_size: int,
    cache: str | Path,
    show: bool = True,
    limit: int | None = None,
):
    """The images of ``split`` (``train`` or ``val``, mapped to the reader's split names)."""
    name = {"train": data.train_split, "val": data.val_split}[split]
    kwargs = dict(data.reader) | dict(data.per_split.get(split, {}))
    if data.name.startswith(SYNTHETIC_PREFIX):
        from imaging.datasets.image_cache import cache_images

        kwargs.setdefault("size", (load_size, load_size))
        dataset = build_dataset(data.name, split=name, **kwargs)
        images = cache_images(dataset, Path(cache), progress=show).images
        if images.shape[-2:] != (load_size, load_size):  # a reader with its own size
            resized = square_image(torch.from_numpy(np.asarray(images))[:, None], load_size)
            images = resized[:, 0].numpy()
        return ImageArraySource(images, evenly_spaced(len(images), limit))
    if not data.root:
        raise ValueError(f"data.root must point at the {data.name} folder")
    dataset = build_dataset(data.name, root=data.root, split=name, **kwargs)
    return ImageReaderSource(dataset, load_size, data.workers, evenly_spaced(len(dataset), limit))
