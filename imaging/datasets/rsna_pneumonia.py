"""RSNA Pneumonia Detection Challenge (Shih et al., Radiol. AI 2019), the Kaggle stage-2 release.

Layout::

    <root>/stage_2_train_labels.csv          patientId,x,y,width,height,Target  (one row per box;
                                             one row with blank box and Target 0 when none)
    <root>/stage_2_detailed_class_info.csv   patientId,class  ("Normal",
                                             "No Lung Opacity / Not Normal", "Lung Opacity")
    <root>/stage_2_train_images/<patientId>.dcm

The target is the one-hot detailed class (Ark trains its 3-way head with BCE on it); the boxes
go to ``meta["boxes"]`` as ``(x, y, width, height)`` in pixels of the original image. Only the
training images are labelled, so "train"/"val"/"test" are a seeded hash split of them (not an
official split); "all" is every labelled image.
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
    hash_split,
    parse_float,
    read_csv,
)
from imaging.datasets.labels import load_label_names


class RsnaPneumoniaDataset(LabelledDataset):
    """RSNA Pneumonia DICOMs with a 3-class one-hot target and the opacity boxes in meta.

    Args:
        root: folder holding the two CSV files and ``stage_2_train_images/``.
        split: "all", or "train"/"val"/"test" of a hash split seeded by ``split_seed``.
        load_images: False skips pixel loading.
        split_seed: seed of the hash split.
        split_fractions: train/val/test fractions of the hash split.
    """

    name = "rsna_pneumonia"

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
        self.label_names = load_label_names("rsna_pneumonia")
        labels_csv = find_file(
            self.root, "stage_2_train_labels.csv", "stage_1_train_labels.csv", what=self.name
        )
        classes_csv = find_file(
            self.root,
            "stage_2_detailed_class_info.csv",
            "stage_1_detailed_class_info.csv",
            what=self.name,
        )
        images = self.root / labels_csv.name.replace("_labels.csv", "_images").replace(".gz", "")

        detailed: dict[str, str] = {}
        for row in read_csv(classes_csv, ["patientId", "class"], what=self.name):
            detailed[row["patientId"].strip()] = row["class"].strip()

        boxes: dict[str, list[tuple[float, float, float, float]]] = {}
        required = ["patientId", "x", "y", "width", "height", "Target"]
        for row in read_csv(labels_csv, required, what=self.name):
            pid = row["patientId"].strip()
            boxes.setdefault(pid, [])
            if (row["Target"] or "").strip() in ("1", "1.0"):
                box = tuple(parse_float(row[k]) for k in ("x", "y", "width", "height"))
                if None in box:
                    raise DatasetFormatError(
                        f"{self.name}: a row with Target 1 has a blank box coordinate "
                        f"in {labels_csv.name}"
                    )
                boxes[pid].append(box)

        for pid, pid_boxes in boxes.items():
            if split != "all" and hash_split(pid, split_seed, split_fractions) != split:
                continue
            cls = detailed.get(pid)
            if cls not in self.label_names:
                raise DatasetFormatError(
                    f"{self.name}: {classes_csv.name} gives class {cls!r} for an image of "
                    f"{labels_csv.name}; expected one of {list(self.label_names)}"
                )
            target = np.zeros(len(self.label_names), np.float32)
            target[self.label_names.index(cls)] = 1.0
            meta = {"class": cls, "boxes": pid_boxes, "split": split}
            self.entries.append(
                Entry(images / f"{pid}.dcm", target, np.ones_like(target), pid, meta)
            )
