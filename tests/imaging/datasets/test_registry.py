"""Registry, label table and batch collation shared by all readers."""

import numpy as np
import pytest

from imaging.datasets import DATASETS, build_dataset, collate_samples, load_label_names
from tests.imaging.datasets.fixtures import make_chestxray14, make_rsna


def test_label_table():
    assert len(load_label_names("chestxray14")) == 14
    assert len(load_label_names("chexpert")) == 14
    assert set(load_label_names("mimic_cxr")) == set(load_label_names("chexpert"))
    assert len(load_label_names("vindr_cxr")) == 28
    assert load_label_names("shenzhen") == ("Tuberculosis",)
    for ds, subset in (("chexpert", "competition"), ("vindr_cxr", "ark"), ("vindr_cxr", "global")):
        assert set(load_label_names(ds, subset)) <= set(load_label_names(ds))
    with pytest.raises(KeyError, match="chexpert"):
        load_label_names("nope")


def test_build_dataset(tmp_path):
    ds = build_dataset("chestxray14", root=make_chestxray14(tmp_path), split="test")
    assert len(ds) == 1 and ds.name == "chestxray14"
    with pytest.raises(KeyError, match="chexpert.*luna16"):
        build_dataset("imagenet")
    assert {"chestxray14", "chexpert", "mimic_cxr", "vindr_cxr", "rsna_pneumonia", "shenzhen",
            "luna16", "synthetic_chest", "synthetic_ct"} <= set(DATASETS)  # fmt: skip


def test_collate_with_torch_dataloader(tmp_path):
    torch = pytest.importorskip("torch")
    ds = build_dataset("rsna_pneumonia", root=make_rsna(tmp_path), split="all")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 16, 16) and batch["target"].shape == (2, 3)
    np.testing.assert_array_equal(batch["mask"], np.ones((2, 3)))
    assert len(batch["meta"]) == 2
