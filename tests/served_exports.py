"""The tiny exports the serving and PACS tests serve (an Ark CXR classifier, a Models Genesis
nodule segmenter, PEAC), built once per session; registered by tests/conftest.py."""

from __future__ import annotations

import pytest

from export.bundle import ExportOptions, build_export
from export.source import resolve_source
from train.cards import ark_card, genesis_card, peac_card

from .export.conftest import save_model


class _Src:
    def __init__(self, name, labels, task="multilabel"):
        self.name, self.label_names, self.task = name, labels, task


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    w = root.parent / "w"
    w.mkdir()
    ark_args = {
        "backbone": "resnet18",
        "img_size": 64,
        "embed_dim": 32,
        "head_sizes": [3, 2],
        "head_names": ["nih", "rsna"],
    }
    card = ark_card(
        64,
        [
            _Src("nih", ["effusion", "nodule", "cardiomegaly"]),
            _Src("rsna", ["normal", "opacity"], "multiclass"),
        ],
    )
    save_model(w / "ark.safetensors", "ark", ark_args, card, seed=2)
    seg_card = genesis_card("segment", (32, 32, 16), labels={"main": ["nodule"]})
    save_model(w / "seg.safetensors", "unet3d", {"out_activation": None}, seg_card, seed=3)
    peac_args = {
        "backbone": "vit_tiny_patch16_224",
        "img_size": 64,
        "global_dims": [32],
        "local_dims": [16],
    }
    save_model(w / "peac.safetensors", "peac", peac_args, peac_card(64), seed=4)
    for name, file in (
        ("cxr", "ark.safetensors"),
        ("nodule_seg", "seg.safetensors"),
        ("peac", "peac.safetensors"),
    ):
        build_export(
            resolve_source(w / file),
            root / name,
            ExportOptions(calibration_samples=3, max_batch=8),
            log=lambda m: None,
        )
    return root
