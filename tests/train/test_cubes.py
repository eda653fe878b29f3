"""Cube extraction: the release's density rule restated, borders, HU scaling, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.image import Volume
from train.data.cubes import (
    DENSE_THRESHOLD,
    LOOKAHEAD,
    CubeSpec,
    build_cube_cache,
    dense_score,
    extract_cubes,
    normalize_hu,
)


def dense_score_loop(window, depth):
    """The released per-voxel loop (infinite_generator_3D.py), restated: first hit k in 0..2."""
    score = np.zeros(window.shape[:2] + (depth,))
    for i in range(window.shape[0]):
        for j in range(window.shape[1]):
            for d in range(depth):
                k_hit = LOOKAHEAD - 1
                for k in range(LOOKAHEAD):
                    if window[i, j, d + k] >= DENSE_THRESHOLD:
                        k_hit = k
                        break
                score[i, j, d] = 1.0 - k_hit / (LOOKAHEAD - 1)
    return score


def test_dense_score_equals_release_loop():
    rng = np.random.default_rng(0)
    window = rng.uniform(0, 1, size=(6, 5, 8 + LOOKAHEAD)).astype(np.float32)
    np.testing.assert_allclose(dense_score(window, 8), dense_score_loop(window, 8))


def test_normalize_hu_by_hand():
    np.testing.assert_allclose(
        normalize_hu(np.array([-2000, -1000, -150, 0, 1000, 3000.0])),
        [0, 0, 0.425, 0.5, 1, 1],
    )


def _volume(hu: np.ndarray) -> Volume:
    return Volume(voxels=hu.astype(np.float32), spacing=(1.0, 1.0, 1.0))


def test_cubes_respect_borders_and_density():
    # (D, H, W) = (z, y, x); air everywhere except a dense slab in x < 20
    hu = np.full((40, 48, 56), -1000.0)
    hu[:, :, :20] = 200.0
    spec = CubeSpec(size=(16, 16, 8), per_volume=20, border_xy=4, border_z=3, dense_max=0.15)
    cubes = extract_cubes(_volume(hu), spec, np.random.default_rng(0))
    assert cubes.shape[1:] == (16, 16, 8) and 0 < len(cubes) <= 20
    for cube in cubes:  # each accepted cube has at most 15 % dense voxels (score <= count)
        assert (cube >= DENSE_THRESHOLD).mean() <= 0.15 + 1e-6


def test_too_small_volume_gives_no_cubes():
    spec = CubeSpec(size=(64, 64, 32))
    assert len(extract_cubes(_volume(np.zeros((40, 80, 80))), spec, np.random.default_rng(0))) == 0


def test_cube_positions_match_source():
    """A cube is a verbatim (x, y, z) window of the normalised volume."""
    rng = np.random.default_rng(1)
    hu = rng.uniform(-1000, -900, size=(20, 30, 30)).astype(np.float32)
    spec = CubeSpec(size=(8, 8, 8), per_volume=3, border_xy=2, border_z=2, dense_max=1.0)
    cubes = extract_cubes(_volume(hu), spec, np.random.default_rng(2))
    xyz = normalize_hu(hu.transpose(2, 1, 0))
    for cube in cubes:
        hits = [
            (x, y, z)
            for x in range(2, 30 - 8)
            for y in range(2, 30 - 8)
            for z in range(2, 20 - 8)
            if np.array_equal(xyz[x : x + 8, y : y + 8, z : z + 8], cube)
        ]
        assert len(hits) == 1


def test_cache_is_built_once_and_memmapped(tmp_path):
    calls = []

    def load():
        calls.append(1)
        return _volume(np.full((20, 30, 30), -1000.0))

    spec = CubeSpec(size=(8, 8, 8), per_volume=2, border_xy=2, border_z=2)
    a = build_cube_cache(tmp_path / "c.npy", [load, load], spec, seed=0)
    b = build_cube_cache(tmp_path / "c.npy", [load, load], spec, seed=0)
    assert len(calls) == 2 and a.shape == (4, 1, 8, 8, 8)
    assert isinstance(b, np.memmap) and np.array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npy"]  # no temporary left behind
    with pytest.raises(ValueError, match="no cube"):
        build_cube_cache(tmp_path / "d.npy", [], spec, seed=0)
