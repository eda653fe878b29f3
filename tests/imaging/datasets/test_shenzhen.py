"""Shenzhen TB reader: labels from file names, clinical readings in meta."""

import numpy as np
import pytest

from imaging.datasets import DatasetFormatError, ShenzhenDataset
from tests.imaging.datasets.fixtures import make_shenzhen


def test_labels_and_readings(tmp_path):
    root = make_shenzhen(tmp_path)
    for where in (root, root / "ChinaSet_AllFiles"):
        ds = ShenzhenDataset(where, "all")
        assert ds.label_names == ("Tuberculosis",)
        assert [s.id for s in ds] == ["CHNCXR_0001_0", "CHNCXR_0002_0", "CHNCXR_0327_1"]
        assert [float(s.target[0]) for s in ds] == [0.0, 0.0, 1.0]
    assert ds[0].meta["sex"] == "male" and ds[0].meta["age"] == 45
    assert ds[1].meta["sex"] == "female" and ds[1].meta["age"] == 63
    assert ds[2].meta["reading"] == "STB,ATB in left upper field"
    im = ds[2].image  # an RGB PNG of a 0..255 ramp
    assert im.shape == (16, 16) and im[0, 0] == 0.0 and im[0, -1] == 1.0
    np.testing.assert_array_equal(ds[2].mask, [1.0])


def test_hash_split_is_a_partition(tmp_path):
    root = make_shenzhen(tmp_path)
    ids = [s.id for sp in ("train", "val", "test") for s in ShenzhenDataset(root, sp)]
    assert sorted(ids) == ["CHNCXR_0001_0", "CHNCXR_0002_0", "CHNCXR_0327_1"]


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetFormatError, match="CXR_png"):
        ShenzhenDataset(tmp_path, "all")
