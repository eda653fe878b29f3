"""The input guard (issue #17): phantom frontal films, pydicom-data's RG1/RG3 and a phantom CT
give no warning; lateral and inverted films, MR/US images sent as radiographs, raw-valued or
badly spaced CT and tiny images do (serve.guard)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging.dicom import read_image
from imaging.distribution import phantom_statistics, unit_features
from imaging.image import Image, Volume
from imaging.phantoms import make_chest_ct, make_radiograph
from imaging.preprocess import ark_cxr, genesis_ct, radiograph_to_unit
from imaging.writers import radiograph_bytes
from serve.errors import RequestError
from serve.guard import radiograph_warnings, refuse, volume_warnings
from serve.limits import ConfigError
from serve.registry import MODALITIES
from serve.settings import Settings

from .films import lateral_film

RADIOGRAPH = MODALITIES["radiograph"]


def film_image(pixels: np.ndarray, view: str | None = None, modality="CR") -> Image:
    """``pixels`` written as a DICOM file with ``view`` as ViewPosition (None: without one) and
    decoded again."""
    ds = pydicom.dcmread(io.BytesIO(radiograph_bytes(pixels, modality=modality)))
    if view is None:
        del ds.ViewPosition
    else:
        ds.ViewPosition = view
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return read_image(buf.getvalue())


@dataclass
class _Manifest:
    preprocessing: object
    input_statistics: dict | None = None
    inference: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def cxr():
    return _Manifest(ark_cxr(224), phantom_statistics())


@pytest.fixture(scope="module")
def phantoms():
    return [make_chest_ct(seed, shape=(40, 96, 96)) for seed in (1, 2, 3)]


def _codes(img: Image, manifest) -> list[str]:
    unit = radiograph_to_unit(img)
    warnings = radiograph_warnings(
        img, unit_features(unit), unit.shape, manifest, "x.dcm", RADIOGRAPH
    )
    assert all(set(w) == {"code", "detail", "file"} for w in warnings)
    return [w["code"] for w in warnings]


def test_frontal_phantoms_and_real_chest_crs_give_no_warning(cxr, phantoms):
    for ct in phantoms:
        film = make_radiograph(ct, size=(320, 280)).pixels
        assert _codes(film_image(film), cxr) == []  # no ViewPosition: the image check
        assert _codes(film_image(film, "PA"), cxr) == []
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        img = read_image(get_testdata_file(name))
        assert img.meta["view_position"] in ("PA", "AP")
        assert _codes(img, cxr) == [], name


def test_lateral_films(cxr, phantoms):
    for ct in phantoms:
        lat = lateral_film(ct, (320, 280))
        assert "lateral_view" in _codes(film_image(lat), cxr)  # by the image
        assert _codes(film_image(lat, "LL"), cxr)[0] == "lateral_view"  # by the tag
    # a frontal film tagged lateral is believed
    frontal = make_radiograph(phantoms[0], size=(320, 280)).pixels
    assert _codes(film_image(frontal, "LATERAL"), cxr) == ["lateral_view"]


def test_inverted_film_is_out_of_distribution(cxr, phantoms):
    for ct in phantoms:
        film = make_radiograph(ct, size=(320, 280)).pixels
        assert "intensity_out_of_distribution" in _codes(film_image(1.0 - film, "PA"), cxr)
    # without recorded statistics the check is skipped
    film = make_radiograph(phantoms[0], size=(320, 280)).pixels
    assert _codes(film_image(1.0 - film, "PA"), _Manifest(ark_cxr(224))) == []


@pytest.mark.parametrize("name", ["MR_small.dcm", "US1_UNCR.dcm"])
def test_other_modalities_sent_as_radiographs(cxr, name):
    codes = _codes(read_image(get_testdata_file(name)), cxr)
    assert codes[0] == "unexpected_modality"
    assert len(codes) >= 2, codes  # and the image itself looks wrong: view, intensities, size


def test_small_input(cxr, phantoms):
    film = make_radiograph(phantoms[0], size=(100, 90)).pixels
    assert _codes(film_image(film, "PA"), cxr) == ["small_input"]


def test_details_never_echo_element_values(cxr, phantoms):
    img = film_image(lateral_film(phantoms[0]), "LL")
    img.modality = "ZANZIBAR"
    unit = radiograph_to_unit(img)
    text = repr(radiograph_warnings(img, unit_features(unit), unit.shape, cxr, "f", RADIOGRAPH))
    assert "ZANZIBAR" not in text
    ds = pydicom.dcmread(io.BytesIO(radiograph_bytes(np.zeros((8, 8), "f4"))))
    ds.ViewPosition = "Zanzibar^Q"  # not a defined term: dropped by the reader
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert read_image(buf.getvalue()).meta["view_position"] == ""


# --- CT --------------------------------------------------------------------------------------

SEG = _Manifest(genesis_ct(), None, {"roi_size": [32, 32, 16]})


def _ct_codes(volume: Volume) -> list[str]:
    return [w["code"] for w in volume_warnings(volume, SEG)]


def test_ct_phantom_gives_no_warning(phantoms):
    vol = phantoms[0].volume
    assert _ct_codes(vol) == []
    vol = make_chest_ct(4, shape=(24, 48, 48)).volume
    assert _ct_codes(vol) == []


def test_ct_raw_values_and_spacing(phantoms):
    vol = phantoms[0].volume
    raw = Volume(np.clip(vol.voxels + 1024, 0, 4095), vol.spacing)
    assert _ct_codes(raw) == ["implausible_hu"]
    assert _ct_codes(Volume(vol.voxels, vol.spacing, meta={"pixel_spacing_known": False})) == [
        "missing_spacing"
    ]
    assert _ct_codes(Volume(vol.voxels, None)) == ["missing_spacing"]
    assert _ct_codes(Volume(vol.voxels, (10.0, 0.5, 0.5))) == ["anisotropic_spacing"]
    small = Volume(vol.voxels[:8, :20, :20], vol.spacing)
    assert _ct_codes(small) == ["small_input"]


# --- refusal and settings ------------------------------------------------------------------


def test_refuse_and_settings():
    warnings = [{"code": "lateral_view", "detail": "d", "file": "a.dcm"}]
    refuse(warnings, frozenset({"small_input"}))
    with pytest.raises(RequestError) as err:
        refuse(warnings, frozenset({"lateral_view"}))
    assert err.value.status == 422 and err.value.code == "lateral_view"
    s = Settings.from_env({"ANATOMIX_REFUSE_WARNINGS": "lateral_view, Small_Input"})
    assert s.refuse_warnings == {"lateral_view", "small_input"}
    assert Settings.from_env({}).refuse_warnings == frozenset()
    with pytest.raises(ConfigError, match="no_such_code"):
        Settings.from_env({"ANATOMIX_REFUSE_WARNINGS": "lateral_view,no_such_code"})
