"""imaging.phantoms: determinism, tissue values, findings confined to masks, landmarks, DRR."""

from __future__ import annotations

import time

import numpy as np
import pytest

from imaging.phantoms import (
    FINDINGS,
    LANDMARKS,
    ChestPhantom,
    Radiograph,
    make_chest_ct,
    make_radiograph,
)

SEED = 7


@pytest.fixture(scope="module")
def normal() -> ChestPhantom:
    return make_chest_ct(SEED)


@pytest.fixture(scope="module")
def with_finding():
    cache = {}

    def get(*names):
        if names not in cache:
            cache[names] = make_chest_ct(SEED, findings=names)
        return cache[names]

    return get


def _widest(mask: np.ndarray) -> int:
    """Widest left-right extent (columns) of a (D, H, W) mask over all slices, seen frontally."""
    cols = mask.any(axis=1)
    widths = [np.flatnonzero(r)[-1] - np.flatnonzero(r)[0] + 1 for r in cols if r.any()]
    return max(widths)


def test_same_seed_same_arrays_and_different_seed_differs(normal):
    again = make_chest_ct(SEED)
    np.testing.assert_array_equal(again.volume.voxels, normal.volume.voxels)
    assert again.masks.keys() == normal.masks.keys()
    for k in normal.masks:
        np.testing.assert_array_equal(again.masks[k], normal.masks[k])
    for k in LANDMARKS:
        np.testing.assert_array_equal(again.landmarks[k], normal.landmarks[k])
    other = make_chest_ct(SEED + 1)
    assert not np.array_equal(other.volume.voxels, normal.volume.voxels)


def test_volume_layout_and_affine(normal):
    vol = normal.volume
    assert vol.voxels.shape == (64, 128, 128) and vol.voxels.dtype == np.float32
    assert vol.spacing == (2.5, 2.5, 2.5)
    # d towards the feet (-z), h posterior (+y), w to the patient's left (+x): DICOM axial slices
    np.testing.assert_allclose(vol.affine[:3, :3], [[0, 0, 2.5], [0, 2.5, 0], [-2.5, 0, 0]])
    small = make_chest_ct(1, shape=(24, 40, 48), spacing=(5.0, 2.0, 1.5))
    assert small.volume.voxels.shape == (24, 40, 48)
    assert set(small.landmarks) >= set(LANDMARKS)


def test_tissue_values(normal):
    v, m = normal.volume.voxels, normal.masks
    assert -900 <= np.median(v[m["anatomy/lungs"]]) <= -750
    assert np.median(v[m["anatomy/bone"]]) > 300
    assert np.median(v[m["anatomy/ribs"]]) > 300 and np.median(v[m["anatomy/spine"]]) > 300
    assert 20 <= np.median(v[m["anatomy/heart"]]) <= 70
    assert 20 <= np.median(v[m["anatomy/aorta"]]) <= 70
    assert np.median(v[m["anatomy/airway"]]) < -900
    assert 40 <= np.median(v[m["anatomy/liver"]]) <= 80
    assert np.median(v[~m["anatomy/body"]]) < -950
    body_soft = m["anatomy/body"] & ~m["anatomy/lungs"] & ~m["anatomy/bone"] & ~m["anatomy/airway"]
    assert -150 <= np.median(v[body_soft]) <= 80
    # lung parenchyma has texture and vessels, not a flat value
    lung = v[m["anatomy/lungs"]]
    assert lung.std() > 20 and (lung > -300).mean() > 0.003


def test_labels_and_masks(normal, with_finding):
    assert normal.labels == {f: 0 for f in FINDINGS}
    assert not any(k in normal.masks for k in FINDINGS)
    ct = with_finding(*FINDINGS)
    assert ct.labels == {f: 1 for f in FINDINGS}
    for name in FINDINGS:
        assert ct.masks[name].dtype == bool and ct.masks[name].shape == ct.volume.shape
    with pytest.raises(ValueError, match="nodule"):
        make_chest_ct(SEED, findings=("tumour",))


@pytest.mark.parametrize("name", FINDINGS)
def test_finding_changes_ct_and_film_only_inside_its_mask(normal, with_finding, name):
    ct = with_finding(name)
    mask = ct.masks[name]
    a, b = normal.volume.voxels, ct.volume.voxels
    np.testing.assert_array_equal(a[~mask], b[~mask])
    assert (a[mask] != b[mask]).mean() > 0.5
    for k in normal.masks:  # the normal anatomy does not move
        np.testing.assert_array_equal(ct.masks[f"{k}"], normal.masks[k])
    ra, rb = make_radiograph(normal), make_radiograph(ct)
    m2 = rb.masks[name]
    assert m2.any() and not m2.all()
    np.testing.assert_array_equal(ra.pixels[~m2], rb.pixels[~m2])
    assert np.any(ra.pixels[m2] != rb.pixels[m2])
    # the film mask is the footprint of the CT mask: every column ray through the mask lands in it
    rows, cols = ra.pixels.shape
    d, _, w = np.nonzero(mask)
    r = np.rint((d + 0.5) * rows / mask.shape[0] - 0.5).astype(int)
    c = np.rint((w + 0.5) * cols / mask.shape[2] - 0.5).astype(int)
    assert m2[r, c].all()


def test_all_findings_change_only_the_union(normal, with_finding):
    ct = with_finding(*FINDINGS)
    union = np.zeros(ct.volume.shape, dtype=bool)
    for name in FINDINGS:
        union |= ct.masks[name]
    np.testing.assert_array_equal(normal.volume.voxels[~union], ct.volume.voxels[~union])


def test_finding_geometry(normal, with_finding):
    lungs = normal.masks["anatomy/lungs"]
    v0 = normal.volume.voxels
    nod = with_finding("nodule")
    assert (nod.masks["nodule"] <= lungs).all()
    assert np.median(nod.volume.voxels[nod.masks["nodule"]]) > -500
    eff = with_finding("effusion")
    m = eff.masks["effusion"]
    assert (m <= lungs).all() and 0 <= np.median(eff.volume.voxels[m]) <= 30
    d, h, _ = np.nonzero(m)
    ld, lh, _ = np.nonzero(lungs)
    assert d.mean() > ld.mean() and h.mean() > lh.mean()  # inferior and posterior (dependent)
    ptx = with_finding("pneumothorax")
    m = ptx.masks["pneumothorax"]
    assert (m <= lungs).all()
    assert np.median(ptx.volume.voxels[m]) < -950 and np.median(v0[m]) > -950
    # the air rim lies on one side only
    assert (m & normal.masks["anatomy/lung_left"]).any() != (
        m & normal.masks["anatomy/lung_right"]
    ).any()


def test_nodule_size_follows_the_requested_diameter():
    ct = make_chest_ct(
        3, findings=("nodule",), nodule_diameter_mm=(20.0, 20.0), nodule_count=(1, 1)
    )
    m = ct.masks["nodule"]
    extent_mm = [
        (np.ptp(ix) + 1) * s for ix, s in zip(np.nonzero(m), ct.volume.spacing, strict=True)
    ]
    for e in extent_mm:
        assert 20.0 - 2.5 <= e <= 20.0 + 2 * 2.5


def test_cardiothoracic_ratio(normal, with_finding):
    ctr = _widest(normal.masks["anatomy/heart"]) / _widest(normal.masks["anatomy/lungs"])
    assert 0.3 < ctr < 0.5
    big = with_finding("cardiomegaly")
    heart = big.masks["anatomy/heart"] | big.masks["cardiomegaly"]
    assert _widest(heart) / _widest(big.masks["anatomy/lungs"]) > 0.5
    assert big.params["cardiothoracic_ratio"] > 0.5 > normal.params["cardiothoracic_ratio"]


def test_patients_differ(normal):
    others = [make_chest_ct(s, shape=(32, 64, 64)) for s in (11, 12, 13)]
    hearts = {int(o.masks["anatomy/heart"].sum()) for o in others}
    bodies = {int(o.masks["anatomy/body"].sum()) for o in others}
    assert len(hearts) == 3 and len(bodies) == 3
    assert len({round(o.params["cavity_half_width"], 3) for o in others}) == 3


def _near(mask: np.ndarray, p: np.ndarray, r: int = 1) -> bool:
    """Any True voxel of ``mask`` within ``r`` voxels of the point ``p`` (d, h, w)."""
    i = np.rint(p).astype(int)
    lo, hi = np.maximum(i - r, 0), i + r + 1
    return bool(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].any())


def test_landmarks_sit_on_their_anatomy(normal, with_finding):
    lm, m = normal.landmarks, normal.masks
    assert set(lm) == set(LANDMARKS)
    for k, p in lm.items():
        assert (
            p.shape == (3,) and np.all(p >= 0) and np.all(p <= np.array(normal.volume.shape) - 1)
        ), k
    v = normal.volume.voxels
    c = np.rint(lm["carina"]).astype(int)
    assert _near(m["anatomy/airway"], lm["carina"], 0) and v[tuple(c)] < -500
    for side in ("left", "right"):
        lung = m[f"anatomy/lung_{side}"]
        apex = lm[f"lung_apex_{side}"]
        assert lung[tuple(apex.astype(int))]
        assert apex[0] == np.flatnonzero(lung.any(axis=(1, 2)))[0]  # the top-most lung slice
        assert lung[tuple(lm[f"costophrenic_angle_{side}"].astype(int))]
        assert lm[f"costophrenic_angle_{side}"][0] > lm[f"lung_apex_{side}"][0] + 20
        dome = lm[f"diaphragm_dome_{side}"]
        above, below = dome - [3, 0, 0], dome + [3, 0, 0]
        assert not m["anatomy/abdomen"][tuple(np.rint(above).astype(int))]
        assert m["anatomy/abdomen"][tuple(np.rint(below).astype(int))]
        assert _near(m["anatomy/airway"], lm[f"hilum_{side}"], 1)
    assert m["anatomy/heart"][tuple(lm["heart_border_left"].astype(int))]
    assert m["anatomy/heart"][tuple(lm["heart_border_right"].astype(int))]
    assert m["anatomy/heart"][tuple(lm["cardiac_apex"].astype(int))]
    assert m["anatomy/aorta"][tuple(np.rint(lm["aortic_arch"]).astype(int))]
    # patient left is +w (columns run right -> left); the apex of the heart points left
    for a, b in [
        ("lung_apex_left", "lung_apex_right"),
        ("heart_border_left", "heart_border_right"),
    ]:
        assert lm[a][2] > lm[b][2]
    assert lm["cardiac_apex"][2] > lm["carina"][2]
    assert lm["aortic_arch"][0] < lm["carina"][0]  # the arch is above the carina
    # heart borders follow the enlarged heart
    big = with_finding("cardiomegaly")
    width = lambda ct: ct.landmarks["heart_border_left"][2] - ct.landmarks["heart_border_right"][2]  # noqa: E731
    assert width(big) > width(normal)


@pytest.mark.parametrize("size", [(256, 256), (100, 180), None])
def test_radiograph_landmarks_are_projected_3d_landmarks(normal, size):
    rg = make_radiograph(normal, size=size)
    rows, cols = size or (normal.volume.shape[0], normal.volume.shape[2])
    assert isinstance(rg, Radiograph) and rg.pixels.shape == (rows, cols)
    D, _, W = normal.volume.shape
    for k in LANDMARKS:
        d, _, w = normal.landmarks[k]
        expected = ((d + 0.5) * rows / D - 0.5, (w + 0.5) * cols / W - 0.5)
        np.testing.assert_allclose(rg.landmarks[k], expected, atol=1e-9)
    sd, _, sw = normal.volume.spacing
    assert rg.spacing == pytest.approx((D * sd / rows, W * sw / cols))
    # the projected heart border is on the projected heart
    r, c = np.rint(rg.landmarks["heart_border_left"]).astype(int)
    assert rg.masks["anatomy/heart"][max(r - 1, 0) : r + 2, max(c - 2, 0) : c + 1].any()


def test_radiograph_is_a_monotonic_map_of_the_line_integral(normal):
    rg = make_radiograph(normal, size=None)
    hu = normal.volume.voxels.astype(np.float64)
    mu = np.clip(0.02 * (1 + hu / 1000), 0, None)
    integral = np.einsum("dhw->dw", mu) * normal.volume.spacing[1]
    order = np.argsort(integral.ravel())
    assert np.all(np.diff(rg.pixels.ravel()[order]) >= -1e-6)  # denser ray, brighter pixel
    assert rg.pixels.min() >= 0 and rg.pixels.max() <= 1 and rg.pixels.dtype == np.float32
    assert rg.labels == normal.labels and rg.seed == normal.seed


def test_radiograph_contrast_bone_heart_brighter_than_lung(normal):
    rg = make_radiograph(normal)
    m = rg.masks
    lung_field = m["anatomy/lungs"] & ~m["anatomy/heart"] & ~m["anatomy/spine"]
    lung = np.median(rg.pixels[lung_field])
    assert np.median(rg.pixels[m["anatomy/spine"]]) > lung + 0.15
    assert np.median(rg.pixels[m["anatomy/heart"] & ~m["anatomy/lungs"]]) > lung + 0.1
    outside = ~rg.masks["anatomy/body"]
    assert np.median(rg.pixels[outside]) < 0.02


def test_generation_time():
    # A regression guard, not a benchmark: ~0.7 s here, with headroom for a loaded CI machine.
    best = min(_timed(lambda: make_chest_ct(5)) for _ in range(2))
    assert best < 6.0, f"64x128x128 phantom took {best:.2f} s"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
