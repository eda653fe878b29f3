"""Models Genesis transformations: properties of the reference and its random parameters.

Every check restates the published behaviour (Zhou et al., arXiv:2004.07882; official
``pytorch/utils.py: generate_pair``) independently, in NumPy loops or as invariants; nothing is
compared with stored outputs.
"""

import math
import time

import numpy as np
import pytest
import torch

from kernels._dispatch import numba_available
from kernels.genesis import (
    GenesisParams,
    GenesisTransformConfig,
    apply_genesis_reference,
    interp,
    sample_genesis_params,
    transform_batch,
    use_triton,
)
from tests.kernels.genesis_parity import OFF3, gen
from tests.kernels.genesis_parity import distinct_cubes as distinct_float_cubes
from tests.reference.genesis_transforms import box_slices, shuffle_restated, union_restated


def only(**rates) -> GenesisTransformConfig:
    """A config with every transform off except the given settings."""
    return GenesisTransformConfig(**{**OFF3, **rates})


OFF_CONFIG = only()


def distinct_cubes(shape) -> torch.Tensor:
    """Cubes whose voxel values name their flat position, in float64 (the restatements' dtype)."""
    return distinct_float_cubes(shape, torch.float64)


def bezier_restated(control: np.ndarray, inverted: bool, points: int):
    """The released curve: reversed Bernstein basis, xs sorted, ys sorted unless inverted."""
    pts = [(0.0, 0.0), (control[0], control[1]), (control[2], control[3]), (1.0, 1.0)]
    t = np.linspace(0.0, 1.0, points)
    basis = [math.comb(3, i) * t ** (3 - i) * (1 - t) ** i for i in range(4)]
    xv = sum(p[0] * b for p, b in zip(pts, basis, strict=True))
    yv = sum(p[1] * b for p, b in zip(pts, basis, strict=True))
    return (np.sort(xv), yv) if inverted else (np.sort(xv), np.sort(yv))


# ---------------------------------------------------------------------------------------------
# local pixel shuffling


@pytest.mark.parametrize("seed", range(4))
def test_single_block_permutes_only_inside(seed):
    cubes = distinct_cubes((1, 1, 64, 64, 32))
    config = only(local_rate=1.0, shuffle_blocks=1)
    params = sample_genesis_params(cubes.shape, config, gen(seed))
    x, y = apply_genesis_reference(cubes, params, config)
    inside = np.zeros((64, 64, 32), bool)
    inside[box_slices(params.shuffle_boxes[0, 0])] = True
    before, after = cubes[0, 0].numpy(), x[0, 0].numpy()
    np.testing.assert_array_equal(after[~inside], before[~inside])
    np.testing.assert_array_equal(np.sort(after[inside]), np.sort(before[inside]))
    torch.testing.assert_close(y, cubes, rtol=0, atol=0)


def test_many_blocks_match_sequential_loop_and_provenance():
    """Outside every block a voxel is unchanged; inside, it holds a value that the *last* block
    covering it read from the original cube, i.e. one from a position inside that block."""
    shape = (2, 1, 30, 24, 20)
    cubes = distinct_cubes(shape)
    config = only(local_rate=1.0, shuffle_blocks=400)
    params = sample_genesis_params(shape, config, gen(3))
    x, _ = apply_genesis_reference(cubes, params, config)
    for n in range(shape[0]):
        orig, out = cubes[n, 0].numpy(), x[n, 0].numpy()
        boxes, perm = params.shuffle_boxes[n].numpy(), params.shuffle_perm[n].numpy()
        np.testing.assert_array_equal(out, shuffle_restated(orig, boxes, perm))
        last = np.full(orig.shape, -1)
        for k, box in enumerate(boxes):
            last[box_slices(box)] = k
        np.testing.assert_array_equal(out[last < 0], orig[last < 0])
        # value -> flat position in the batch -> flat position in this cube
        source = np.rint(out * cubes.numel()).astype(np.int64) - n * orig.size
        src_pos = np.stack(np.unravel_index(source, orig.shape), axis=-1)
        for voxel in zip(*np.nonzero(last >= 0), strict=True):
            h, w, d, sh, sw, sd = boxes[last[voxel]]
            ph, pw, pd = src_pos[voxel]
            assert h <= ph < h + sh and w <= pw < w + sw and d <= pd < d + sd


def test_shuffle_permutations_are_permutations_and_vary():
    params = sample_genesis_params(
        (3, 1, 64, 64, 32), only(local_rate=1.0, shuffle_blocks=500), gen(0)
    )
    volume = params.shuffle_boxes[..., 3:].prod(-1)
    moved = 0
    for perm, v in zip(params.shuffle_perm.flatten(0, 1), volume.flatten(), strict=True):
        head = perm[: int(v)].long()
        assert torch.equal(torch.sort(head).values, torch.arange(int(v)))
        moved += int(not torch.equal(head, torch.arange(int(v))))
    assert moved > 0.5 * len(volume.flatten())


# ---------------------------------------------------------------------------------------------
# painting


@pytest.mark.parametrize("inpaint_rate", [1.0, 0.0])
def test_painting_touches_only_what_it_should(inpaint_rate):
    shape = (16, 1, 28, 30, 16)
    cubes = torch.rand(shape, generator=gen(9))
    config = only(paint_rate=1.0, inpaint_rate=inpaint_rate)
    params = sample_genesis_params(shape, config, gen(5))
    x, _ = apply_genesis_reference(cubes, params, config)
    for n in range(shape[0]):
        mask = union_restated(params.paint_boxes[n], params.paint_box_valid[n], shape[2:])
        orig, out, noise = cubes[n, 0].numpy(), x[n, 0].numpy(), params.noise[n, 0].double().numpy()
        keep, fill = (~mask, mask) if inpaint_rate == 1.0 else (mask, ~mask)
        np.testing.assert_array_equal(out[keep], orig[keep])
        np.testing.assert_array_equal(out[fill], noise[fill])
        if inpaint_rate == 0.0:
            assert mask.any() and (~mask).any()


# ---------------------------------------------------------------------------------------------
# non-linear intensity


def test_interp_matches_numpy():
    g = gen(4)
    xs = torch.sort(torch.rand((3, 50), dtype=torch.float64, generator=g), dim=-1).values
    ys = torch.rand((3, 50), dtype=torch.float64, generator=g)
    x = torch.rand((3, 200), dtype=torch.float64, generator=g) * 1.4 - 0.2  # beyond both ends
    x[:, :50] = xs  # exactly on the samples
    got = interp(x, xs, ys)
    for n in range(3):
        np.testing.assert_allclose(got[n], np.interp(x[n], xs[n], ys[n]), rtol=0, atol=1e-12)


def test_nonlinear_monotone_with_endpoints_and_matches_released_curve():
    shape = (24, 1, 16, 16, 16)
    ramp = torch.linspace(0, 1, 16**3, dtype=torch.float64)
    cubes = ramp.view(1, 1, 16, 16, 16).expand(shape).clone()
    config = only(nonlinear_rate=1.0, bezier_points=2000)
    params = sample_genesis_params(shape, config, gen(11))
    assert params.inverted.any() and (~params.inverted).any()
    x, _ = apply_genesis_reference(cubes, params, config)
    for n in range(shape[0]):
        out = x[n].flatten()
        steps = out[1:] - out[:-1]
        inverted = bool(params.inverted[n])
        assert (steps <= 1e-12).all() if inverted else (steps >= -1e-12).all()
        ends = (1.0, 0.0) if inverted else (0.0, 1.0)
        assert out[0].item() == pytest.approx(ends[0], abs=1e-12)
        assert out[-1].item() == pytest.approx(ends[1], abs=1e-12)
        xs, ys = bezier_restated(params.control[n].numpy(), inverted, 2000)
        np.testing.assert_allclose(out.numpy(), np.interp(ramp.numpy(), xs, ys), atol=1e-9)


# ---------------------------------------------------------------------------------------------
# flips


@pytest.mark.parametrize("mode", ["faithful", "corrected"])
def test_flips_hit_input_and_target_alike(mode):
    shape = (40, 1, 20, 18, 14)
    cubes = distinct_cubes(shape)
    config = only(flip_rate=1.0, flip_mode=mode)
    params = sample_genesis_params(shape, config, gen(2))
    x, y = apply_genesis_reference(cubes, params, config)
    assert torch.equal(x, y)
    for n in range(shape[0]):
        expected = cubes[n].numpy()
        for axis in params.flips[n].tolist():
            expected = np.flip(expected, axis=axis)
        np.testing.assert_array_equal(y[n].numpy(), expected)
    axes = set(params.flips.flatten().tolist())
    assert axes == ({0, 1, 2} if mode == "faithful" else {1, 2, 3})  # faithful never flips D


# ---------------------------------------------------------------------------------------------
# probabilities over many draws


def assert_binomial(hits: int, trials: int, p: float, what: str) -> None:
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(hits - trials * p) <= 4.5 * sigma + 1e-9, f"{what}: {hits}/{trials} vs p={p}"


def test_transform_rates_over_2000_draws():
    config = GenesisTransformConfig(shuffle_blocks=1)
    params = sample_genesis_params((2000, 1, 14, 14, 14), config, gen(2024))
    n = 2000
    assert_binomial(int(params.do_shuffle.sum()), n, 0.5, "local shuffle")
    assert_binomial(int(params.do_nonlinear.sum()), n, 0.9, "nonlinear")
    assert_binomial(int(params.inverted.sum()), n, 0.5, "inverted")
    assert_binomial(int(params.do_paint.sum()), n, 0.9, "paint")
    painted = params.do_paint
    assert_binomial(int(params.inpaint[painted].sum()), int(painted.sum()), 0.2, "inpaint")
    n_flips = (params.flips >= 0).sum(1)
    assert ((params.flips >= 0).long().diff(dim=1) <= 0).all()  # flips are a prefix
    for k, p in enumerate([0.6, 0.4 * 0.6, 0.4**2 * 0.6, 0.4**3]):
        assert_binomial(int((n_flips == k).sum()), n, p, f"{k} flips")
    axes = params.flips[params.flips >= 0]
    for axis in (1, 2, 3):
        assert_binomial(int((axes == axis).sum()), axes.numel(), 1 / 3, f"axis {axis}")


@pytest.mark.parametrize("inpaint", [True, False])
def test_paint_box_counts_over_2000_draws(inpaint):
    config = only(paint_rate=1.0, inpaint_rate=float(inpaint), shuffle_blocks=1)
    valid = sample_genesis_params((2000, 1, 14, 14, 14), config, gen(7)).paint_box_valid
    assert ((valid.long().diff(dim=1)) <= 0).all()  # a prefix of the 5 slots
    counts = valid.sum(1)
    # official: in-painting tests rand < 0.95 before each of up to 5 boxes; out-painting has
    # one box and tests before each of up to 4 more.
    first, extra = (0, 5) if inpaint else (1, 4)
    for j in range(extra + 1):
        p = 0.95**j * 0.05 if j < extra else 0.95**extra
        assert_binomial(int((counts == first + j).sum()), 2000, p, f"{first + j} boxes")


# ---------------------------------------------------------------------------------------------
# box ranges, reproducibility, output range


def test_box_bounds_and_size_ranges():
    shape = (400, 1, 64, 64, 32)
    config = GenesisTransformConfig(shuffle_blocks=3, inpaint_rate=0.5)
    params = sample_genesis_params(shape, config, gen(17))
    dims = torch.tensor(shape[2:])
    start, size = params.shuffle_boxes[..., :3], params.shuffle_boxes[..., 3:]
    for a in range(3):
        assert set(size[..., a].unique().tolist()) == set(range(1, int(dims[a]) // 10 + 1))
        assert start[..., a].min() == 0 and (start[..., a] + size[..., a]).max() == dims[a]
    assert ((start >= 0) & (start + size <= dims)).all()
    for inpaint in (True, False):
        rows = params.paint_boxes[params.inpaint == inpaint].flatten(0, 1)
        start, size = rows[:, :3], rows[:, 3:]
        assert ((start >= 3) & (start + size <= dims - 3)).all()
        for a in range(3):
            dim = int(dims[a])
            lo, hi = (dim // 6, dim // 3) if inpaint else (dim - 4 * dim // 7, dim - 3 * dim // 7)
            assert set(size[:, a].unique().tolist()) == set(range(lo, hi + 1))
            assert start[:, a].min() == 3 and (start[:, a] + size[:, a]).max() == dim - 3


def test_same_seed_same_batch_and_different_seed_different_batch():
    cubes = torch.rand((3, 1, 24, 24, 16), generator=gen(0))
    config = GenesisTransformConfig(shuffle_blocks=500, bezier_points=1000)
    x1, y1 = transform_batch(cubes, config, gen(123))
    x2, y2 = transform_batch(cubes, config, gen(123))
    x3, _ = transform_batch(cubes, config, gen(124))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_default_config_output_in_unit_range_and_dtype_kept():
    for dtype in (torch.float32, torch.float64):
        cubes = torch.rand((4, 1, 32, 32, 16), generator=gen(1), dtype=dtype)
        x, y = transform_batch(cubes, None, gen(8))
        assert x.shape == y.shape == cubes.shape and x.dtype == y.dtype == dtype
        assert 0.0 <= x.min() and x.max() <= 1.0


# ---------------------------------------------------------------------------------------------
# validation and dispatch


def test_readable_errors():
    with pytest.raises(ValueError, match="flip_mode"):
        GenesisTransformConfig(flip_mode="sideways")
    with pytest.raises(ValueError, match="N, 1, H, W, D"):
        transform_batch(torch.rand(2, 3, 16, 16, 16), None, gen(0))
    with pytest.raises(ValueError, match="out-painting"):
        transform_batch(torch.rand(2, 1, 20, 20, 10), only(paint_rate=1.0), gen(0))
    params = sample_genesis_params((1, 1, 16, 16, 16), OFF_CONFIG, gen(0))
    with pytest.raises(ValueError, match="do not match"):
        apply_genesis_reference(torch.rand(2, 1, 16, 16, 16), params, OFF_CONFIG)
    assert isinstance(params, GenesisParams)


ON_CONFIG = only(local_rate=1.0, nonlinear_rate=1.0, shuffle_blocks=50)


def _reference_result(cubes, seed):
    """What the reference path gives for ``transform_batch(cubes, ON_CONFIG, gen(seed))``."""
    params = sample_genesis_params(cubes.shape, ON_CONFIG, gen(seed))
    return apply_genesis_reference(cubes, params, ON_CONFIG)


def _must_not_run(*args, **kwargs):
    raise AssertionError("the Numba path ran")


@pytest.mark.parametrize("value", ["torch", "reference", "TORCH "])
def test_dispatch_env_forces_reference(monkeypatch, value):
    """With ``ANATOMIX_KERNELS`` naming the reference, the Numba kernel is not called (it would
    raise) and the transformed batch is the reference's."""
    cubes = torch.rand(2, 1, 16, 16, 16, generator=gen(3))
    monkeypatch.setenv("ANATOMIX_KERNELS", value)
    if numba_available():
        from kernels import genesis_cpu

        monkeypatch.setattr(genesis_cpu, "apply_genesis_cpu", _must_not_run)
    assert not use_triton(cubes)
    x, y = transform_batch(cubes, ON_CONFIG, gen(0))
    want_x, want_y = _reference_result(cubes, 0)
    assert torch.equal(x, want_x) and torch.equal(y, want_y) and not torch.equal(x, cubes)


def test_dispatch_env(monkeypatch):
    cubes = torch.rand(1, 1, 16, 16, 16)
    monkeypatch.delenv("ANATOMIX_KERNELS", raising=False)
    assert not use_triton(cubes)  # CPU tensors never go to Triton by default
    if numba_available():  # ... and go to the Numba kernel when it is installed
        from kernels import genesis_cpu

        calls = []
        real = genesis_cpu.apply_genesis_cpu
        monkeypatch.setattr(
            genesis_cpu, "apply_genesis_cpu", lambda *a, **k: calls.append(1) or real(*a, **k)
        )
        transform_batch(cubes, ON_CONFIG, gen(0))
        assert calls == [1]
    if not torch.cuda.is_available():
        # Without the interpreter Triton has no CPU driver: forcing it must say so clearly.
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setenv("ANATOMIX_KERNELS", "triton")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            transform_batch(cubes, OFF_CONFIG, gen(0))
    monkeypatch.setenv("ANATOMIX_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="ANATOMIX_KERNELS"):
        transform_batch(cubes, OFF_CONFIG, gen(0))


@pytest.mark.slow
def test_paper_batch_runs_within_budget():
    """Batch 6 of 64x64x32 with the published settings: finite, in range, shuffle < 1.5 s/cube."""
    cubes = torch.rand((6, 1, 64, 64, 32), generator=gen(0))
    config = only(local_rate=1.0)
    params = sample_genesis_params(cubes.shape, config, gen(1))
    start = time.perf_counter()
    x, _ = apply_genesis_reference(cubes, params, config)
    assert (time.perf_counter() - start) / 6 < 1.5
    x, y = transform_batch(cubes, GenesisTransformConfig(), gen(2))
    assert 0.0 <= x.min() and x.max() <= 1.0 and torch.isfinite(x).all()
