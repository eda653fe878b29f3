"""Shared helpers: raster scaling by dtype, VOI window scaling, seeded splits and draws."""

import numpy as np
import pytest

from imaging.datasets.base import (
    DatasetFormatError,
    hash_split,
    read_raster,
    scale_to_unit,
    stable_uniform,
)
from imaging.datasets.chexpert import encode_labels
from tests.imaging.datasets.fixtures import write_png


def test_read_raster_divides_by_dtype_max(tmp_path):
    px = np.zeros((4, 4))
    px[0, 0] = 65535
    px[0, 1] = 257
    write_png(tmp_path / "a.png", px, bits=16)
    im = read_raster(tmp_path / "a.png")
    assert im.dtype == np.float32 and im[0, 0] == 1.0 and im[0, 1] == pytest.approx(257 / 65535)
    px8 = np.full((4, 4), 51)
    write_png(tmp_path / "b.png", px8)
    assert read_raster(tmp_path / "b.png")[0, 0] == pytest.approx(0.2)


def test_scale_to_unit():
    x = np.array([0.0, 50.0, 100.0, 300.0])
    np.testing.assert_allclose(scale_to_unit(x, center=100.0, width=200.0), [0, 0.25, 0.5, 1])
    np.testing.assert_allclose(scale_to_unit(x), [0, 1 / 6, 1 / 3, 1])
    np.testing.assert_array_equal(scale_to_unit(np.full(3, 7.0)), np.zeros(3))


def test_hash_split_and_stable_uniform():
    keys = [f"k{i}" for i in range(400)]
    splits = [hash_split(k, 0) for k in keys]
    assert splits == [hash_split(k, 0) for k in keys]
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    assert 230 < counts["train"] < 330 and 15 < counts["val"] < 70  # 70/10/20 of 400
    assert stable_uniform(0.55, 0.85, 1, "a") == stable_uniform(0.55, 0.85, 1, "a")


def test_bad_label_cell():
    with pytest.raises(DatasetFormatError, match="'2.0'"):
        encode_labels(["2.0"], ["Edema"], uncertain="ones", blank="zero", seed=0, key="x")
