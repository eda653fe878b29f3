"""Heterogeneous synthetic sources (label sets, noise, uncertainty policies) and the image cache."""

import pickle

import numpy as np
import pytest

from imaging.datasets import (
    DATASETS,
    SOURCES,
    SyntheticChestDataset,
    build_dataset,
    load_label_names,
)
from imaging.datasets import image_cache as ic
from imaging.datasets.base import stable_uniform
from imaging.datasets.synthetic_multi import parse_rule

NAMES = ("synth_cxpt", "synth_nih", "synth_vindr", "synth_rsna")
SPLITS = ("train", "val", "test")
SMALL = {"size": (32, 32), "ct_shape": (32, 48, 48)}  # renders in ~0.15 s


def lazy(name, n=2000, **kw):
    return build_dataset(name, n=n, load_images=False, **kw)


def within(rate, p, k):
    """Is a measured rate over k Bernoulli(p) draws within 4 standard errors (+ slack) of p?"""
    return abs(rate - p) <= 4 * np.sqrt(p * (1 - p) / k) + 0.005


def test_label_sets_differ_and_overlap():
    real = {"synth_cxpt": "chexpert", "synth_nih": "chestxray14", "synth_vindr": "vindr_cxr"}
    for name, of in real.items():  # spelled as the real release, so they are a subset of it
        assert set(load_label_names(name)) < set(load_label_names(of))
    assert load_label_names("synth_rsna") == load_label_names("rsna_pneumonia")
    direct = {}  # findings that a label names directly (not through none()/any() rules)
    for name in NAMES:
        ds = lazy(name, n=3)
        assert name in DATASETS and ds.name == name and ds.label_names == load_label_names(name)
        assert ds[0].target.shape == ds[0].mask.shape == (len(ds.label_names),)
        direct[name] = {
            ds.finding_names[idx[0]]
            for ((is_any, idx),) in (t for t in ds.rules if len(t) == 1)
            if is_any and len(idx) == 1
        }
    assert direct["synth_cxpt"] == set(lazy(NAMES[0], 1).finding_names)
    assert direct["synth_nih"] == {"cardiomegaly", "effusion", "nodule"}
    assert direct["synth_vindr"] == {"effusion", "pneumothorax", "nodule"}
    assert direct["synth_rsna"] == set()  # classes are combinations of findings
    assert direct["synth_nih"] & direct["synth_vindr"] == {"effusion", "nodule"}
    label_sets = [frozenset(load_label_names(n)) for n in NAMES]
    assert len(set(label_sets)) == len(NAMES)
    with pytest.raises(ValueError, match="unknown finding"):
        parse_rule("any(nodule, fracture)", ("nodule",))


def _first(ds, cell, n):
    for i in range(n):
        cells = ds[i].meta["cells"]
        if cell in cells:
            return i, cells.index(cell)
    raise AssertionError(f"no {cell!r} cell in {n} items")


@pytest.mark.parametrize(
    "uncertain,blank,u_expect,b_expect",
    [
        ("ones", "zero", (1.0, 1.0), (0.0, 1.0)),
        ("zeros", "missing", (0.0, 1.0), (0.0, 0.0)),
        ("ignore", "zero", (0.0, 0.0), (0.0, 1.0)),
        ("lsr_ones", "missing", None, (0.0, 0.0)),
    ],
)
def test_uncertainty_policies(uncertain, blank, u_expect, b_expect):
    ds = lazy("synth_cxpt", n=300, seed=3, uncertain=uncertain, blank=blank)
    i, c = _first(ds, "-1", 300)
    s = ds[i]
    if u_expect is None:  # LSR-Ones: U(0.55, 0.85) per (seed, image, label), stable across calls
        t = s.target[c]
        assert 0.55 <= t <= 0.85 and s.mask[c] == 1
        assert t == np.float32(stable_uniform(0.55, 0.85, 3, s.id, ds.label_names[c]))
        again = lazy("synth_cxpt", n=300, seed=3, uncertain=uncertain, blank=blank)[i]
        assert again.target[c] == t
    else:
        assert (s.target[c], s.mask[c]) == u_expect
    i, c = _first(ds, "", 300)
    assert (ds[i].target[c], ds[i].mask[c]) == b_expect
    for cell, expect in (("1", (1.0, 1.0)), ("0", (0.0, 1.0))):
        i, c = _first(ds, cell, 300)
        assert (ds[i].target[c], ds[i].mask[c]) == expect
    # the cells themselves do not depend on the policy
    ref = lazy("synth_cxpt", n=50, seed=3)
    assert [ds[i].meta["cells"] for i in range(50)] == [ref[i].meta["cells"] for i in range(50)]


def test_cell_rates_of_the_report_labeler():
    ds, spec = lazy("synth_cxpt"), SOURCES["synth_cxpt"]
    cells = np.array([ds[i].meta["cells"] for i in range(len(ds))])
    noisy = np.stack([ds[i].meta["votes"][0] for i in range(len(ds))]).astype(bool)
    pos, neg = cells[noisy], cells[~noisy]
    assert set(pos) <= {"1", "-1"} and set(neg) <= {"0", "-1", ""}
    assert within(np.mean(pos == "-1"), spec.uncertain_pos, pos.size)
    assert within(np.mean(neg == ""), spec.blank_rate, neg.size)
    assert within(np.mean(neg == "-1"), spec.uncertain_neg, neg.size)
    masks = lazy("synth_cxpt", blank="missing", uncertain="ignore").masks
    np.testing.assert_array_equal(masks, (cells == "0") | (cells == "1"))


def test_nih_noise_rates():
    ds, spec = lazy("synth_nih"), SOURCES["synth_nih"]
    y, t, m = ds.targets, ds.truth, ds.masks
    assert np.all(m == 1) and set(np.unique(y)) <= {0.0, 1.0}
    assert within(np.mean(y[t == 1] == 0), spec.miss_rate[0], int((t == 1).sum()))
    assert within(np.mean(y[t == 0] == 1), spec.false_positive_rate[0], int((t == 0).sum()))
    assert 0.04 < np.mean(y[t == 1] == 0) and 0.005 < np.mean(y[t == 0] == 1)  # noise exists
    # per-finding prevalence of the truth is the configured one
    for c, name in enumerate(ds.label_names):
        p = spec.prevalence[ds.finding_names[int(ds.rules[c][0][1][0])]]
        assert within(t[:, c].mean(), p, len(ds)), name
    # raising a rate only adds errors to the same items (noise draws do not depend on the rates)
    worse = ds.with_spec(miss_rate=(0.3,)).targets
    assert np.all(worse[t == 0] == y[t == 0]) and np.all(worse[y == 0] == 0)


def test_vindr_readers_any_rule_and_rates():
    ds, spec = lazy("synth_vindr"), SOURCES["synth_vindr"]
    votes = np.stack([ds[i].meta["votes"] for i in range(len(ds))])  # (N, R, C)
    assert votes.shape == (len(ds), 3, 4)
    y, t = ds.targets, ds.truth
    nf = ds.label_names.index("No finding")
    found = [c for c in range(4) if c != nf]
    np.testing.assert_array_equal(y[:, found], votes[:, :, found].max(axis=1))
    np.testing.assert_array_equal(y[:, nf], votes[:, :, nf].min(axis=1))  # all readers: normal
    np.testing.assert_array_equal(t[:, nf], [not ds[i].meta["findings"] for i in range(len(ds))])
    tf = t[:, found]
    for r in range(3):
        v = votes[:, r, found]
        assert within(np.mean(v[tf == 1] == 0), spec.miss_rate[r], int((tf == 1).sum()))
        assert within(np.mean(v[tf == 0] == 1), spec.false_positive_rate[r], int((tf == 0).sum()))
    fp_any = 1 - np.prod([1 - p for p in spec.false_positive_rate])
    assert within(np.mean(y[:, found][tf == 0] == 1), fp_any, int((tf == 0).sum()))


def test_rsna_is_one_hot():
    ds = lazy("synth_rsna", n=500)
    y, t = ds.targets, ds.truth
    np.testing.assert_array_equal(y.sum(1), 1)
    np.testing.assert_array_equal(t.sum(1), 1)
    normal = ds.label_names.index("Normal")
    assert all(t[i, normal] == (not ds[i].meta["findings"]) for i in range(len(ds)))
    assert 0.1 < y.mean(0).min()  # every class occurs


def test_determinism_and_disjoint_splits():
    a, b = lazy("synth_cxpt", n=200), lazy("synth_cxpt", n=200)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert [a[i].meta["cells"] for i in range(200)] == [b[i].meta["cells"] for i in range(200)]
    assert not np.array_equal(a.targets, lazy("synth_cxpt", n=200, seed=1).targets)
    seeds = {s: {lazy("synth_cxpt", 200, split=s).item_seed(i) for i in range(200)} for s in SPLITS}
    assert seeds["train"].isdisjoint(seeds["val"]) and seeds["train"].isdisjoint(seeds["test"])
    assert seeds["val"].isdisjoint(seeds["test"])
    # the same index in two sources is a different patient
    assert a.item_seed(0) != lazy("synth_nih", 1).item_seed(0)
    test = lazy("synth_cxpt", 5, split="test")[2]
    assert test.meta["truth"].shape == test.target.shape and test.id == "synth_cxpt/test/2"
    with pytest.raises(IndexError):
        a[200]
    with pytest.raises(ValueError, match="uncertain"):
        lazy("synth_cxpt", 1, uncertain="maybe")


def test_rendering_small_and_pixel_noise():
    ds = build_dataset("synth_nih", n=2, seed=4, **SMALL)
    s = ds[1]
    assert s.image.shape == (32, 32) and s.image.dtype == np.float32
    assert 0.0 <= s.image.min() and s.image.max() <= 1.0 and s.image.std() > 0.02
    np.testing.assert_array_equal(
        build_dataset("synth_nih", n=2, seed=4, **SMALL)[1].image, s.image
    )
    clean = ds.with_spec(noise_std=0.0).render(1)
    noise = (s.image - clean)[(clean > 0.1) & (clean < 0.9)]
    assert abs(noise.std() - SOURCES["synth_nih"].noise_std) < 0.005
    assert len({(sp.gain, sp.gamma, sp.noise_std, sp.size) for sp in SOURCES.values()}) == 4


def test_cache_round_trip_reuse_and_key(tmp_path, monkeypatch):
    ds = build_dataset("synth_vindr", n=3, seed=2, **SMALL)
    c = ic.cache_images(ds, tmp_path, progress=False)
    assert c.rendered == 3 and c.images.shape == (3, 32, 32) and c.images.dtype == np.float32
    assert isinstance(c.images, np.memmap) and c.path.parent == tmp_path
    for i in range(3):
        np.testing.assert_array_equal(c.images[i], ds[i].image)
    np.testing.assert_array_equal(c.targets, ds.targets)
    np.testing.assert_array_equal(c.truth, ds.truth)
    assert c[1].id == ds[1].id and c.label_names == ds.label_names

    def fail(*_):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(ic, "_render_one", fail)
    again = ic.cache_images(build_dataset("synth_vindr", n=3, seed=2, **SMALL), tmp_path)
    assert again.rendered == 0 and again.path == c.path
    np.testing.assert_array_equal(again.images, c.images)
    # pickles (for DataLoader workers) by path, not by pixels
    blob = pickle.dumps(again)
    assert len(blob) < again.images.nbytes
    np.testing.assert_array_equal(pickle.loads(blob).images, c.images)
    # the key follows the pixels: label noise does not change it, display gain does
    assert ic.cache_path(ds.with_spec(miss_rate=(0.5,) * 3, false_positive_rate=(0,) * 3)) == (
        ic.cache_path(ds)
    )
    assert ic.cache_path(ds.with_spec(gain=0.5), tmp_path) != c.path
    assert ic.cache_path(build_dataset("synth_vindr", n=4, seed=2, **SMALL), tmp_path) != c.path


def test_cache_interrupted_leaves_nothing(tmp_path, monkeypatch):
    ds = build_dataset("synth_cxpt", n=3, **SMALL)
    calls = []

    def flaky(dataset, i):
        calls.append(i)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.zeros(dataset.size, np.float32)

    monkeypatch.setattr(ic, "_render_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        ic.cache_images(ds, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the cache file nor a temporary one


def test_cache_pool_with_synthetic_chest(tmp_path):
    ds = SyntheticChestDataset(n=6, seed=5, finding_rate=0.5, **SMALL)
    c = ic.cache_images(ds, tmp_path, workers=2, progress=False)
    assert c.rendered == 6 and c.images.shape == (6, 32, 32)
    for i in (0, 5):
        np.testing.assert_array_equal(c.images[i], ds[i].image)
    lazy_ds = SyntheticChestDataset(n=6, seed=5, finding_rate=0.5, load_images=False)
    np.testing.assert_array_equal(c.targets, np.stack([lazy_ds[i].target for i in range(6)]))
    np.testing.assert_array_equal(c.masks, np.ones((6, 4)))
    assert ic.cache_images(ds, tmp_path).rendered == 0
    with pytest.raises(TypeError, match="cannot key"):
        ic.image_params(object())
