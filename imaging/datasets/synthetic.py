"""Synthetic chest datasets backed by :mod:`imaging.phantoms`: labelled data with no download.

Item ``i`` of a dataset is a pure function of ``(seed, split, i)``: its findings are drawn from a
generator seeded by that triple, and the phantom is built from a seed derived from it, so any
worker process rebuilds the same item and the splits never share an item.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imaging.datasets.base import Sample, stable_seed

_SPLITS = ("train", "val", "test")


def _phantoms():
    # imported lazily so that the readers of real datasets do not depend on the phantom module
    from imaging import phantoms

    return phantoms


class _SyntheticBase(Sequence):
    """Shared indexing, per-item seeds and finding draws of the synthetic datasets."""

    name = ""

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        load_images: bool,
        n: int,
        seed: int,
        finding_rate: float,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"{self.name}: unknown split {split!r}; valid: {', '.join(_SPLITS)}")
        if n < 0 or not 0.0 <= finding_rate <= 1.0:
            raise ValueError(f"{self.name}: need n >= 0 and 0 <= finding_rate <= 1")
        self.root = root  # unused; accepted so every reader is built the same way
        self.split, self.load_images = split, load_images
        self.n, self.seed, self.finding_rate = n, seed, finding_rate
        self.label_names: tuple[str, ...] = tuple(_phantoms().FINDINGS)

    def __len__(self) -> int:
        return self.n

    def item_seed(self, i: int) -> int:
        """The phantom seed of item ``i`` (31 bits, accepted by any RNG)."""
        return stable_seed(self.name, self.seed, self.split, i) % 2**31

    def findings(self, i: int) -> list[str]:
        """The findings requested for item ``i``: each present with probability finding_rate."""
        rng = np.random.default_rng(stable_seed("findings", self.name, self.seed, self.split, i))
        draws = rng.random(len(self.label_names))
        return [f for f, u in zip(self.label_names, draws, strict=True) if u < self.finding_rate]

    def _index(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(i)}")
        if not -self.n <= i < self.n:
            raise IndexError(f"{self.name}: index {i} out of range for {self.n} items")
        return int(i) % self.n

    def _target(self, labels: dict[str, int] | list[str]) -> np.ndarray:
        present = labels if isinstance(labels, list) else [k for k, v in labels.items() if v]
        return np.array([1.0 if f in present else 0.0 for f in self.label_names], np.float32)

    def _sample(self, i: int, image, labels, meta: dict) -> Sample:
        target = self._target(labels)
        meta = {"seed": self.item_seed(i), "findings": self.findings(i), "split": self.split} | meta
        return Sample(image, target, np.ones_like(target), f"{self.name}/{self.split}/{i}", meta)


class SyntheticChestDataset(_SyntheticBase):
    """Chest radiographs projected from phantom CTs, float32 ``(H, W)`` in [0, 1], with labels.

    Args:
        root: unused (accepted for a uniform reader signature).
        split: "train", "val" or "test" (disjoint item streams).
        load_images: False returns the requested findings as target without rendering.
        n: number of items.
        seed: base seed.
        size: radiograph size ``(H, W)``.
        finding_rate: probability of each finding per item.
        ct_shape: shape ``(D, H, W)`` of the phantom CT the radiograph is projected from
            (None: the phantom module's default).
        with_masks: add the radiograph's finding masks to ``meta["masks"]``.
        vary: move each film as patients differ (scale, rotation, position, exposure;
            :func:`imaging.phantoms.vary_radiograph`), drawn from the item's own seed.
    """

    name = "synthetic_chest"

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        *,
        load_images: bool = True,
        n: int = 100,
        seed: int = 0,
        size: tuple[int, int] = (256, 256),
        finding_rate: float = 0.3,
        ct_shape: tuple[int, int, int] | None = None,
        with_masks: bool = False,
        vary: bool = False,
    ) -> None:
        super().__init__(root, split, load_images, n, seed, finding_rate)
        self.size, self.ct_shape, self.with_masks = tuple(size), ct_shape, with_masks
        self.vary = bool(vary)

    def __getitem__(self, i: int) -> Sample:
        i = self._index(i)
        if not self.load_images:
            return self._sample(i, None, self.findings(i), {})
        ph = _phantoms()
        kw = {} if self.ct_shape is None else {"shape": tuple(self.ct_shape)}
        ct = ph.make_chest_ct(self.item_seed(i), findings=self.findings(i), **kw)
        xray = ph.make_radiograph(ct, size=self.size)
        if self.vary:
            rng = np.random.default_rng(stable_seed("vary", self.name, self.seed, self.split, i))
            xray = ph.vary_radiograph(xray, rng)
        meta = {"masks": xray.masks} if self.with_masks else {}
        return self._sample(i, np.asarray(xray.pixels, np.float32), xray.labels, meta)


class SyntheticCTDataset(_SyntheticBase):
    """Phantom chest CT volumes, float32 ``(D, H, W)`` in HU, with finding labels.

    Args:
        root: unused (accepted for a uniform reader signature).
        split: "train", "val" or "test" (disjoint item streams).
        load_images: False returns the requested findings as target without building volumes.
        n: number of items.
        seed: base seed.
        shape: volume shape ``(D, H, W)``.
        spacing: voxel size ``(d, h, w)`` in mm (None: the phantom module's default).
        finding_rate: probability of each finding per item.
        with_masks: add the finding masks to ``meta["masks"]``.
    """

    name = "synthetic_ct"

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        *,
        load_images: bool = True,
        n: int = 20,
        seed: int = 0,
        shape: tuple[int, int, int] = (64, 128, 128),
        spacing: Sequence[float] | None = None,
        finding_rate: float = 0.3,
        with_masks: bool = False,
    ) -> None:
        super().__init__(root, split, load_images, n, seed, finding_rate)
        self.shape, self.spacing, self.with_masks = tuple(shape), spacing, with_masks

    def __getitem__(self, i: int) -> Sample:
        i = self._index(i)
        if not self.load_images:
            return self._sample(i, None, self.findings(i), {})
        kw = {} if self.spacing is None else {"spacing": tuple(self.spacing)}
        ct = _phantoms().make_chest_ct(
            self.item_seed(i), shape=self.shape, findings=self.findings(i), **kw
        )
        meta = {"spacing": tuple(ct.volume.spacing), "affine": ct.volume.affine}
        if self.with_masks:
            meta["masks"] = ct.masks
        return self._sample(i, np.asarray(ct.volume.voxels, np.float32), ct.labels, meta)
