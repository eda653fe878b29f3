"""NIH ChestX-ray14 (Wang et al., CVPR 2017; arXiv 1705.02315), the NIH Clinical Center release.

Layout::

    <root>/Data_Entry_2017.csv      Image Index,Finding Labels,Follow-up #,Patient ID,...
    <root>/train_val_list.txt       official patient-wise split, one image name a line
    <root>/test_list.txt
    <root>/images/00000001_000.png  or  <root>/images_001/images/00000001_000.png (Kaggle copy)

"Finding Labels" is ``A|B|...`` or ``No Finding``. The bracketed header names
(``OriginalImage[Width,Height]``) contain commas, so a CSV parser splits them into two columns
each; only the first seven columns are read here.
"""

from __future__ import annotations

import os
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
from imaging.datasets.labels import resolve_label_names

_INDEX = "Data_Entry_2017.csv"
_SPLIT_LISTS = {"train": "train_val_list.txt", "test": "test_list.txt"}
_NO_FINDING = "No Finding"


def read_image_list(path: Path) -> set[str]:
    """Image names of a split list: the file name of each line's first token.

    Accepts the official lists (``00000001_000.png``) and Ark-style lists
    (``images_001/images/00000001_000.png 0 1 0 ...``).
    """
    if not path.is_file():
        raise DatasetFormatError(f"chestxray14: split list {path} not found")
    names = set()
    for line in path.read_text().splitlines():
        tokens = line.split()
        if tokens:
            names.add(os.path.basename(tokens[0]))
    return names


class ChestXray14Dataset(LabelledDataset):
    """ChestX-ray14 frontal radiographs with 14 multi-label findings.

    Args:
        root: folder holding ``Data_Entry_2017.csv`` and the image folders.
        split: "train" (official ``train_val_list.txt``), "test" (``test_list.txt``) or "all".
        load_images: False skips pixel loading.
        split_file: a custom list (e.g. Ark's ``Xray14_train_official.txt``) overriding ``split``.
        classes: None for the 14 labels, or a list of names.
    """

    name = "chestxray14"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        load_images: bool = True,
        split_file: str | Path | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(root, split, load_images)
        self.label_names = resolve_label_names("chestxray14", classes)
        keep: set[str] | None = None
        if split_file is not None:
            keep = read_image_list(Path(split_file))
        else:
            check_split(self.name, split, (*_SPLIT_LISTS, "all"))
            if split != "all":
                keep = read_image_list(self.root / _SPLIT_LISTS[split])
        all_names = set(resolve_label_names("chestxray14", None))
        column = {n: c for c, n in enumerate(self.label_names)}
        located = self._image_locations()
        index = find_file(self.root, _INDEX, what=self.name)
        required = ["Image Index", "Finding Labels", "Patient ID"]
        for row in read_csv(index, required, what=self.name):
            image = row["Image Index"].strip()
            if keep is not None and image not in keep:
                continue
            target = np.zeros(len(self.label_names), np.float32)
            for finding in row["Finding Labels"].split("|"):
                finding = finding.strip()
                if finding == _NO_FINDING:
                    continue
                if finding not in all_names:
                    raise DatasetFormatError(
                        f"{self.name}: unknown finding {finding!r} in {_INDEX} "
                        f"(expected {_NO_FINDING!r} or names from labels.yaml)"
                    )
                if finding in column:
                    target[column[finding]] = 1.0
            meta = {
                "patient_id": row["Patient ID"].strip(),
                "follow_up": row.get("Follow-up #", "").strip(),
                "age": row.get("Patient Age", "").strip(),
                "sex": row.get("Patient Gender", "").strip(),
                "view": row.get("View Position", "").strip(),
                "split": split if split_file is None else Path(split_file).name,
            }
            path = located.get(image, self.root / "images" / image)
            mask = np.ones_like(target)
            self.entries.append(Entry(path, target, mask, image, meta))

    def _image_locations(self) -> dict[str, Path]:
        """Map image name → path over ``images/`` and every ``images_*/images/`` folder."""
        folders = [self.root / "images", *sorted(self.root.glob("images_*/images"))]
        located: dict[str, Path] = {}
        for folder in folders:
            if folder.is_dir():
                with os.scandir(folder) as it:
                    for e in it:
                        located.setdefault(e.name, Path(e.path))
        return located
