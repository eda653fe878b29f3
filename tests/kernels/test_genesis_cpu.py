"""Models Genesis on the CPU: the counter-based shuffle permutations and the Numba kernel.

The kernel consumes the same :class:`GenesisParams` as the PyTorch reference, so flips, shuffling
and painting must agree bit for bit and the Bezier map within 1e-6 (float32). Its shuffle boxes
and in-block permutations are derived in the kernel from ``shuffle_draws`` and ``shuffle_seed``;
the reference reads ``params.shuffle_boxes`` and ``params.shuffle_perm``, built by the PyTorch
functions -- equal outputs on shuffled cubes therefore check that both implementations agree.
The permutations must keep the published statistics (uniform over the v! orders of a block of v
voxels): checked with chi-square statistics at fixed seeds and thresholds far in the tails (not
flaky).
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from kernels import _dispatch, genesis, genesis_params
from kernels.genesis import (
    GenesisTransformConfig,
    apply_genesis,
    apply_genesis_reference,
    sample_genesis_params,
    transform_batch,
    use_numba,
    use_triton,
)
from kernels.genesis_params import block_permutations, fmix32, shuffle_block_volume
from tests.kernels.genesis_parity import (
    GENESIS3D,
    OFF3,
    TOLERANCE,
    check3d,
    distinct_cubes,
    gen,
)
from tests.reference.genesis_transforms import shuffle_restated, union_restated

pytest.importorskip("numba")
from kernels import genesis_cpu  # noqa: E402
from kernels.genesis_cpu import apply_genesis_cpu  # noqa: E402

OFF = OFF3
SHAPES = [(1, 1, 33, 34, 35), (5, 1, 14, 20, 17), (2, 1, 64, 64, 32)]
BLOCKS = 1000  # shuffle blocks of the shuffling settings (the paper's 10,000 is one test below)


def numba_path(cubes, params, config):
    return apply_genesis_cpu(cubes, params, config)


# ---------------------------------------------------------------------------------------------
# the kernel against the reference (settings, comparison: tests/kernels/genesis_parity.py)


@pytest.mark.parametrize("name", list(GENESIS3D))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_reference(shape, name):
    check3d(numba_path, shape, name, seed=sum(shape), shuffle_blocks=BLOCKS)  # a seed per shape


@pytest.mark.parametrize("seed", range(4))
def test_all_transforms_match_reference_over_seeds(seed):
    check3d(numba_path, (3, 1, 21, 30, 14), "all", seed=seed, shuffle_blocks=500)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["shuffle", "outpaint", "all", "defaults"])
def test_half_precision_matches_reference(name, dtype):
    # float64 -> float32 -> half may round once more than float64 -> half: one step (TOLERANCE)
    check3d(numba_path, (5, 1, 14, 20, 17), name, seed=3, dtype=dtype, shuffle_blocks=BLOCKS)


def test_paper_setting_matches_reference():
    """10,000 blocks and the release's 100,000-point Bezier table on one odd-sized cube."""
    config = GenesisTransformConfig(local_rate=1.0, nonlinear_rate=1.0, bezier_points=100_000)
    cubes = torch.rand((1, 1, 33, 34, 35), generator=gen(0))
    cubes[0, 0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # the table's ends
    params = sample_genesis_params(cubes.shape, config, gen(1))
    (x, y), (x_ref, y_ref) = (
        apply_genesis_cpu(cubes, params, config),
        apply_genesis_reference(cubes, params, config),
    )
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=TOLERANCE[torch.float32])


@pytest.mark.parametrize("points", [2, 3, 1024, 100_000])
@pytest.mark.parametrize("crowded", [False, True])
def test_bezier_table_sizes_and_crowded_tables(points, crowded):
    """Every table size; ``crowded`` makes x = t**3 (r1 = r3 = 0), whose samples pile up near 0
    beyond the scanned bucket size, so the kernel bisects within buckets."""
    config = GenesisTransformConfig(**{**OFF, "nonlinear_rate": 1.0, "bezier_points": points})
    cubes = torch.rand((2, 1, 9, 10, 11), generator=gen(points))
    cubes[0, 0, 0, 0, :4] = torch.tensor([0.0, 1.0, 1e-7, 0.999999])  # ends and near them
    params = sample_genesis_params(cubes.shape, config, gen(1))
    if crowded:
        params.control[:, 0] = params.control[:, 2] = 0.0
    x, _ = apply_genesis_cpu(cubes, params, config)
    x_ref, _ = apply_genesis_reference(cubes, params, config)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=TOLERANCE[torch.float32])


def test_non_contiguous_input_empty_batch_and_no_blocks():
    config = GenesisTransformConfig(**{**OFF, "flip_rate": 1.0, "shuffle_blocks": 0})
    cubes = torch.rand((1, 1, 19, 17, 18), generator=gen(5)).transpose(2, 4)  # (1,1,18,17,19)
    params = sample_genesis_params(cubes.shape, config, gen(6))
    x, y = apply_genesis_cpu(cubes, params, config)
    x_ref, y_ref = apply_genesis_reference(cubes, params, config)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    empty = torch.rand((0, 1, 16, 16, 16))
    x, y = apply_genesis_cpu(empty, sample_genesis_params(empty.shape, config, gen(0)), config)
    assert x.shape == y.shape == empty.shape


def test_errors():
    config = GenesisTransformConfig(**OFF)
    params = sample_genesis_params((1, 1, 16, 16, 16), config, gen(0))
    with pytest.raises(ValueError, match="float32, bfloat16"):
        apply_genesis_cpu(torch.rand(1, 1, 16, 16, 16, dtype=torch.float64), params, config)
    with pytest.raises(ValueError, match="do not match"):
        apply_genesis_cpu(torch.rand(2, 1, 16, 16, 16), params, config)
    with pytest.raises(ValueError, match="N, 1, H, W, D"):
        apply_genesis_cpu(torch.rand(1, 2, 16, 16, 16), params, config)


# ---------------------------------------------------------------------------------------------
# the invariants of tests/kernels/test_genesis.py, restated on the kernel's own outputs


def test_many_blocks_follow_the_sequential_loop_and_last_block_wins():
    """Large blocks (up to 6x6x3, the bucketed sort) in a 64x64x32 cube: the output equals the
    official loop run with the PyTorch permutations, so the in-kernel hash gives the same
    permutation of every block; voxels outside every block keep their value."""
    shape = (2, 1, 64, 64, 32)
    cubes = distinct_cubes(shape)
    config = GenesisTransformConfig(**{**OFF, "local_rate": 1.0, "shuffle_blocks": 3000})
    params = sample_genesis_params(shape, config, gen(3))
    x, y = apply_genesis_cpu(cubes, params, config)
    assert torch.equal(y, cubes)
    for n in range(shape[0]):
        orig, out = cubes[n, 0].numpy(), x[n, 0].numpy()
        boxes, perm = params.shuffle_boxes[n].numpy(), params.shuffle_perm[n].numpy()
        np.testing.assert_array_equal(out, shuffle_restated(orig, boxes, perm))
        covered = np.zeros(orig.shape, bool)
        for h, w, d, sh, sw, sd in boxes:
            covered[h : h + sh, w : w + sw, d : d + sd] = True
        np.testing.assert_array_equal(out[~covered], orig[~covered])
        assert not np.array_equal(out, orig)


@pytest.mark.parametrize("inpaint_rate", [1.0, 0.0])
def test_painting_touches_only_what_it_should(inpaint_rate):
    shape = (16, 1, 28, 30, 16)
    cubes = torch.rand(shape, generator=gen(9))
    config = GenesisTransformConfig(**{**OFF, "paint_rate": 1.0, "inpaint_rate": inpaint_rate})
    params = sample_genesis_params(shape, config, gen(5))
    x, _ = apply_genesis_cpu(cubes, params, config)
    for n in range(shape[0]):
        mask = union_restated(params.paint_boxes[n], params.paint_box_valid[n], shape[2:])
        orig, out, noise = cubes[n, 0].numpy(), x[n, 0].numpy(), params.noise[n, 0].numpy()
        keep, fill = (~mask, mask) if inpaint_rate == 1.0 else (mask, ~mask)
        np.testing.assert_array_equal(out[keep], orig[keep])
        np.testing.assert_array_equal(out[fill], noise[fill])


@pytest.mark.parametrize("mode", ["faithful", "corrected"])
def test_flips_hit_input_and_target_alike(mode):
    shape = (40, 1, 20, 18, 14)
    cubes = distinct_cubes(shape)
    config = GenesisTransformConfig(**{**OFF, "flip_rate": 1.0, "flip_mode": mode})
    params = sample_genesis_params(shape, config, gen(2))
    x, y = apply_genesis_cpu(cubes, params, config)
    assert torch.equal(x, y)
    for n in range(shape[0]):
        expected = cubes[n].numpy()
        for axis in params.flips[n].tolist():
            expected = np.flip(expected, axis=axis)
        np.testing.assert_array_equal(y[n].numpy(), expected)


def test_nonlinear_is_monotone_with_endpoints():
    shape = (24, 1, 16, 16, 16)
    ramp = torch.linspace(0, 1, 16**3)
    cubes = ramp.view(1, 1, 16, 16, 16).expand(shape).contiguous()
    config = GenesisTransformConfig(**{**OFF, "nonlinear_rate": 1.0})
    params = sample_genesis_params(shape, config, gen(11))
    x, _ = apply_genesis_cpu(cubes, params, config)
    for n in range(shape[0]):
        out, inverted = x[n].flatten(), bool(params.inverted[n])
        steps = out[1:] - out[:-1]
        assert (steps <= 0).all() if inverted else (steps >= 0).all()
        ends = (1.0, 0.0) if inverted else (0.0, 1.0)
        assert out[0].item() == pytest.approx(ends[0], abs=1e-6)
        assert out[-1].item() == pytest.approx(ends[1], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# the counter-based permutations


def fmix32_restated(h: int) -> int:
    """MurmurHash3 fmix32 (Appleyard), on Python integers."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_fmix32_matches_murmur3_and_block_permutations_match_the_definition():
    words = torch.randint(0, 2**32, (2000,), generator=gen(0), dtype=torch.int64)
    words[:3] = torch.tensor([0, 1, 2**32 - 1])
    assert fmix32(words).tolist() == [fmix32_restated(int(w)) for w in words]
    seed = torch.tensor([0, 12345, 2**31 - 1])
    boxes = torch.tensor([[[0, 0, 0, 2, 3, 2], [1, 1, 1, 1, 1, 3]]]).expand(3, 2, 6)
    perm = block_permutations(seed, boxes, 12)
    for n, s in enumerate(seed.tolist()):
        for k, volume in enumerate((12, 3)):
            stem = fmix32_restated(fmix32_restated(s ^ 0x9E3779B9) ^ k)
            keys = [fmix32_restated(stem ^ slot) for slot in range(volume)]
            assert perm[n, k, :volume].tolist() == sorted(range(volume), key=keys.__getitem__)
            assert sorted(perm[n, k, volume:].tolist()) == list(range(volume, 12))


def test_boxes_from_draws_follow_the_multiply_shift_rule():
    params = sample_genesis_params((3, 1, 33, 34, 35), GenesisTransformConfig(), gen(4))
    dims = torch.tensor([33, 34, 35])
    words = params.shuffle_draws
    sizes = 1 + ((words[..., 3:] * (dims // 10)) >> 32)
    starts = (words[..., :3] * (dims + 1 - sizes)) >> 32
    assert torch.equal(params.shuffle_boxes, torch.cat([starts, sizes], dim=-1))
    # the 2D op draws its blocks eagerly through the same two functions
    draws, seed = genesis_params.sample_shuffle_draws(gen(5), 3, 100, 3)
    boxes, seed_again = genesis_params.sample_shuffle_blocks(gen(5), dims, 3, 100)
    assert torch.equal(seed, seed_again)
    assert torch.equal(boxes, genesis_params.shuffle_boxes_from_draws(draws, (33, 34, 35)))


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum().item() / counts.numel()
    return float(((counts.double() - expected) ** 2 / expected).sum())


def three_voxel_orders(seeds: torch.Tensor, blocks: int) -> torch.Tensor:
    """(N, blocks) index in 0..5 of the permutation of every 1x1x3 block."""
    boxes = torch.zeros((len(seeds), blocks, 6), dtype=torch.int64)
    boxes[..., 3:] = torch.tensor([1, 1, 3])
    perm = block_permutations(seeds, boxes, 3).long()
    return perm[..., 0] * 2 + (perm[..., 1] > perm[..., 2]).long()  # first voxel, then order


def test_three_voxel_blocks_take_all_six_orders_equally_often():
    """60,000 blocks: chi-square (5 dof) below 30 (p ~ 1.5e-5 under uniformity)."""
    seeds = torch.randint(0, 2**31, (20,), generator=gen(1))
    orders = three_voxel_orders(seeds, 3000)
    assert chi_square(torch.bincount(orders.flatten(), minlength=6)) < 30


def test_orders_of_neighbouring_blocks_and_seeds_are_independent():
    """Joint orders (36 cells, 35 dof) of blocks k and k+1, and of seeds s and s+1, each over
    ~30,000 pairs: chi-square below 80 (p ~ 2e-5 under independence)."""
    orders = three_voxel_orders(torch.randint(0, 2**31, (10,), generator=gen(2)), 3000)
    pairs = orders[:, :-1] * 6 + orders[:, 1:]
    assert chi_square(torch.bincount(pairs.flatten(), minlength=36)) < 80
    orders = three_voxel_orders(torch.arange(3000), 10)  # consecutive seeds
    pairs = orders[:-1] * 6 + orders[1:]
    assert chi_square(torch.bincount(pairs.flatten(), minlength=36)) < 80


def test_every_voxel_of_the_largest_block_lands_anywhere_equally_often():
    """6x6x3 blocks (108 voxels), 21,600 of them: each (slot, source) cell expects 200; the
    chi-square over the 108 x 108 table (107**2 dof) stays within 6 standard deviations."""
    boxes = torch.zeros((20, 1080, 6), dtype=torch.int64)
    boxes[..., 3:] = torch.tensor([6, 6, 3])
    seeds = torch.randint(0, 2**31, (20,), generator=gen(3))
    perm = block_permutations(seeds, boxes, 108).long().view(-1, 108)
    counts = torch.zeros((108, 108), dtype=torch.int64)
    counts.index_put_((torch.arange(108).expand_as(perm), perm), torch.tensor(1), accumulate=True)
    dof = 107**2
    assert abs(chi_square(counts) - dof) < 6 * math.sqrt(2 * dof)


# ---------------------------------------------------------------------------------------------
# parameters: lazy permutations, and dispatch


def test_shuffle_perm_is_built_lazily_once_and_survives_to_and_replace():
    shape = (2, 1, 30, 24, 20)
    params = sample_genesis_params(shape, GenesisTransformConfig(shuffle_blocks=50), gen(0))
    assert params._perm is None and params._boxes is None  # sampling builds neither
    perm = params.shuffle_perm
    assert perm.shape == (2, 50, shuffle_block_volume(shape[2:])) and perm.dtype == torch.int16
    assert params.shuffle_perm is perm and params.to("cpu") is params
    assert torch.equal(perm, block_permutations(params.shuffle_seed, params.shuffle_boxes, 12))
    other = dataclasses.replace(params, shuffle_seed=params.shuffle_seed + 1)
    assert not torch.equal(other.shuffle_perm, perm)
    meta = params.to("meta")
    assert meta.shuffle_perm.device.type == "meta" and meta.noise.device.type == "meta"


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls of the Numba launcher while still running it."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return apply_genesis_cpu(*args, **kwargs)

    monkeypatch.setattr(genesis_cpu, "apply_genesis_cpu", counted)
    return calls


def test_auto_mode_takes_numba_on_cpu_without_building_boxes_or_permutations(
    monkeypatch, kernel_calls
):
    monkeypatch.delenv("ANATOMIX_KERNELS", raising=False)
    cubes = torch.rand((2, 1, 16, 15, 14), generator=gen(0))
    assert use_numba(cubes) and not use_triton(cubes)

    def no_table(*args):
        raise AssertionError("the boxes or the permutation table were built")

    monkeypatch.setattr(genesis_params, "block_permutations", no_table)
    monkeypatch.setattr(genesis_params, "shuffle_boxes_from_draws", no_table)
    config = GenesisTransformConfig(local_rate=1.0, shuffle_blocks=30)
    x, y = transform_batch(cubes, config, gen(1))
    assert kernel_calls == [1]
    monkeypatch.undo()
    params = sample_genesis_params(cubes.shape, config, gen(1))
    x_ref, y_ref = apply_genesis_reference(cubes, params, config)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-6)
    assert torch.equal(y, y_ref)
    assert not use_numba(cubes.double())  # other dtypes: the reference


@pytest.mark.parametrize("value", ["torch", "reference"])
def test_forcing_the_reference(monkeypatch, kernel_calls, value):
    monkeypatch.setenv("ANATOMIX_KERNELS", value)
    cubes = torch.rand((1, 1, 16, 16, 16), generator=gen(0))
    assert not use_numba(cubes)
    transform_batch(cubes, GenesisTransformConfig(shuffle_blocks=10), gen(1))
    assert kernel_calls == []


def test_forcing_numba(monkeypatch, kernel_calls):
    monkeypatch.setenv("ANATOMIX_KERNELS", " Numba")
    cubes = torch.rand((1, 1, 16, 16, 16), generator=gen(0))
    assert use_numba(cubes) and not use_triton(cubes)
    config = GenesisTransformConfig(shuffle_blocks=10)
    params = sample_genesis_params(cubes.shape, config, gen(1))
    x, _ = apply_genesis(cubes, params, config)
    assert kernel_calls == [1]
    torch.testing.assert_close(x, apply_genesis_reference(cubes, params, config)[0])
    with pytest.raises(RuntimeError, match="CPU"):
        use_numba(torch.empty((1,), device="meta"))
    with pytest.raises(ValueError, match="float32, bfloat16"):
        apply_genesis(cubes.double(), params, config)


def test_without_numba_auto_falls_back_and_forcing_says_so(monkeypatch, kernel_calls):
    monkeypatch.setattr(_dispatch, "numba_available", lambda: False)
    monkeypatch.delenv("ANATOMIX_KERNELS", raising=False)
    cubes = torch.rand((1, 1, 16, 16, 16), generator=gen(0))
    assert not use_numba(cubes)
    transform_batch(cubes, GenesisTransformConfig(shuffle_blocks=10), gen(1))
    assert kernel_calls == []
    monkeypatch.setenv("ANATOMIX_KERNELS", "numba")
    with pytest.raises(RuntimeError, match="Numba cannot be imported"):
        genesis.transform_batch(cubes, None, gen(0))
