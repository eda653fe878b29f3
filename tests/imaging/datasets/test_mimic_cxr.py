"""MIMIC-CXR-JPG reader: official split, study labels joined to images, gzip CSVs."""

import numpy as np
import pytest

from imaging.datasets import DatasetFormatError, MimicCxrDataset
from tests.imaging.datasets.fixtures import make_mimic

# label order (file order): 0 Atelectasis, 1 Cardiomegaly, 2 Consolidation, 3 Edema,
# 4 Enlarged Cardiomediastinum, 5 Fracture, 6 Lung Lesion, 7 Lung Opacity, 8 No Finding,
# 9 Pleural Effusion, 10 Pleural Other, 11 Pneumonia, 12 Pneumothorax, 13 Support Devices
PA = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
LAT = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"
UNLABELLED = "ffff0000-00000000-00000000-00000000-00000000"


def vec(*idx):
    t = np.zeros(14, np.float32)
    t[list(idx)] = 1
    return t


@pytest.mark.parametrize("gz", [True, False])
def test_train_split_from_gzip_or_plain(tmp_path, gz):
    ds = MimicCxrDataset(make_mimic(tmp_path, gz=gz), "train")
    assert [s.id for s in ds] == [PA, LAT, UNLABELLED]
    np.testing.assert_array_equal(ds[0].target, vec(8))  # No Finding
    np.testing.assert_array_equal(ds[0].mask, vec(8))
    np.testing.assert_array_equal(ds[1].target, vec(8))  # same study, same labels
    assert ds[0].meta == {"subject_id": "10000032", "study_id": "50414267", "view": "PA",
                          "split": "train", "labelled": True}  # fmt: skip
    assert ds.path(0) == tmp_path / "files/p10/p10000032/s50414267" / f"{PA}.jpg"
    assert ds[0].image.shape == (16, 16)


def test_study_without_labels_is_all_blank(tmp_path):
    root = make_mimic(tmp_path)
    s = MimicCxrDataset(root, "train", load_images=False)[2]
    assert s.meta["labelled"] is False
    np.testing.assert_array_equal(s.mask, np.zeros(14))
    s = MimicCxrDataset(root, "train", blank="zero", load_images=False)[2]
    np.testing.assert_array_equal(s.mask, np.ones(14))
    np.testing.assert_array_equal(s.target, np.zeros(14))


def test_validate_split_uncertain_ones(tmp_path):
    root = make_mimic(tmp_path)
    for split in ("validate", "val"):
        ds = MimicCxrDataset(root, split, uncertain="ones")
        assert len(ds) == 1
        np.testing.assert_array_equal(ds[0].target, vec(2, 11))  # Consolidation 1, Pneumonia -1
        np.testing.assert_array_equal(ds[0].mask, vec(2, 11))


def test_test_split_ignore_policy_and_competition(tmp_path):
    root = make_mimic(tmp_path)
    s = MimicCxrDataset(root, "test")[0]
    np.testing.assert_array_equal(s.target, vec(1, 7, 9, 13))
    np.testing.assert_array_equal(s.mask, vec(0, 1, 7, 9, 12, 13))  # Edema -1 ignored
    s = MimicCxrDataset(root, "test", classes="competition", blank="zero")[0]
    np.testing.assert_array_equal(s.target, [0, 1, 0, 0, 1])  # Atel Card Cons Edema PE
    np.testing.assert_array_equal(s.mask, [1, 1, 1, 0, 1])


def test_views_filter_and_all(tmp_path):
    root = make_mimic(tmp_path)
    ds = MimicCxrDataset(root, "train", views=("PA", "AP"))
    assert [s.id for s in ds] == [PA, UNLABELLED]
    assert len(MimicCxrDataset(root, "all")) == 5


def test_missing_files(tmp_path):
    root = make_mimic(tmp_path)
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    assert len(MimicCxrDataset(root, "train")) == 3  # metadata optional without a view filter
    with pytest.raises(DatasetFormatError, match="metadata.csv"):
        MimicCxrDataset(root, "train", views=("PA",))
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(DatasetFormatError, match="mimic-cxr-2.0.0-split.csv"):
        MimicCxrDataset(root, "train")
    with pytest.raises(ValueError, match="validate"):
        MimicCxrDataset(root, "valid")
