"""CheXpert reader: uncertainty and blank policies, views, class subsets."""

import numpy as np
import pytest

from imaging.datasets import CheXpertDataset, DatasetFormatError
from tests.imaging.datasets.fixtures import make_chexpert, write_text

# label order: 0 No Finding, 1 Enlarged Cardiomediastinum, 2 Cardiomegaly, 3 Lung Opacity,
# 4 Lung Lesion, 5 Edema, 6 Consolidation, 7 Pneumonia, 8 Atelectasis, 9 Pneumothorax,
# 10 Pleural Effusion, 11 Pleural Other, 12 Fracture, 13 Support Devices


def vec(*idx, value=1.0):
    t = np.zeros(14, np.float32)
    t[list(idx)] = value
    return t


@pytest.fixture
def root(tmp_path):
    return make_chexpert(tmp_path)


def test_default_ignore_uncertain_and_blank_missing(root):
    ds = CheXpertDataset(root, "train")
    assert len(ds) == 3
    s = ds[1]  # Cardiomegaly 0, Edema -1, Atelectasis -1, Pleural Effusion 1, rest blank
    np.testing.assert_array_equal(s.target, vec(10))
    np.testing.assert_array_equal(s.mask, vec(2, 10))
    np.testing.assert_array_equal(ds[0].target, vec(0, 13))
    np.testing.assert_array_equal(ds[0].mask, vec(0, 9, 13))


def test_uncertain_ones_and_zeros(root):
    ones = CheXpertDataset(root, uncertain="ones")[1]
    np.testing.assert_array_equal(ones.target, vec(5, 8, 10))
    np.testing.assert_array_equal(ones.mask, vec(2, 5, 8, 10))
    zeros = CheXpertDataset(root, uncertain="zeros")[1]
    np.testing.assert_array_equal(zeros.target, vec(10))
    np.testing.assert_array_equal(zeros.mask, vec(2, 5, 8, 10))


def test_lsr_ones_in_range_and_deterministic(root):
    a = CheXpertDataset(root, uncertain="lsr_ones", blank="zero", seed=3)
    b = CheXpertDataset(root, uncertain="lsr_ones", blank="zero", seed=3)
    c = CheXpertDataset(root, uncertain="lsr_ones", blank="zero", seed=4)
    t = a[1].target
    for k in (5, 8):
        assert 0.55 <= t[k] <= 0.85
    assert t[5] != t[8]
    assert t[10] == 1.0 and t[2] == 0.0
    np.testing.assert_array_equal(a[1].mask, np.ones(14))
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.targets, c.targets)
    lsr0 = CheXpertDataset(root, uncertain="lsr_zeros")[2].target[6]  # Consolidation -1
    assert 0.0 <= lsr0 <= 0.3


def test_blank_zero_is_known_negative(root):
    s = CheXpertDataset(root, blank="zero")[0]
    np.testing.assert_array_equal(s.target, vec(0, 13))
    np.testing.assert_array_equal(s.mask, np.ones(14))


def test_competition_classes_and_frontal_only(root):
    ds = CheXpertDataset(root, classes="competition", uncertain="ones", frontal_only=True)
    assert ds.label_names == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                              "Pleural Effusion")  # fmt: skip
    assert len(ds) == 2 and all(s.meta["view"] == "Frontal" for s in ds)
    np.testing.assert_array_equal(ds[1].target, [1, 0, 0, 1, 1])
    np.testing.assert_array_equal(ds[1].mask, [1, 1, 0, 1, 1])


def test_valid_split_meta_and_image(root):
    for split in ("valid", "test"):
        ds = CheXpertDataset(root, split)
        assert [s.id for s in ds] == [
            "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
        ]
        np.testing.assert_array_equal(ds[0].target, vec(1, 2, 3))
        np.testing.assert_array_equal(ds[0].mask, np.ones(14))
    s = ds[0]
    assert s.meta["patient_id"] == "patient64541" and s.meta["study_id"] == "study1"
    assert s.image.shape == (16, 16) and s.image.dtype == np.float32
    assert abs(float(s.image.mean()) - 128 / 255) < 2 / 255


def test_root_may_be_the_chexpert_folder(root):
    ds = CheXpertDataset(root / "CheXpert-v1.0-small", "valid")
    assert ds[0].image is not None


def test_errors(tmp_path, root):
    with pytest.raises(DatasetFormatError, match="CheXpert-v1.0-small"):
        CheXpertDataset(tmp_path / "CheXpert-v1.0-small" / "train")  # not a dataset root
    with pytest.raises(ValueError, match="uncertain"):
        CheXpertDataset(root, uncertain="maybe")
    with pytest.raises(KeyError, match="competition"):
        CheXpertDataset(root, classes="nope")
    write_text(root / "CheXpert-v1.0-small" / "valid.csv", "Path,Frontal/Lateral\nx.jpg,Frontal\n")
    with pytest.raises(DatasetFormatError, match="No Finding"):
        CheXpertDataset(root, "valid")
