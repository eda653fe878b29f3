"""ChestX-ray14 reader on a fixture in the NIH layout."""

import numpy as np
import pytest

from imaging.datasets import ChestXray14Dataset, DatasetFormatError
from tests.imaging.datasets.fixtures import make_chestxray14, write_text


def onehot(*idx):
    t = np.zeros(14, np.float32)
    t[list(idx)] = 1
    return t


def test_train_split_labels(tmp_path):
    ds = ChestXray14Dataset(make_chestxray14(tmp_path), "train")
    assert [s.id for s in ds] == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    np.testing.assert_array_equal(ds[0].target, onehot(1))  # Cardiomegaly
    np.testing.assert_array_equal(ds[1].target, onehot(1, 10))  # Cardiomegaly|Emphysema
    np.testing.assert_array_equal(ds[2].target, onehot())  # No Finding
    np.testing.assert_array_equal(ds[2].mask, np.ones(14))
    assert ds[1].meta["patient_id"] == "1" and ds[1].meta["follow_up"] == "1"
    assert ds[1].meta["view"] == "PA" and ds[1].meta["sex"] == "M"


def test_test_split_and_all(tmp_path):
    root = make_chestxray14(tmp_path)
    test = ChestXray14Dataset(root, "test")
    assert [s.id for s in test] == ["00000003_000.png"]
    np.testing.assert_array_equal(test[0].target, onehot(13, 12, 2))  # Hernia|PT|Effusion
    assert len(ChestXray14Dataset(root, "all")) == 4


def test_nested_image_folders_and_trailing_comma_header(tmp_path):
    root = make_chestxray14(tmp_path, nested=True, trailing_comma=True)
    ds = ChestXray14Dataset(root, "all")
    assert ds.path(3) == root / "images_002" / "images" / "00000003_000.png"
    assert ds[3].image.shape == (16, 16)


def test_image_is_unit_float(tmp_path):
    ds = ChestXray14Dataset(make_chestxray14(tmp_path), "all")
    for i in (0, 3):  # grayscale and RGB file: the fixture is a 0..255 ramp
        im = ds[i].image
        assert im.dtype == np.float32 and im.shape == (16, 16)
        assert im[0, 0] == 0.0 and im[0, -1] == 1.0


def test_load_images_false(tmp_path):
    ds = ChestXray14Dataset(make_chestxray14(tmp_path), "train", load_images=False)
    assert ds[0].image is None
    assert ds.targets.shape == (3, 14)


def test_custom_split_file_ark_style(tmp_path):
    root = make_chestxray14(tmp_path)
    lst = write_text(tmp_path / "ark.txt", "images_001/images/00000002_000.png 0 0 0\n")
    ds = ChestXray14Dataset(root, split_file=lst)
    assert [s.id for s in ds] == ["00000002_000.png"]


def test_missing_index_and_column(tmp_path):
    with pytest.raises(DatasetFormatError, match="Data_Entry_2017.csv"):
        ChestXray14Dataset(tmp_path, "all")
    write_text(tmp_path / "Data_Entry_2017.csv", "Image Index,Patient ID\nx.png,1\n")
    with pytest.raises(DatasetFormatError, match="Finding Labels"):
        ChestXray14Dataset(tmp_path, "all")


def test_missing_split_list_and_bad_split(tmp_path):
    root = make_chestxray14(tmp_path)
    (root / "test_list.txt").unlink()
    with pytest.raises(DatasetFormatError, match="test_list.txt"):
        ChestXray14Dataset(root, "test")
    with pytest.raises(ValueError, match="valid: train, test, all"):
        ChestXray14Dataset(root, "val")
