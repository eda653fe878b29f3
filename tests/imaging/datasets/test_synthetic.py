"""Synthetic datasets backed by imaging.phantoms: shapes, determinism, labels vs findings."""

import numpy as np
import pytest

from imaging.datasets import SyntheticChestDataset, SyntheticCTDataset


def test_chest_radiographs():
    ds = SyntheticChestDataset(n=3, seed=1, size=(64, 64), ct_shape=(32, 64, 64), finding_rate=0.5)
    assert len(ds) == 3 and ds.label_names == ("nodule", "effusion", "cardiomegaly", "pneumothorax")
    s = ds[0]
    assert s.image.shape == (64, 64) and s.image.dtype == np.float32
    assert 0.0 <= s.image.min() and s.image.max() <= 1.0
    # the phantom's labels are exactly the findings drawn for the item
    np.testing.assert_array_equal(
        s.target, [float(f in s.meta["findings"]) for f in ds.label_names]
    )
    np.testing.assert_array_equal(s.mask, np.ones(4))
    again = SyntheticChestDataset(
        n=3, seed=1, size=(64, 64), ct_shape=(32, 64, 64), finding_rate=0.5
    )
    np.testing.assert_array_equal(again[0].image, s.image)
    lazy = SyntheticChestDataset(n=3, seed=1, finding_rate=0.5, load_images=False)
    assert lazy[0].image is None
    np.testing.assert_array_equal(lazy[0].target, s.target)


def test_findings_per_index_are_deterministic_and_split_disjoint():
    a = SyntheticChestDataset(n=50, seed=7, finding_rate=0.3, load_images=False)
    b = SyntheticChestDataset(n=50, seed=7, finding_rate=0.3, load_images=False)
    assert [a.findings(i) for i in range(50)] == [b.findings(i) for i in range(50)]
    rate = np.mean([len(a.findings(i)) / 4 for i in range(50)])
    assert 0.15 < rate < 0.45
    val = SyntheticChestDataset(split="val", n=50, seed=7, load_images=False)
    assert {a.item_seed(i) for i in range(50)}.isdisjoint({val.item_seed(i) for i in range(50)})
    none = SyntheticChestDataset(n=5, finding_rate=0.0, load_images=False)
    assert all(not none.findings(i) for i in range(5))
    with pytest.raises(IndexError):
        a[50]


def test_ct_volumes():
    ds = SyntheticCTDataset(n=2, seed=0, shape=(32, 64, 64), finding_rate=1.0, with_masks=True)
    s = ds[1]
    assert s.image.shape == (32, 64, 64) and s.image.dtype == np.float32
    assert s.image.min() < -500 and s.image.max() > 0  # air and soft tissue, in HU
    np.testing.assert_array_equal(s.target, np.ones(4))  # every finding requested and present
    assert set(ds.label_names) <= set(s.meta["masks"])
    assert len(s.meta["spacing"]) == 3
