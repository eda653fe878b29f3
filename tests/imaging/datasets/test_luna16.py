"""LUNA16 reader: subset splits, world-mm → voxel (d, h, w), HU volumes."""

import numpy as np
import pytest

from imaging.datasets import DatasetFormatError, Luna16Dataset
from tests.imaging.datasets.fixtures import LUNA_UIDS, make_luna16

# fixture geometry: origin (x, y, z) = (-198.1, -195.0, -335.21), spacing (0.75, 0.5, 2.5) mm
# nodule (-194.35, -193.0, -327.71): w = 3.75/0.75 = 5, h = 2.0/0.5 = 4, d = 7.5/2.5 = 3


def test_train_split_and_voxel_coordinates(tmp_path):
    ds = Luna16Dataset(make_luna16(tmp_path), "train", load_images=False)
    assert sorted(s.id for s in ds) == sorted(LUNA_UIDS[:2])
    by_id = {s.id: s for s in ds}
    s = by_id[LUNA_UIDS[0]]
    np.testing.assert_array_equal(s.target, [1.0])
    first, second = s.meta["nodules"]
    np.testing.assert_allclose(first["voxel"], (3.0, 4.0, 5.0), atol=1e-6)
    assert first["diameter_mm"] == 5.65
    np.testing.assert_allclose(second["voxel"], (0.0, 0.0, 0.0), atol=1e-6)  # at the origin
    assert s.meta["spacing"] == pytest.approx((2.5, 0.5, 0.75))
    assert s.meta["shape"] == (6, 8, 10) and s.meta["subset"] == 0
    np.testing.assert_array_equal(by_id[LUNA_UIDS[1]].target, [0.0])
    assert by_id[LUNA_UIDS[1]].meta["nodules"] == []


def test_volume_in_hu_and_nodule_voxel(tmp_path):
    ds = Luna16Dataset(make_luna16(tmp_path), "train")
    s = next(s for s in ds if s.id == LUNA_UIDS[0])
    assert s.image.shape == (6, 8, 10) and s.image.dtype == np.float32
    d, h, w = (round(v) for v in s.meta["nodules"][0]["voxel"])
    assert s.image[d, h, w] == 40.0 and s.image[0, 0, 0] == -1000.0


def test_test_split_candidates_and_custom_subsets(tmp_path):
    root = make_luna16(tmp_path)
    ds = Luna16Dataset(root, "test", load_images=False)
    assert [s.id for s in ds] == [LUNA_UIDS[2]]
    # (-190.6, -191.5, -322.71): w = 7.5/0.75 = 10, h = 3.5/0.5 = 7, d = 12.5/2.5 = 5
    np.testing.assert_allclose(ds[0].meta["nodules"][0]["voxel"], (5.0, 7.0, 10.0), atol=1e-6)
    ds = Luna16Dataset(root, "train", load_images=False, candidates="candidates_V2.csv")
    cands = next(s for s in ds if s.id == LUNA_UIDS[0]).meta["candidates"]
    assert [c["class"] for c in cands] == [1, 0]
    np.testing.assert_allclose(cands[1]["voxel"], (1.0, 1.0, 1.0), atol=1e-6)
    mine = Luna16Dataset(root, "fold", subsets={"fold": [7]}, load_images=False)
    assert [s.id for s in mine] == [LUNA_UIDS[2]]


def test_errors(tmp_path):
    root = make_luna16(tmp_path)
    with pytest.raises(DatasetFormatError, match=r"\[5, 6\]"):
        Luna16Dataset(root, "val")
    with pytest.raises(ValueError, match="valid: train, val, test, all"):
        Luna16Dataset(root, "fold")
    (root / "annotations.csv").unlink()
    with pytest.raises(DatasetFormatError, match="annotations.csv"):
        Luna16Dataset(root, "train")


def test_non_identity_direction_is_refused(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16))
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    (tmp_path / "subset0").mkdir()
    sitk.WriteImage(img, str(tmp_path / "subset0" / "1.2.3.mhd"))
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    with pytest.raises(DatasetFormatError, match="TransformMatrix"):
        Luna16Dataset(tmp_path, "train")
