"""MIMIC-CXR-JPG 2.0.0 (Johnson et al., 2019; arXiv 1901.07042), the PhysioNet release.

Layout (each CSV may be gzip-compressed, as distributed)::

    <root>/mimic-cxr-2.0.0-chexpert.csv   subject_id,study_id,<14 CheXpert labels>  (per study)
    <root>/mimic-cxr-2.0.0-metadata.csv   dicom_id,subject_id,study_id,...,ViewPosition,...
    <root>/mimic-cxr-2.0.0-split.csv      dicom_id,study_id,subject_id,split (train/validate/test)
    <root>/files/p10/p10000032/s50414267/<dicom_id>.jpg

Labels are per study (all images of a study share them); a study absent from the label file
has every label blank. The -1/blank policies are those of :mod:`imaging.datasets.chexpert`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from imaging.datasets.base import (
    DatasetFormatError,
    Entry,
    LabelledDataset,
    check_split,
    find_file,
    read_csv,
)
from imaging.datasets.chexpert import check_policies, encode_labels
from imaging.datasets.labels import resolve_label_names

_PREFIX = "mimic-cxr-2.0.0-"
_SPLITS = {"train": "train", "validate": "validate", "val": "validate", "test": "test"}


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """``files/p<first 2 digits>/p<subject>/s<study>/<dicom_id>.jpg`` under ``root``."""
    return (
        root
        / "files"
        / f"p{subject_id[:2]}"
        / f"p{subject_id}"
        / f"s{study_id}"
        / (f"{dicom_id}.jpg")
    )


class MimicCxrDataset(LabelledDataset):
    """MIMIC-CXR-JPG images with study-level CheXpert-labeler targets and the official split.

    Args:
        root: the ``mimic-cxr-jpg/2.0.0`` folder (CSV files and ``files/``).
        split: "train", "validate" (alias "val"), "test" or "all".
        load_images: False skips pixel loading.
        uncertain: policy for -1 labels (see :func:`imaging.datasets.chexpert.encode_labels`);
            Ark uses "ones".
        blank: "missing" (mask 0) or "zero" (a known negative).
        classes: None for all 14 labels, "competition" for the 5 scored ones, or a list.
        views: keep only these ``ViewPosition`` values (e.g. ``("PA", "AP")``); needs metadata.
        seed: seed of LSR draws.
    """

    name = "mimic_cxr"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        load_images: bool = True,
        uncertain: str = "ignore",
        blank: str = "missing",
        classes: str | Sequence[str] | None = None,
        views: Iterable[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(root, split, load_images)
        check_split(self.name, split, (*_SPLITS, "all"))
        check_policies(self.name, uncertain, blank)
        self.label_names = resolve_label_names("mimic_cxr", classes)
        wanted = None if split == "all" else _SPLITS[split]
        views = None if views is None else set(views)

        labels_csv = find_file(self.root, f"{_PREFIX}chexpert.csv", what=self.name)
        study_labels = {
            (r["subject_id"].strip(), r["study_id"].strip()): r
            for r in read_csv(labels_csv, ["subject_id", "study_id", *self.label_names])
        }
        view_of = self._views(required=views is not None)

        split_csv = find_file(self.root, f"{_PREFIX}split.csv", what=self.name)
        for row in read_csv(split_csv, ["dicom_id", "study_id", "subject_id", "split"]):
            if wanted is not None and row["split"].strip() != wanted:
                continue
            dicom_id, study, subject = (
                row[k].strip() for k in ("dicom_id", "study_id", "subject_id")
            )
            view = view_of.get(dicom_id, "")
            if views is not None and view not in views:
                continue
            labels = study_labels.get((subject, study), {})
            target, mask = encode_labels(
                [labels.get(n) for n in self.label_names],
                self.label_names,
                uncertain=uncertain,
                blank=blank,
                seed=seed,
                key=dicom_id,
            )
            meta = {
                "subject_id": subject,
                "study_id": study,
                "view": view,
                "split": row["split"].strip(),
                "labelled": bool(labels),
            }
            path = image_path(self.root, subject, study, dicom_id)
            self.entries.append(Entry(path, target, mask, dicom_id, meta))

    def _views(self, required: bool) -> dict[str, str]:
        """dicom_id → ViewPosition from the metadata CSV (optional unless filtering by view)."""
        try:
            path = find_file(self.root, f"{_PREFIX}metadata.csv", what=self.name)
        except DatasetFormatError:
            if required:
                raise
            return {}
        rows = read_csv(path, ["dicom_id", "ViewPosition"], what=self.name)
        return {r["dicom_id"].strip(): r["ViewPosition"].strip() for r in rows}
