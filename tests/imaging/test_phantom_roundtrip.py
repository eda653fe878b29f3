"""Phantoms written by ``imaging.writers`` read back through this layer unchanged.

CT: ``read_series`` on the shuffled slice files gives the phantom's HU within DICOM's integer
rounding (slope / 2), its spacing, slice order and affine. Radiographs: ``read_image`` on CR and DX
files, MONOCHROME1 and MONOCHROME2, gives the same "higher is denser" pixels as pydicom.
"""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest

from imaging.dicom import read_image
from imaging.phantoms import make_chest_ct, make_radiograph
from imaging.series import read_series
from imaging.writers import write_ct_series, write_radiograph


def in_index_order_of(src, affine: np.ndarray, shape) -> np.ndarray:
    """``src``'s voxels re-indexed so that voxel ``i`` lies where ``affine`` puts index ``i``.

    ``read_series`` orders slices along the slice normal (ascending, as ITK does) whatever order
    the phantom used; both volumes are axis-aligned, so the map between their indices is a signed
    axis permutation plus an offset, computed from the two affines.
    """
    m = np.linalg.inv(src.affine) @ affine
    perm = np.argmax(np.abs(m[:3, :3]), axis=0)  # src axis feeding each output axis
    out = np.transpose(src.voxels, perm)
    for axis in range(3):
        sign = np.sign(m[perm[axis], axis])
        assert np.isclose(abs(m[perm[axis], axis]), 1.0)
        if sign < 0:
            out = np.flip(out, axis=axis)
    assert out.shape == tuple(shape)
    return out


@pytest.fixture(scope="module")
def phantom():
    return make_chest_ct(seed=11, shape=(24, 64, 64), spacing=(5.0, 4.0, 4.0), findings=("nodule",))


@pytest.mark.parametrize("rescale", [(1.0, -1024.0), (0.5, -1024.0)])
def test_ct_series_round_trip_shuffled(tmp_path, phantom, rescale):
    paths = write_ct_series(phantom.volume, tmp_path, rescale=rescale)
    random.Random(3).shuffle(paths)
    vol = read_series(paths)
    src = phantom.volume
    assert vol.shape == src.shape
    assert vol.spacing == pytest.approx(src.spacing)
    # same world position of voxel (0,0,0) up to the slice-order flip, same step lengths
    corners = {tuple(np.round(src.affine @ [d, 0, 0, 1], 4)) for d in (0, src.shape[0] - 1)}
    assert tuple(np.round(vol.affine @ [0, 0, 0, 1], 4)) in corners
    expected = in_index_order_of(src, vol.affine, vol.shape)
    # HU within half a stored step wherever the HU fit the stored integer type
    slope = rescale[0]
    inside = (expected > -1024) & (expected < 3000)
    assert inside.mean() > 0.99
    err = np.abs(vol.voxels - expected)[inside]
    assert err.max() <= slope / 2 + 1e-3


def test_ct_series_directory_read(tmp_path, phantom):
    write_ct_series(phantom.volume, tmp_path / "series")
    vol = read_series(tmp_path / "series")
    assert vol.modality == "CT" and vol.meta["ordered_by"] == "position"
    expected = in_index_order_of(phantom.volume, vol.affine, vol.shape)
    np.testing.assert_allclose(vol.voxels, expected.clip(-1024), atol=0.5 + 1e-3)


@pytest.mark.parametrize("modality", ["CR", "DX"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_radiograph_round_trip(tmp_path, phantom, modality, photometric):
    film = make_radiograph(phantom, size=(96, 80))
    bits = 12
    path = write_radiograph(
        film.pixels,
        tmp_path / "cxr.dcm",
        modality=modality,
        photometric=photometric,
        spacing=(0.5, 0.6),
        bits=bits,
    )
    image = read_image(path)
    ds = pydicom.dcmread(path)
    assert image.modality == modality and image.photometric == photometric
    assert image.spacing == (0.5, 0.6)
    top = 2**bits - 1
    # reference: pydicom's stored values, MONOCHROME1 inverted by hand
    stored = ds.pixel_array.astype(np.float64)
    expected = top - stored if photometric == "MONOCHROME1" else stored
    np.testing.assert_array_equal(image.pixels, expected)
    # and equal to the phantom film within the 12-bit quantisation
    np.testing.assert_allclose(image.pixels / top, film.pixels, atol=0.5 / top + 1e-6)
