"""VinDr-CXR 1.0.0 (Nguyen et al., Sci. Data 2022; arXiv 2012.15029), the PhysioNet release.

Layout::

    <root>/annotations/image_labels_train.csv   image_id,rad_id,<28 labels> (0/1), one row per
                                                reader: 3 of 17 radiologists (R1..R17) per image
    <root>/annotations/image_labels_test.csv    image_id,<28 labels>: the 5-reader consensus
    <root>/train/<image_id>.dicom
    <root>/test/<image_id>.dicom

Reader aggregation (training split): ``readers="any"`` marks a label positive when at least one
reader marked it (the union, the usual choice for image-level labels); ``"majority"`` when more
than half of the image's readers did (2 of 3). The test file already holds one consensus row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imaging.datasets.base import (
    DatasetFormatError,
    Entry,
    LabelledDataset,
    check_split,
    find_file,
    read_csv,
)
from imaging.datasets.labels import load_label_aliases, resolve_label_names

READER_POLICIES = ("any", "majority")


class VinDrCxrDataset(LabelledDataset):
    """VinDr-CXR DICOM radiographs with image-level labels aggregated over readers.

    Args:
        root: folder holding ``annotations/``, ``train/`` and ``test/``.
        split: "train" or "test".
        load_images: False skips pixel loading.
        readers: "any" or "majority" (see module docstring); used for the training split.
        classes: None for all 28 labels, "ark" for Ark's 6, "global" for the 6 diagnoses, or a
            list of names.
    """

    name = "vindr_cxr"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        load_images: bool = True,
        readers: str = "any",
        classes: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(root, split, load_images)
        check_split(self.name, split, ("train", "test"))
        if readers not in READER_POLICIES:
            raise ValueError(f"{self.name}: readers={readers!r}; valid: {READER_POLICIES}")
        self.readers = readers
        self.label_names = resolve_label_names("vindr_cxr", classes)
        index = find_file(self.root / "annotations", f"image_labels_{split}.csv", what=self.name)
        rows = read_csv(
            index,
            ["image_id", *self.label_names],
            what=self.name,
            rename=load_label_aliases("vindr_cxr"),
        )

        votes: dict[str, list[np.ndarray]] = {}
        rads: dict[str, list[str]] = {}
        for row in rows:
            image_id = row["image_id"].strip()
            votes.setdefault(image_id, []).append(self._parse(row))
            rad = (row.get("rad_id") or row.get("rad_ID") or "").strip()
            if rad:
                rads.setdefault(image_id, []).append(rad)

        for image_id, marks in votes.items():  # dicts keep file order
            marks = np.stack(marks)
            if readers == "any":
                target = marks.max(axis=0)
            else:
                target = (marks.sum(axis=0) > marks.shape[0] / 2).astype(np.float32)
            meta = {"n_readers": len(marks), "readers": rads.get(image_id, []), "split": split}
            path = self.root / split / f"{image_id}.dicom"
            self.entries.append(Entry(path, target, np.ones_like(target), image_id, meta))

    def _parse(self, row: dict[str, str]) -> np.ndarray:
        marks = np.zeros(len(self.label_names), np.float32)
        for c, label in enumerate(self.label_names):
            text = (row[label] or "").strip()
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if value not in (0.0, 1.0):
                raise DatasetFormatError(
                    f"{self.name}: label {label!r} holds {text!r}; expected 0 or 1"
                )
            marks[c] = value
        return marks
