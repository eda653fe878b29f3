"""The pooled-labels baseline of bench/ark_accrual.py: labels pooled by meaning, absent labels
masked, and each dataset's labels read back out of the union (issue #18, item 4)."""

import numpy as np
import pytest

import train.ark.pooled as pooled
from train.ark.config import ArkDatasetConfig
from train.ark.data import ArraySource
from train.ark.pooled import PooledMethod, evaluate_pooled_run, pool_sources, union_labels
from train.ark.transfer import TransferConfig
from train.engine import fit

DATASETS = [ArkDatasetConfig(name=n) for n in ("synth_cxpt", "synth_nih", "synth_vindr")]
# By hand from labels.yaml: the union in first-spelling order, and where each label lands.
UNION = ("No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion")
COLUMNS = {
    "synth_cxpt": {"No Finding": 0, "Cardiomegaly": 1, "Pleural Effusion": 2,
                   "Pneumothorax": 3, "Lung Lesion": 4},
    "synth_nih": {"Cardiomegaly": 1, "Effusion": 2, "Nodule": 4},
    "synth_vindr": {"Pleural effusion": 2, "Pneumothorax": 3, "Lung tumor": 4, "No finding": 0},
}  # fmt: skip
LABELS = {name: tuple(cols) for name, cols in COLUMNS.items()}


def test_union_pools_labels_by_meaning():
    names, columns = union_labels(DATASETS, [LABELS[d.name] for d in DATASETS])
    assert names == UNION
    assert columns == [list(COLUMNS[d.name].values()) for d in DATASETS]


def test_union_refuses_what_it_cannot_pool():
    with pytest.raises(ValueError, match="map a real dataset's labels by hand"):
        union_labels([ArkDatasetConfig(name="chexpert")], [("Cardiomegaly",)])
    with pytest.raises(ValueError, match="multi-label"):
        union_labels([ArkDatasetConfig(name="synth_rsna", task="multiclass")], [("Normal",)])


def test_pooled_source_masks_labels_a_dataset_lacks():
    a = ArraySource("a", np.zeros((2, 4, 4)), np.array([[1, 0], [0, 1]], np.float32),
                    np.array([[1, 1], [0, 1]], np.float32), 0, ("x", "y"))  # fmt: skip
    b = ArraySource("b", np.ones((1, 4, 4)), np.array([[1]], np.float32),
                    np.ones((1, 1), np.float32), 1, ("z",))  # fmt: skip
    src = pool_sources([a, b], ("y", "x", "z"), [[1, 0], [2]])
    np.testing.assert_array_equal(src.target, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(src.mask, [[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    images, target, mask, head = src.batch([2, 0])
    assert images.shape == (2, 1, 4, 4) and float(images[0].min()) == 1.0
    assert head.tolist() == [0, 0] and target.tolist() == [[0, 0, 1], [0, 1, 0]]


def _cfg(tmp_path) -> TransferConfig:
    cfg = TransferConfig(init="scratch", size=32, ten_crop=False)
    cfg.model.backbone, cfg.model.embed_dim = "resnet18", 16
    cfg.data.load_size, cfg.data.cache_dir = 36, str(tmp_path / "cache")
    cfg.loop.epochs, cfg.loop.batch_size, cfg.loop.progress = 1, 8, False
    reader = {"n": 16, "size": [36, 36], "ct_shape": [48, 64, 64]}
    split = {"val": {"n": 8}, "test": {"n": 24}}
    datasets = [ArkDatasetConfig(name=d.name, reader=reader, per_split=split) for d in DATASETS]
    return pooled.pooled_config(datasets, cfg)


def test_pooled_run_trains_and_reads_each_dataset_back(tmp_path, monkeypatch):
    """A one-epoch pooled run trains on all 48 films with one head of 5 outputs; then an oracle
    that writes each film's phantom truth into the union columns listed by hand above must score
    AUROC 1 on every dataset's own labels: the read-back picks the right columns."""
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    method = PooledMethod(cfg, run)
    fit(method, run)
    train = method.source("train")
    assert len(train) == 48 and train.num_classes == 5
    assert train.mask[16:32, [0, 3]].sum() == 0  # synth_nih: no "No Finding", no pneumothorax
    real = evaluate_pooled_run(run, cfg, "test")
    assert set(real["datasets"]) == {d.name for d in DATASETS}
    assert set(real["datasets"]["synth_nih"]["auroc"]) == set(LABELS["synth_nih"])

    def oracle(model, part, device, **kw):
        rng = np.random.default_rng(0)
        probs = rng.uniform(0.2, 0.8, (len(part), len(UNION))).astype(np.float32)
        for j, label in enumerate(part.label_names):
            probs[:, COLUMNS[part.name][label]] = part.truth[:, j]
        return probs

    monkeypatch.setattr(pooled, "predict", oracle)
    result = evaluate_pooled_run(run, cfg, "test")
    for name, r in result["datasets"].items():
        truth = [v for v in r["truth"]["auroc"].values() if not np.isnan(v)]
        assert truth and min(truth) == 1.0, (name, r["truth"])
