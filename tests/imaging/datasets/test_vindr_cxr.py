"""VinDr-CXR reader: reader aggregation, test-file header spelling, DICOM scaling."""

import numpy as np
import pytest

from imaging.datasets import DatasetFormatError, VinDrCxrDataset
from tests.imaging.datasets.fixtures import make_vindr, write_text

A, B = "000434271f63a053c4128a0ba6352c7f", "00053190460d56c53cc3e57321387478"
# indices in the 28-label order: 0 Aortic enlargement, 3 Cardiomegaly, 16 Pleural effusion,
# 23 Lung tumor, 25 Tuberculosis, 26 Other diseases, 27 No finding


def vec(*idx, n=28):
    t = np.zeros(n, np.float32)
    t[list(idx)] = 1
    return t


def test_any_reader(tmp_path):
    ds = VinDrCxrDataset(make_vindr(tmp_path), "train", readers="any")
    assert [s.id for s in ds] == [A, B]
    np.testing.assert_array_equal(ds[0].target, vec(0, 3, 16, 26))
    np.testing.assert_array_equal(ds[1].target, vec(25, 27))
    np.testing.assert_array_equal(ds[0].mask, np.ones(28))
    assert ds[0].meta["n_readers"] == 3 and ds[0].meta["readers"] == ["R11", "R9", "R10"]


def test_majority_reader(tmp_path):
    ds = VinDrCxrDataset(make_vindr(tmp_path), "train", readers="majority")
    np.testing.assert_array_equal(ds[0].target, vec(0, 3))  # AE 2/3, Cardiomegaly 3/3
    np.testing.assert_array_equal(ds[1].target, vec(27))  # No finding 2/3


def test_ark_classes(tmp_path):
    root = make_vindr(tmp_path)
    ds = VinDrCxrDataset(root, "train", classes="ark")
    assert ds.label_names == ("Pleural effusion", "Lung tumor", "Pneumonia", "Tuberculosis",
                              "Other diseases", "No finding")  # fmt: skip
    np.testing.assert_array_equal(ds[0].target, [1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(ds[1].target, [0, 0, 0, 1, 0, 1])
    maj = VinDrCxrDataset(root, "train", classes="ark", readers="majority")
    np.testing.assert_array_equal(maj[1].target, [0, 0, 0, 0, 0, 1])


def test_test_split_singular_header(tmp_path):
    ds = VinDrCxrDataset(make_vindr(tmp_path), "test")
    assert len(ds) == 1 and ds[0].meta["n_readers"] == 1
    np.testing.assert_array_equal(ds[0].target, vec(23))
    im = ds[0].image  # MONOCHROME2 0..4095 ramp, no window: min-max
    assert im.shape == (16, 16) and im[0, 0] == 0.0 and im[0, -1] == 1.0


def test_dicom_monochrome1_and_window(tmp_path):
    ds = VinDrCxrDataset(make_vindr(tmp_path), "train")
    inverted = ds[0].image  # MONOCHROME1: higher stored value is darker, so the ramp flips
    assert inverted[0, 0] == pytest.approx(1.0) and inverted[0, -1] == pytest.approx(0.0)
    windowed = ds[1].image  # window 2048/4096, DICOM LINEAR (center − 0.5, width − 1): 0..4095
    assert windowed[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert windowed[0, -1] == pytest.approx(1.0, abs=1e-6)
    assert windowed.dtype == np.float32


def test_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="image_labels_train.csv"):
        VinDrCxrDataset(tmp_path, "train")
    write_text(
        tmp_path / "annotations" / "image_labels_train.csv", "image_id,rad_id,COPD\nx,R1,0\n"
    )
    with pytest.raises(DatasetFormatError, match="Aortic enlargement"):
        VinDrCxrDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="readers"):
        VinDrCxrDataset(tmp_path, "train", readers="all")
