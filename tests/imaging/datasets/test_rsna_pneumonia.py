"""RSNA Pneumonia reader: one-hot detailed classes, several boxes per patient, hash split."""

import numpy as np
import pytest

from imaging.datasets import DatasetFormatError, RsnaPneumoniaDataset
from tests.imaging.datasets.fixtures import RSNA_IDS, make_rsna


def test_targets_and_boxes(tmp_path):
    ds = RsnaPneumoniaDataset(make_rsna(tmp_path), "all")
    assert ds.label_names == ("No Lung Opacity / Not Normal", "Normal", "Lung Opacity")
    assert [s.id for s in ds] == list(RSNA_IDS)
    np.testing.assert_array_equal(ds[0].target, [1, 0, 0])
    np.testing.assert_array_equal(ds[1].target, [0, 0, 1])
    np.testing.assert_array_equal(ds[2].target, [0, 1, 0])
    assert ds[1].meta["boxes"] == [(264.0, 152.0, 213.0, 379.0), (562.0, 152.0, 256.0, 453.0)]
    assert ds[0].meta["boxes"] == [] and ds[2].meta["class"] == "Normal"
    im = ds[1].image
    assert im.shape == (16, 16) and im.dtype == np.float32 and im.min() == 0 and im.max() == 1


def test_hash_split_is_a_partition(tmp_path):
    root = make_rsna(tmp_path)
    parts = [
        [s.id for s in RsnaPneumoniaDataset(root, sp, load_images=False, split_fractions=(1, 1, 1))]
        for sp in ("train", "val", "test")
    ]
    assert sorted(sum(parts, [])) == sorted(RSNA_IDS)
    again = RsnaPneumoniaDataset(root, "train", load_images=False, split_fractions=(1, 1, 1))
    assert [s.id for s in again] == parts[0]


def test_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="stage_2_train_labels.csv"):
        RsnaPneumoniaDataset(tmp_path, "all")
    root = make_rsna(tmp_path)
    (root / "stage_2_detailed_class_info.csv").unlink()
    with pytest.raises(DatasetFormatError, match="stage_2_detailed_class_info.csv"):
        RsnaPneumoniaDataset(root, "all")
