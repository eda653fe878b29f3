"""CheXpert (Irvin et al., AAAI 2019; arXiv 1901.07031), the ``CheXpert-v1.0[-small]`` release.

Layout::

    <root>/CheXpert-v1.0-small/train.csv   Path,Sex,Age,Frontal/Lateral,AP/PA,<14 labels>
    <root>/CheXpert-v1.0-small/valid.csv
    <root>/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg

``Path`` is relative to ``<root>``, the parent of the CheXpert folder. Label cells hold 1.0
(positive), 0.0 (negative), -1.0 (uncertain) or nothing (not mentioned in the report). The
uncertainty and blank policies here are shared with MIMIC-CXR, whose labeler is the same.
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
    stable_uniform,
)
from imaging.datasets.labels import resolve_label_names

#: uncertain (-1) label policies: value written into the target, or None for "mask it out"
UNCERTAIN_POLICIES = ("ones", "zeros", "ignore", "lsr_ones", "lsr_zeros")
#: blank cell policies: "missing" (mask 0) or "zero" (a known negative, as Ark does)
BLANK_POLICIES = ("missing", "zero")
#: label-smoothing ranges of Liu et al. / Ark for the LSR policies
LSR_RANGES = {"lsr_ones": (0.55, 0.85), "lsr_zeros": (0.0, 0.3)}

_CELL_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0}
_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv", "test": "valid.csv"}


def check_policies(name: str, uncertain: str, blank: str) -> None:
    """Raise a ValueError naming the valid policies for an unknown one."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"{name}: uncertain={uncertain!r}; valid: {UNCERTAIN_POLICIES}")
    if blank not in BLANK_POLICIES:
        raise ValueError(f"{name}: blank={blank!r}; valid: {BLANK_POLICIES}")


def encode_labels(
    cells: Sequence[str | None],
    names: Sequence[str],
    *,
    uncertain: str,
    blank: str,
    seed: int,
    key: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode CheXpert-labeler cells (1/0/-1/blank) into ``(target, mask)``, float32 ``(C,)``.

    ``lsr_*`` draws are deterministic per ``(seed, key, label name)``, so an image keeps its soft
    label across epochs and worker processes.
    """
    target = np.zeros(len(names), np.float32)
    mask = np.ones(len(names), np.float32)
    for c, (cell, label) in enumerate(zip(cells, names, strict=True)):
        text = (cell or "").strip()
        if not text:
            mask[c] = 1.0 if blank == "zero" else 0.0
            continue
        value = _CELL_VALUES.get(text)
        if value is None:
            raise DatasetFormatError(f"label {label!r}: value {text!r} is not 1, 0, -1 or blank")
        if value == 1.0:
            target[c] = 1.0
        elif value == -1.0:
            if uncertain == "ones":
                target[c] = 1.0
            elif uncertain == "ignore":
                mask[c] = 0.0
            elif uncertain in LSR_RANGES:
                target[c] = stable_uniform(*LSR_RANGES[uncertain], seed, key, label)
    return target, mask


class CheXpertDataset(LabelledDataset):
    """CheXpert train/valid images with multi-label targets under a chosen uncertainty policy.

    Args:
        root: the folder holding ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``); the CheXpert
            folder itself is accepted too.
        split: "train" or "valid"; "test" is an alias of "valid" (Ark tests on the official
            validation set).
        load_images: False skips pixel loading (``Sample.image`` is None).
        uncertain: policy for -1 cells: "ones", "zeros", "ignore" (mask 0), "lsr_ones"
            (U(0.55, 0.85), Ark's setting) or "lsr_zeros" (U(0, 0.3)).
        blank: "missing" (target 0, mask 0) or "zero" (a known negative; Ark's setting).
        classes: None for all 14 labels, "competition" for the 5 scored ones, or a list of names.
        frontal_only: keep frontal views only.
        seed: seed of the LSR draws.
    """

    name = "chexpert"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        load_images: bool = True,
        uncertain: str = "ignore",
        blank: str = "missing",
        classes: str | Sequence[str] | None = None,
        frontal_only: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(root, split, load_images)
        check_split(self.name, split, _SPLIT_FILES)
        check_policies(self.name, uncertain, blank)
        self.label_names = resolve_label_names("chexpert", classes)
        folder = self._folder()
        index = find_file(folder, _SPLIT_FILES[split], what=self.name)
        required = ["Path", "Frontal/Lateral", *self.label_names]
        for row in read_csv(index, required, what=self.name):
            rel = row["Path"].strip()
            view = row["Frontal/Lateral"].strip()
            if frontal_only and view != "Frontal":
                continue
            target, mask = encode_labels(
                [row[n] for n in self.label_names],
                self.label_names,
                uncertain=uncertain,
                blank=blank,
                seed=seed,
                key=rel,
            )
            parts = Path(rel).parts
            meta = {
                "patient_id": next((p for p in parts if p.startswith("patient")), ""),
                "study_id": next((p for p in parts if p.startswith("study")), ""),
                "view": view,
                "projection": row.get("AP/PA", "").strip(),
                "sex": row.get("Sex", "").strip(),
                "age": row.get("Age", "").strip(),
                "split": split,
            }
            self.entries.append(Entry(folder.parent / rel, target, mask, rel, meta))

    def _folder(self) -> Path:
        if any((self.root / f).is_file() for f in ("train.csv", "valid.csv")):
            return self.root
        for name in _FOLDERS:
            if (self.root / name).is_dir():
                return self.root / name
        raise DatasetFormatError(
            f"{self.name}: neither {' nor '.join(_FOLDERS)} nor train.csv/valid.csv found in "
            f"{self.root}"
        )
