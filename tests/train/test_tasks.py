"""Fine-tuning tasks: synthetic phantom cubes checked against the phantoms themselves, the
Models Genesis LIDC array format and LUNA16 candidate cubes on tiny fixtures written here."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from imaging.phantoms import make_chest_ct
from train.finetune.tasks import SPLIT_SEED_BASE, TASKS, Task, build_task

SMALL = dict(
    n_train_volumes=2,
    n_val_volumes=1,
    n_test_volumes=1,
    cube_size=(16, 16, 8),
    phantom_shape=(24, 48, 48),
    phantom_spacing=(6.5, 6.5, 6.5),
    nodule_diameter_mm=(10.0, 25.0),
)


@functools.cache
def phantom(seed: int):
    """HU and nodule mask of a phantom in (x, y, z) order, recomputed independently."""
    p = make_chest_ct(
        seed,
        shape=SMALL["phantom_shape"],
        spacing=SMALL["phantom_spacing"],
        findings=("nodule",),
        nodule_diameter_mm=SMALL["nodule_diameter_mm"],
    )
    hu = p.volume.voxels.transpose(2, 1, 0)
    return np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0), p.masks["nodule"].transpose(2, 1, 0)


def padded_crop(a, start, size):
    """a[start : start + size] with zeros outside (a different code path from the task's)."""
    pad = [(max(s, 0) + n, max(s, 0) + n) for s, n in zip(start, size, strict=True)]
    big = np.pad(a, [(p[0], p[1]) for p in pad])
    lo = [s + p[0] for s, p in zip(start, pad, strict=True)]
    return big[tuple(slice(b, b + n) for b, n in zip(lo, size, strict=True))]


@pytest.fixture(scope="module")
def seg() -> Task:
    return build_task("synthetic_nodule_seg", **SMALL)


@pytest.fixture(scope="module")
def cls() -> Task:
    return build_task("synthetic_nodule_cls", **SMALL)


def test_registry():
    assert set(TASKS) >= {
        "synthetic_nodule_seg",
        "synthetic_nodule_cls",
        "lidc_arrays",
        "luna16_candidates",
    }
    with pytest.raises(KeyError, match="synthetic_nodule_seg"):
        build_task("no_such_task")


def test_seg_shapes_and_dtypes(seg):
    assert seg.kind == "segmentation" and seg.cube_size == (16, 16, 8)
    for split in (seg.train, seg.val, seg.test):
        assert len(split) > 0
        x, y = split.batch(list(range(len(split))))
        assert x.dtype == torch.float32 and y.dtype == torch.float32
        assert x.shape == y.shape == (len(split), 1, 16, 16, 8)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert set(y.unique().tolist()) <= {0.0, 1.0}
    _, y = seg.train.batch(list(range(len(seg.train))))
    assert y.sum() > 0  # nodule-centred cubes hold nodule voxels


def test_seg_cubes_equal_the_phantom_at_their_location(seg):
    for split in (seg.train, seg.val, seg.test):
        x, y = split.batch(list(range(len(split))))
        for i, (ps, start) in enumerate(zip(split.meta["seed"], split.meta["start"], strict=True)):
            hu01, mask = phantom(int(ps))
            assert (start >= 0).all() and (start + (16, 16, 8) <= hu01.shape).all()  # inside
            sl = tuple(slice(s, s + n) for s, n in zip(start, (16, 16, 8), strict=True))
            np.testing.assert_array_equal(y[i, 0].numpy(), mask[sl].astype(np.float32))
            np.testing.assert_allclose(x[i, 0].numpy(), hu01[sl], atol=1e-6)


def test_seg_volumes_test_are_whole_test_phantoms(seg):
    assert len(seg.volumes_test) == SMALL["n_test_volumes"]
    x, m = seg.volumes_test[0]
    hu01, mask = phantom(SPLIT_SEED_BASE["test"])
    assert x.shape == m.shape == (1, *hu01.shape) == (1, 48, 48, 24)
    assert x.dtype == m.dtype == torch.float32
    np.testing.assert_allclose(x[0].numpy(), hu01, atol=1e-6)
    np.testing.assert_array_equal(m[0].numpy(), mask.astype(np.float32))


def test_splits_use_disjoint_phantoms(seg, cls):
    for task in (seg, cls):
        seeds = {s: set(getattr(task, s).meta["seed"].tolist()) for s in ("train", "val", "test")}
        assert seeds["train"] == {20000, 20001} and seeds["val"] == {30000}
        assert seeds["test"] == {40000}
        assert not (seeds["train"] & seeds["val"] or seeds["train"] & seeds["test"])


def test_cls_balanced_positives_centred_on_nodules_negatives_clean(cls):
    assert cls.kind == "classification" and cls.volumes_test == []
    size = np.array((16, 16, 8))
    for split in (cls.train, cls.val, cls.test):
        x, y = split.batch(list(range(len(split))))
        assert x.shape == (len(split), 1, 16, 16, 8) and y.shape == (len(split), 1)
        assert y.dtype == torch.float32 and 0 < y.sum() and y.sum() * 2 == len(split)
        for i, (ps, start) in enumerate(zip(split.meta["seed"], split.meta["start"], strict=True)):
            hu01, mask = phantom(int(ps))
            m = padded_crop(mask, start, size)
            np.testing.assert_allclose(x[i, 0].numpy(), padded_crop(hu01, start, size), atol=1e-6)
            if y[i, 0] == 1:
                assert m[8, 8, 4]  # the centre voxel (size // 2) is a nodule voxel
            else:
                assert not m.any()


def test_synthetic_is_deterministic():
    kw = {**SMALL, "n_val_volumes": 0, "n_test_volumes": 0, "n_train_volumes": 1}
    a, b = build_task("synthetic_nodule_seg", **kw), build_task("synthetic_nodule_seg", **kw)
    assert len(a.val) == 0 and len(a.train) == len(b.train)
    ia = list(range(len(a.train)))
    for ta, tb in zip(a.train.batch(ia), b.train.batch(ia), strict=True):
        assert torch.equal(ta, tb)
    c = build_task("synthetic_nodule_seg", **kw, seed=1)
    assert set(c.train.meta["seed"].tolist()) == {20000 + 100_000}


# --- lidc_arrays -------------------------------------------------------------------------------


def test_lidc_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.uniform(0, 1, (3, 8, 8, 4)).astype(np.float32)
    m_train = (rng.uniform(0, 1, (3, 8, 8, 4)) > 0.7).astype(np.uint8)
    x_valid = rng.uniform(0, 1, (2, 1, 8, 8, 4)).astype(np.float32)  # with a channel axis
    m_valid = (rng.uniform(0, 1, (2, 1, 8, 8, 4)) > 0.7).astype(np.float32)
    x_test = np.full((1, 8, 8, 4), -1000.0, np.float32)  # HU: normalised on the fly
    x_test[0, 0, 0, 0] = 0.0
    m_test = np.zeros((1, 8, 8, 4), bool)
    m_test[0, 1, 2, 3] = True
    for name, arr in dict(x_train=x_train, m_train=m_train, x_valid=x_valid, m_valid=m_valid,
                          x_test=x_test, m_test=m_test).items():  # fmt: skip
        np.save(tmp_path / f"{name}_64x64x32.npy", arr)
    task = build_task("lidc_arrays", root=tmp_path)
    assert task.kind == "segmentation" and task.cube_size == (8, 8, 4)
    assert (len(task.train), len(task.val), len(task.test)) == (3, 2, 1)
    x, y = task.train.batch([2, 0])
    assert x.shape == y.shape == (2, 1, 8, 8, 4) and x.dtype == y.dtype == torch.float32
    np.testing.assert_array_equal(x[:, 0].numpy(), x_train[[2, 0]])
    np.testing.assert_array_equal(y[:, 0].numpy(), m_train[[2, 0]].astype(np.float32))
    x, y = task.val.batch([1])
    np.testing.assert_array_equal(x.numpy(), x_valid[[1]])
    x, y = task.test.batch([0])
    assert x[0, 0, 0, 0, 0] == 0.5 and x.sum() == 0.5  # 0 HU → 0.5, -1000 HU → 0
    assert y[0, 0, 1, 2, 3] == 1 and y.sum() == 1
    (tmp_path / "m_test_64x64x32.npy").unlink()
    with pytest.raises(FileNotFoundError, match="m_test_64x64x32.npy"):
        build_task("lidc_arrays", root=tmp_path)


# --- luna16_candidates -------------------------------------------------------------------------

ORIGIN = (-100.5, 50.25, -300.0)  # (x, y, z) mm
SPACING = (0.7, 0.8, 2.5)
SIZE_XYZ = (40, 30, 20)
# (x, y, z) voxel index, HU planted there, class; world = origin + index * spacing, by hand:
PLANTED = [
    ((12, 7, 5), 400.0, 1),  # (-100.5 + 8.4, 50.25 + 5.6, -300 + 12.5) = (-92.1, 55.85, -287.5)
    ((1, 28, 18), 200.0, 1),  # (-99.8, 72.65, -255.0): the cube reaches outside the scan
    ((20, 10, 10), -500.0, 0),  # (-86.5, 58.25, -275.0)
    ((30, 20, 3), -600.0, 0),  # (-79.5, 66.25, -292.5)
    ((5, 5, 15), -700.0, 0),  # (-97.0, 54.25, -262.5)
]
WORLD = [(-92.1, 55.85, -287.5), (-99.8, 72.65, -255.0), (-86.5, 58.25, -275.0),
         (-79.5, 66.25, -292.5), (-97.0, 54.25, -262.5)]  # fmt: skip


def write_luna(root):
    rows = ["seriesuid,coordX,coordY,coordZ,class"]
    for k in range(3):  # one scan in each of subsets 0, 1, 2
        arr = np.zeros(SIZE_XYZ[::-1], np.int16)  # (z, y, x), 0 HU background
        for (ix, iy, iz), hu, _ in PLANTED:
            arr[iz, iy, ix] = hu + k  # a per-scan offset tells the scans apart
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin(ORIGIN)
        img.SetSpacing(SPACING)
        (root / f"subset{k}").mkdir(parents=True)
        sitk.WriteImage(img, str(root / f"subset{k}" / f"1.2.3.{k}.mhd"))
        rows += [
            f"1.2.3.{k},{x},{y},{z},{c}"
            for (x, y, z), (_, _, c) in zip(WORLD, PLANTED, strict=True)
        ]
    (root / "candidates.csv").write_text("\n".join(rows) + "\n")
    (root / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")


SUBSETS = {"train": (0,), "val": (1,), "test": (2,)}


def test_luna16_candidates_centre_voxels(tmp_path):
    write_luna(tmp_path)
    task = build_task("luna16_candidates", root=tmp_path, cube_size=(8, 8, 4), subsets=SUBSETS)
    assert task.kind == "classification" and task.cube_size == (8, 8, 4)
    for k, split in enumerate((task.train, task.val, task.test)):
        assert len(split) == len(PLANTED)
        x, y = split.batch(list(range(len(split))))
        assert x.shape == (5, 1, 8, 8, 4) and y.shape == (5, 1) and x.dtype == torch.float32
        assert y[:, 0].tolist() == [c for _, _, c in PLANTED]
        for i, (_, hu, _) in enumerate(PLANTED):
            assert x[i, 0, 4, 4, 2].item() == pytest.approx((hu + k + 1000.0) / 2000.0)
        # candidate 1 at (x, y) = (1, 28): cube x indices -3..4 and y indices 24..31, so x < 3
        # and y >= 6 of the cube lie outside the 40 × 30 scan (0 = padding, 0 HU = 0.5 inside)
        assert (x[1, 0, :3] == 0).all() and (x[1, 0, :, 6:] == 0).all()
        assert (x[1, 0, 3:, :6] > 0).all()
        assert set(split.meta["seriesuid"]) == {f"1.2.3.{k}"}


def test_luna16_negative_subsampling_and_cache(tmp_path):
    root = tmp_path / "luna"
    write_luna(root)
    kw = dict(root=root, cube_size=(8, 8, 4), subsets=SUBSETS, max_negatives_per_scan=1)
    a = build_task("luna16_candidates", **kw, cache_dir=tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 3 and not list((tmp_path / "cache").glob(".*"))  # no temporaries left
    assert isinstance(a.train.x, np.memmap)
    b = build_task("luna16_candidates", **kw, cache_dir=tmp_path / "cache")  # reads the cache
    assert sorted((tmp_path / "cache").glob("*.npy")) == files
    c = build_task("luna16_candidates", **kw)  # in memory
    for split in ("train", "val", "test"):
        sa, sb, sc = (getattr(t, split) for t in (a, b, c))
        assert len(sa) == 3  # both positives + one negative
        xa, ya = sa.batch([0, 1, 2])
        assert ya[:, 0].tolist() == [1.0, 1.0, 0.0]
        for other in (sb, sc):
            xo, yo = other.batch([0, 1, 2])
            assert torch.equal(xa, xo) and torch.equal(ya, yo)
    # the kept negative is one of the planted ones, centred on its voxel
    x, _ = a.train.batch([2])
    assert x[0, 0, 4, 4, 2].item() in [
        pytest.approx((hu + 1000) / 2000) for _, hu, _ in PLANTED[2:]
    ]


def test_background_cubes_reach_outside_the_lungs():
    """``background_cubes_per_volume`` adds cubes centred anywhere (the sliding window's usual
    view); without it every extra cube is centred in a lung."""
    from train.finetune.task_data import phantom_xyz, segmentation_cubes

    vol = phantom_xyz(20000, SMALL["phantom_shape"], SMALL["phantom_spacing"], (10.0, 25.0), (1, 3))
    lungs, size = vol[2], (16, 16, 8)

    def centres_in_lungs(items):
        return [bool(lungs[tuple(np.asarray(s) + np.asarray(size) // 2)]) for s, _, _ in items]

    rng = np.random.default_rng(0)
    only_lungs = segmentation_cubes(vol, rng, size, (0, 0, 0), 0, 20)
    anywhere = segmentation_cubes(vol, rng, size, (0, 0, 0), 0, 0, background_cubes=20)
    assert len(only_lungs) == len(anywhere) == 20
    # cubes are moved inside the volume, so a lung centre may shift: most stay in the lungs
    assert sum(centres_in_lungs(only_lungs)) >= 15
    assert sum(centres_in_lungs(anywhere)) <= 12
