"""Readers of the published on-disk formats of public medical-imaging datasets.

Every reader is a map-style, torch-free sequence of :class:`Sample` (image, target, mask, id,
meta) built as ``Reader(root, split, *, load_images=True, ...)``: the index is parsed at
construction, pixels are read lazily. ``build_dataset(name, **kw)`` is the front door.
"""

from __future__ import annotations

from imaging.datasets.base import DatasetFormatError, LabelledDataset, Sample, collate_samples
from imaging.datasets.chestxray14 import ChestXray14Dataset
from imaging.datasets.chexpert import CheXpertDataset
from imaging.datasets.labels import load_label_names
from imaging.datasets.luna16 import Luna16Dataset
from imaging.datasets.mimic_cxr import MimicCxrDataset
from imaging.datasets.rsna_pneumonia import RsnaPneumoniaDataset
from imaging.datasets.shenzhen import ShenzhenDataset
from imaging.datasets.synthetic import SyntheticChestDataset, SyntheticCTDataset
from imaging.datasets.synthetic_multi import (
    SOURCES,
    SYNTHETIC_SOURCES,
    SourceSpec,
    SynthChestXray14Dataset,
    SynthCheXpertDataset,
    SyntheticSourceDataset,
    SynthRsnaDataset,
    SynthVinDrDataset,
)
from imaging.datasets.vindr_cxr import VinDrCxrDataset

DATASETS: dict[str, type] = {
    "chestxray14": ChestXray14Dataset,
    "chexpert": CheXpertDataset,
    "mimic_cxr": MimicCxrDataset,
    "vindr_cxr": VinDrCxrDataset,
    "rsna_pneumonia": RsnaPneumoniaDataset,
    "shenzhen": ShenzhenDataset,
    "luna16": Luna16Dataset,
    "synthetic_chest": SyntheticChestDataset,
    "synthetic_ct": SyntheticCTDataset,
    **SYNTHETIC_SOURCES,  # synth_cxpt, synth_nih, synth_vindr, synth_rsna
}


def build_dataset(name: str, **kwargs):
    """Construct the registered reader ``name`` with keyword arguments.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kwargs)


__all__ = [
    "DATASETS",
    "ChestXray14Dataset",
    "CheXpertDataset",
    "DatasetFormatError",
    "LabelledDataset",
    "Luna16Dataset",
    "MimicCxrDataset",
    "RsnaPneumoniaDataset",
    "Sample",
    "ShenzhenDataset",
    "SOURCES",
    "SourceSpec",
    "SynthCheXpertDataset",
    "SynthChestXray14Dataset",
    "SynthRsnaDataset",
    "SynthVinDrDataset",
    "SyntheticCTDataset",
    "SyntheticChestDataset",
    "SyntheticSourceDataset",
    "VinDrCxrDataset",
    "build_dataset",
    "collate_samples",
    "load_label_names",
]
