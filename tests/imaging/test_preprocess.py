"""imaging.preprocess against independent references: torch resize, training and model code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydicom.data import get_testdata_file

from imaging.datasets.base import read_dicom_radiograph
from imaging.dicom import read_image
from imaging.image import Volume
from imaging.preprocess import (
    CropGeometry,
    Preprocessing,
    ark_cxr,
    center_crop_offsets,
    genesis_ct,
    peac_cxr,
    prepare_radiograph,
    prepare_volume,
    radiograph_to_unit,
    resize_bilinear,
    shorter_side_size,
)
from models.peac import preprocess as peac_preprocess
from train.ark.data import eval_resize
from train.data.cubes import normalize_hu
from train.views2d import normalize, resize_center_crop

from ..fresh import run_fresh

ATOL = 1e-5


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _torch_resize(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(x)[None]
    out = F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
    return out[0].numpy()


def _ark_reference(pixels: np.ndarray, size: int) -> np.ndarray:
    r = eval_resize(size)
    x = torch.from_numpy(pixels)[None, None]
    return normalize(resize_center_crop(x, (r, r), size))[0].numpy()


def _check_peac(pixels: np.ndarray, size: int) -> None:
    got, geom = prepare_radiograph(pixels, peac_cxr(size))
    ref, transform = peac_preprocess(pixels, size)
    np.testing.assert_allclose(got, ref[0].numpy(), atol=ATOL, rtol=0)
    assert geom.original_hw == transform.original_hw
    assert geom.resized_hw == transform.resized_hw
    assert geom.offset == transform.offset
    assert geom.size == transform.size
    h, w = pixels.shape
    points = np.array([[0.0, 0.0], [h - 1.0, w - 1.0], [h / 3, w / 2], [-2.5, w + 4.0]])
    np.testing.assert_allclose(geom.to_model(points), transform.to_model(points), atol=1e-12)
    model_pts = np.array([[0.0, 0.0], [size - 1.0, size - 1.0], [size / 2, size / 7]])
    np.testing.assert_allclose(
        geom.to_original(model_pts), transform.to_original(model_pts), atol=1e-12
    )
    np.testing.assert_allclose(geom.to_original(geom.to_model(points)), points, atol=1e-9)


# ------------------------------------------------------------------------------------ resize


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [
        ((37, 53), (13, 11)),  # down, odd
        ((13, 11), (37, 53)),  # up, odd
        ((64, 48), (64, 48)),  # identity
        ((300, 250), (256, 256)),  # mixed: down rows, up cols
        ((255, 257), (224, 224)),  # slight downscale
        ((224, 224), (255, 257)),  # slight upscale
        ((9, 5), (1, 1)),
        ((1, 4), (3, 2)),
        ((1000, 733), (97, 101)),  # strong downscale
    ],
)
def test_resize_bilinear_matches_torch_antialias(channels, in_hw, out_hw):
    x = _rng(channels).random((channels, *in_hw), dtype=np.float32)
    np.testing.assert_allclose(resize_bilinear(x, out_hw), _torch_resize(x, out_hw), atol=ATOL)


def test_resize_bilinear_2d_input_and_large_upscale():
    x = _rng(1).random((300, 200), dtype=np.float32)
    got = resize_bilinear(x, (1201, 799))
    assert got.shape == (1201, 799) and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch_resize(x[None], (1201, 799))[0], atol=ATOL)


# ------------------------------------------------------------------------------ radiographs


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("in_hw", [(300, 250), (180, 260), (256, 256)])
def test_ark_matches_views2d(size, in_hw):
    pixels = _rng(size).random(in_hw, dtype=np.float32)
    got, geom = prepare_radiograph(pixels, ark_cxr(size))
    assert got.shape == (3, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got, _ark_reference(pixels, size), atol=ATOL, rtol=0)
    r = eval_resize(size)
    assert geom.resized_hw == (r, r) and geom.size == size
    assert geom.offset == (int(round((r - size) / 2.0)),) * 2


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("in_hw", [(300, 201), (181, 260), (97, 97)])
def test_peac_matches_models_peac(size, in_hw):
    _check_peac(_rng(size + in_hw[0]).random(in_hw, dtype=np.float32), size)


def test_shorter_side_size_and_crop_offsets():
    assert shorter_side_size(300, 200, 224) == (336, 224)
    assert shorter_side_size(200, 300, 224) == (224, 336)
    assert shorter_side_size(100, 100, 64) == (64, 64)
    assert shorter_side_size(3, 5, 2) == (2, 3)  # 5 · 2/3 = 3.33 → 3
    assert shorter_side_size(2, 5, 4) == (4, 10)
    # torchvision CenterCrop rounds half to even (Python's round); floor does not.
    assert center_crop_offsets((5, 7), 2, "round") == (2, 2)
    assert center_crop_offsets((5, 7), 2, "floor") == (1, 2)
    assert center_crop_offsets((7, 9), 2, "round") == (2, 4)
    with pytest.raises(ValueError):
        center_crop_offsets((5, 7), 6)


def test_crop_geometry_identity_without_resize():
    pp = Preprocessing(kind="radiograph", layout="NCHW", crop=4, crop_offset="floor")
    pixels = np.arange(6 * 9, dtype=np.float32).reshape(6, 9) / 54
    got, geom = prepare_radiograph(pixels, pp)
    assert geom == CropGeometry((6, 9), (6, 9), (1, 2), 4)
    np.testing.assert_array_equal(got[0], pixels[1:5, 2:6])
    np.testing.assert_allclose(geom.to_model([[1.0, 2.0]]), [[0.0, 0.0]])


def test_real_dicom_radiographs_match_torch_routes():
    for name in ("RG1_UNCR.dcm", "CT_small.dcm"):
        path = get_testdata_file(name)
        assert path is not None, f"pydicom test file {name} not found"
        unit = radiograph_to_unit(read_image(path))
        np.testing.assert_array_equal(unit, read_dicom_radiograph(path))
        assert unit.ndim == 2 and 0.0 <= unit.min() and unit.max() <= 1.0
        got, _ = prepare_radiograph(unit, ark_cxr(224))
        np.testing.assert_allclose(got, _ark_reference(unit, 224), atol=ATOL, rtol=0)
        _check_peac(unit, 224)


# ---------------------------------------------------------------------------------------- CT


def _volume(seed: int = 0) -> Volume:
    voxels = _rng(seed).uniform(-1500, 2000, size=(11, 20, 17)).astype(np.float32)
    return Volume(voxels=voxels, spacing=(2.5, 0.7, 0.8))


def test_genesis_volume_matches_cubes():
    vol = _volume()
    got = prepare_volume(vol, genesis_ct())
    ref = normalize_hu(vol.voxels.transpose(2, 1, 0))[None]
    assert got.shape == (1, 17, 20, 11) and got.dtype == np.float32
    assert got.flags.c_contiguous
    np.testing.assert_allclose(got, ref, atol=1e-7, rtol=0)


def test_genesis_volume_with_spacing_matches_resample():
    from imaging.resample import resample_to_spacing

    vol = _volume(1)
    spacing = (2.0, 1.0, 1.3)
    pp = Preprocessing(**{**genesis_ct().to_dict(), "spacing": list(spacing)})
    got = prepare_volume(vol, pp)
    resampled = resample_to_spacing(vol, spacing)
    ref = normalize_hu(resampled.voxels.transpose(2, 1, 0))[None]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-7, rtol=0)


def test_real_ct_slice_as_volume():
    image = read_image(get_testdata_file("CT_small.dcm"))
    vol = Volume(voxels=image.pixels[None], spacing=(1.0, *image.spacing))
    got = prepare_volume(vol, genesis_ct())
    ref = normalize_hu(image.pixels[None].transpose(2, 1, 0))[None]
    np.testing.assert_allclose(got, ref, atol=1e-7, rtol=0)


def test_kind_mismatch_is_refused():
    with pytest.raises(ValueError, match="radiograph"):
        prepare_radiograph(np.zeros((8, 8), np.float32), genesis_ct())
    with pytest.raises(ValueError, match="ct"):
        prepare_volume(_volume(), ark_cxr())


# ------------------------------------------------------------------------------ description


@pytest.mark.parametrize("preset", [genesis_ct(), ark_cxr(), ark_cxr(64), peac_cxr(448)])
def test_json_round_trip(preset):
    d = json.loads(json.dumps(preset.to_dict()))
    assert d == preset.to_dict()
    assert all(not isinstance(v, tuple) for v in preset.to_dict().values())
    assert Preprocessing.from_dict(d) == preset


def test_presets_hold_published_values():
    assert ark_cxr().resize == 256 and ark_cxr().crop == 224
    assert ark_cxr(64).resize == 73
    assert peac_cxr().mean == (0.5056,) and peac_cxr().std == (0.252,)
    assert genesis_ct().hu_clip == (-1000.0, 1000.0)


def _with(**changes):
    return {**ark_cxr().to_dict(), **changes}


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({k: v for k, v in ark_cxr().to_dict().items() if k != "crop_offset"}, "crop_offset"),
        (_with(resize="256"), "resize"),
        (_with(resize=256.0), "resize"),
        (_with(channels=True), "channels"),
        (_with(mean="0.5"), "mean"),
        (_with(std=[0.2, "x", 0.2]), "std"),
        (_with(extra=1), "extra"),
        (_with(resize_mode="fit"), "resize_mode"),
        (_with(crop_offset="ceil"), "crop_offset"),
        (_with(kind="mri"), "kind"),
        (_with(layout="NCXYZ"), "layout"),
        (_with(mean=[0.5, 0.5]), "mean"),
        (_with(std=[0.5, 0.5]), "std"),
        (_with(std=[0.0]), "std"),
        (_with(crop=0), "crop"),
        (_with(resize=-3), "resize"),
        (_with(channels=2), "channels"),
        (_with(hu_clip=[-1000, 1000]), "hu_clip"),
        (_with(crop=300), "crop"),
        ({**genesis_ct().to_dict(), "spacing": [1.0, 1.0]}, "spacing"),
        ({**genesis_ct().to_dict(), "spacing": [1.0, 0.0, 1.0]}, "spacing"),
        ({**genesis_ct().to_dict(), "hu_clip": [100, -100]}, "hu_clip"),
        ({**genesis_ct().to_dict(), "crop": 64}, "crop"),
        ({**genesis_ct().to_dict(), "channels": 3, "mean": [0.0], "std": [1.0]}, "channels"),
    ],
)
def test_from_dict_rejects_bad_input_naming_the_field(d, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        Preprocessing.from_dict(d)


def test_constructor_validates_and_normalises():
    pp = Preprocessing(kind="ct", layout="NCXYZ", hu_clip=[-500, 500], mean=[0], std=[1])
    assert pp.hu_clip == (-500.0, 500.0) and pp.mean == (0.0,)
    with pytest.raises(ValueError, match="mean"):
        Preprocessing(kind="radiograph", layout="NCHW", crop=8, channels=3, mean=(0.1, 0.2))


def test_module_does_not_import_torch():
    code = "import sys, imaging.preprocess; sys.exit('torch' in sys.modules)"
    done = run_fresh(code)
    assert done.returncode == 0, done.stderr
