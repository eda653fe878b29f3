"""The bench's baseline (``bench/genesis_numpy_loop.py``) is the released Models Genesis loop: for
fixed seeds it gives the same pairs, bit for bit, as an independent restatement of the release
(``tests/reference/genesis_release.py``), and makes the release's random calls per transform."""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.reference.genesis_release import BLOCKS, release_pairs

BASELINE = Path(__file__).resolve().parents[2] / "bench" / "genesis_numpy_loop.py"
SHAPE = (6, 1, 64, 64, 32)  # the paper's cubes; 6 is the release's batch size


@pytest.fixture(scope="module")
def loop():
    spec = importlib.util.spec_from_file_location("genesis_numpy_loop", BASELINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.transform_batch_loop


def _cubes(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(SHAPE, dtype=np.float32)


# Seeds whose batches, together, take every branch (checked below): flips of every axis,
# shuffling, both Bézier maps, in- and out-painting.
SEEDS = (0, 1, 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_same_pairs_as_the_release_for_fixed_seeds(loop, seed):
    cubes = _cubes(seed)
    x, y, _ = release_pairs(cubes, seed)
    got_x, got_y = loop(cubes, seed=seed)
    assert got_x.dtype == got_y.dtype == np.float32
    assert got_x.shape == got_y.shape == SHAPE
    np.testing.assert_array_equal(got_y, y)
    np.testing.assert_array_equal(got_x, x)
    assert not np.array_equal(got_x, got_y)  # the transforms did something


def test_the_seeds_cover_every_branch():
    cubes = _cubes(0)
    events = [e for seed in SEEDS for e in release_pairs(cubes, seed)[2]]
    assert {a for e in events for a in e["flips"]} == {0, 1, 2}
    assert {e["shuffled"] for e in events} == {True, False}
    assert {e["nonlinear"] for e in events} == {None, "increasing", "inverted"}
    assert {e["paint"] for e in events} == {None, "in", "out"}


def _expected_calls(event: dict) -> Counter:
    """The release's random calls for one cube, from what fired (``pytorch/utils.py``)."""
    flips, boxes = len(event["flips"]), event["boxes"]
    calls = Counter()
    # data_augmentation: one uniform per flip plus the failing one (a 4th after 3 flips too).
    calls["random.random"] += flips + 1
    calls["random.choice"] += flips
    calls["random.random"] += 1  # local_pixel_shuffling's rate test
    if event["shuffled"]:
        calls["random.randint"] += 6 * BLOCKS
        calls["np.random.shuffle"] += BLOCKS
    calls["random.random"] += 1  # nonlinear_transformation's rate test
    if event["nonlinear"]:
        calls["random.random"] += 4 + 1  # control points, then sort y or not
    calls["random.random"] += 1  # the paint rate
    if event["paint"] == "in":
        calls["random.random"] += 1 + boxes + (boxes < 5)  # kind; then a test before each box
        calls["random.randint"] += 6 * boxes
        calls["np.random.rand"] += boxes
    elif event["paint"] == "out":
        calls["random.random"] += 1 + (boxes - 1) + (boxes < 5)  # the first box is untested
        calls["random.randint"] += 6 * boxes
        calls["np.random.rand"] += 1
    return calls


def test_the_random_calls_are_the_releases(loop, monkeypatch):
    seed = 1
    cubes = _cubes(seed)
    _, _, log = release_pairs(cubes, seed)
    want = sum((_expected_calls(e) for e in log), Counter())

    seen = Counter()

    def counted(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            seen[label] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in ("random", "randint", "choice", "shuffle", "uniform", "randrange", "sample"):
        counted(random, name, f"random.{name}")
    for name in ("shuffle", "rand", "randint", "random", "permutation", "uniform"):
        counted(np.random, name, f"np.random.{name}")
    loop(cubes, seed=seed)
    assert +seen == +want
    assert want["np.random.shuffle"] > 0 and want["np.random.rand"] > 0  # the check can fail
