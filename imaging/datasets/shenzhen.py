"""Shenzhen chest X-ray set (Jaeger et al., Quant. Imaging Med. Surg. 2014), NLM release.

Layout (``ChinaSet_AllFiles``)::

    <root>/CXR_png/CHNCXR_0001_0.png           suffix _0: normal, _1: tuberculosis
    <root>/ClinicalReadings/CHNCXR_0001_0.txt  "male 35yrs" then the reading, e.g. "normal"

There is no official split, so "train"/"val"/"test" are a seeded hash split of the images
(Ark uses its own list files); "all" is every image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imaging.datasets.base import (
    DatasetFormatError,
    Entry,
    LabelledDataset,
    check_split,
    hash_split,
)
from imaging.datasets.labels import load_label_names

_NAME = re.compile(r"^CHNCXR_(\d+)_([01])\.png$", re.IGNORECASE)
_DEMOGRAPHICS = re.compile(r"\b(male|female)\b\W*(\d+)\s*(?:yrs?|years?|y)?", re.IGNORECASE)


def parse_reading(text: str) -> dict:
    """Sex, age (years) and the free-text reading of a ``ClinicalReadings`` file."""
    meta: dict = {"reading": " ".join(text.split())}
    m = _DEMOGRAPHICS.search(text)
    if m:
        meta["sex"] = m.group(1).lower()
        meta["age"] = int(m.group(2))
        rest = text[m.end() :]
        meta["reading"] = " ".join(rest.split())
    return meta


class ShenzhenDataset(LabelledDataset):
    """Shenzhen TB radiographs with one label, "Tuberculosis", read from the file names.

    Args:
        root: the ``ChinaSet_AllFiles`` folder (or its parent).
        split: "all", or "train"/"val"/"test" of a hash split seeded by ``split_seed``.
        load_images: False skips pixel loading.
        split_seed: seed of the hash split.
        split_fractions: train/val/test fractions of the hash split.
    """

    name = "shenzhen"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        load_images: bool = True,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    ) -> None:
        super().__init__(root, split, load_images)
        check_split(self.name, split, ("train", "val", "test", "all"))
        self.label_names = load_label_names("shenzhen")
        if not (self.root / "CXR_png").is_dir() and (self.root / "ChinaSet_AllFiles").is_dir():
            self.root = self.root / "ChinaSet_AllFiles"
        images = self.root / "CXR_png"
        if not images.is_dir():
            raise DatasetFormatError(f"{self.name}: image folder CXR_png/ not found in {self.root}")
        readings = self.root / "ClinicalReadings"
        names = sorted(p.name for p in images.iterdir() if _NAME.match(p.name))
        if not names:
            raise DatasetFormatError(f"{self.name}: no CHNCXR_<n>_<0|1>.png images in {images}")
        for name in names:
            stem = name[: -len(".png")]
            if split != "all" and hash_split(stem, split_seed, split_fractions) != split:
                continue
            target = np.array([float(_NAME.match(name).group(2))], np.float32)
            meta = {"split": split}
            txt = readings / f"{stem}.txt"
            if txt.is_file():
                meta.update(parse_reading(txt.read_text(errors="replace")))
            self.entries.append(Entry(images / name, target, np.ones_like(target), stem, meta))
