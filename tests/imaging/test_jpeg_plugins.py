"""The default install decodes JPEG Lossless and 12-bit JPEG without the GPL plugin (issue #19).

imaging/jpeg_plugin.py (imagecodecs, BSD-3) takes JPEG Lossless and 12-bit JPEG Extended; Pillow
keeps 8-bit JPEG. The references are the same files decoded by the GPL plugin,
pylibjpeg-libjpeg 2.5.0, recorded on 2026-12-06 (an independent decoder; it is no longer
installed by default, so its output is stored here rather than recomputed).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tomllib
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder

from imaging.dicom import read_image  # registers imaging/jpeg_plugin.py

ROOT = Path(__file__).resolve().parents[2]

#: lossless files: (shape, SHA-256 of the samples) as libjpeg decodes them — equal bit for bit
LOSSLESS = {
    "JPEG-LL.dcm": (
        (1024, 256),
        "a6e9d32143339d3f5748b5520aa4e6c6ffb3550b6f71fdf17bdb2ebb44bc2611",
    ),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": (
        (768, 1024),
        "36e27e4f1e87a7d50407463323ddc3736736ecff35eb4e4a4c1b74646938835d",
    ),
    "SC_rgb_jpeg_gdcm.dcm": (
        (100, 100, 3),
        "169e619557b12114a7f0be8602026e9abb3d5045804311736ec14cecb026aca9",
    ),
}
#: JPGExtended.dcm (12-bit, lossy) as libjpeg decodes it: the sum of its samples and every 128th
#: row's every 32nd sample. Lossy decoders differ in their inverse DCT by a grey level here and
#: there, so the comparison allows one.
EXTENDED_SUM = 3770427
EXTENDED_GRID = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 0, 20, 44, 1, 1],
    [1, 19, 23, 69, 68, 49, 40, 23],
    [1, 17, 22, 41, 56, 51, 62, 15],
    [1, 1, 14, 20, 14, 19, 23, 1],
    [1, 1, 2, 31, 1, 36, 1, 1],
    [1, 1, 1, 34, 1, 29, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]


def test_no_gpl_plugin_in_the_default_install():
    """pyproject's default dependencies and the serving requirements name permissive plugins
    only; the GPL one is an extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    default = " ".join(project["dependencies"])
    serving = (ROOT / "serve" / "requirements.txt").read_text()
    for deps in (default, serving):
        assert "pylibjpeg-libjpeg" not in deps and "imagecodecs" in deps
        assert "gdcm" not in deps  # aborts the process on malformed streams (test_fuzz.py)
    assert project["optional-dependencies"]["gpl"] == ["pylibjpeg-libjpeg>=2.1"]


@pytest.mark.parametrize("syntax", [uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGExtended12Bit])
def test_a_permissive_plugin_is_available(syntax):
    assert "imagecodecs" in get_decoder(syntax).available_plugins


@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_jpeg_lossless_decodes_like_libjpeg(name):
    shape, sha = LOSSLESS[name]
    got = pydicom.pixels.pixel_array(get_testdata_file(name), decoding_plugin="imagecodecs")
    assert got.shape == shape
    assert hashlib.sha256(np.ascontiguousarray(got).tobytes()).hexdigest() == sha


def test_imagecodecs_decodes_12_bit_jpeg_like_libjpeg():
    path = get_testdata_file("JPGExtended.dcm")
    got = pydicom.pixels.pixel_array(path, decoding_plugin="imagecodecs")
    assert got.shape == (1024, 256) and got.dtype == np.uint16
    grid = got[::128, ::32].astype(np.int64)
    assert np.abs(grid - np.array(EXTENDED_GRID)).max() <= 1
    assert abs(int(got.astype(np.int64).sum()) - EXTENDED_SUM) <= 0.001 * EXTENDED_SUM
    # and through the project's reader, with whatever plugin pydicom picks first
    img = read_image(path)
    assert img.pixels.shape == (1024, 256)
    assert np.abs(img.pixels[::128, ::32] - np.array(EXTENDED_GRID)).max() <= 1


def test_the_stream_libjpeg_refused_is_the_same_image():
    """JPEG-lossy.dcm holds JPGExtended.dcm's image in a stream libjpeg refuses ("invalid JPEG
    data"); libjpeg-turbo reads it, and it decodes to the same samples."""
    lossy = read_image(get_testdata_file("JPEG-lossy.dcm")).pixels
    np.testing.assert_array_equal(lossy, read_image(get_testdata_file("JPGExtended.dcm")).pixels)
