"""Models Genesis Triton kernels, run by the interpreter on CPU, against the PyTorch reference.

Both paths consume the same drawn :class:`GenesisParams`, so flips, shuffling and painting must
agree bit for bit and the Bezier map within 1e-6 (float32). Shapes are odd on purpose and the
shuffle block counts small so that the interpreter stays fast.
"""

import numpy as np
import pytest
import torch

from kernels import genesis, genesis_params, genesis_triton
from kernels.genesis import (
    GenesisTransformConfig,
    apply_genesis,
    apply_genesis_reference,
    sample_genesis_params,
    transform_batch,
    use_triton,
)
from kernels.genesis_triton import _genesis_triton
from tests.kernels.genesis_parity import (
    GENESIS3D,
    OFF3,
    TOLERANCE,
    check3d,
    distinct_cubes,
    gen,
)

OFF = OFF3
SHAPES = [(1, 1, 17, 18, 19), (5, 1, 14, 15, 16), (2, 1, 33, 34, 35)]
BLOCKS = 30  # few shuffle blocks: the interpreter stays fast


def triton_path(cubes, params, config):
    return _genesis_triton(cubes, params, config)


@pytest.mark.parametrize("name", list(GENESIS3D))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_reference(shape, name):
    check3d(triton_path, shape, name, seed=sum(shape), shuffle_blocks=BLOCKS)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["shuffle", "all", "defaults"])
def test_half_precision_matches_reference_on_same_input(name, dtype):
    # the Bezier value is rounded via float32: at most one unit in the last place (TOLERANCE)
    check3d(triton_path, (2, 1, 17, 18, 19), name, seed=3, dtype=dtype, shuffle_blocks=BLOCKS)


@pytest.mark.parametrize("points", [2, 3, 1024, 100_000])
def test_bezier_table_sizes(points):
    """The binary search covers every table size, the release's 100,000 samples included."""
    config = GenesisTransformConfig(**{**OFF, "nonlinear_rate": 1.0, "bezier_points": points})
    cubes = torch.rand((2, 1, 9, 10, 11), generator=gen(points))
    cubes[0, 0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # the table's ends
    params = sample_genesis_params(cubes.shape, config, gen(1))
    x, _ = _genesis_triton(cubes, params, config)
    x_ref, _ = apply_genesis_reference(cubes, params, config)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=TOLERANCE[torch.float32])


def test_many_blocks_later_block_wins_and_outside_unchanged():
    """Overlapping blocks resolve as the sequential loop does: voxels outside every block keep
    their value, and each shuffled voxel holds a value from inside the last block covering it."""
    shape = (2, 1, 30, 24, 20)
    cubes = distinct_cubes(shape)
    config = GenesisTransformConfig(**{**OFF, "local_rate": 1.0, "shuffle_blocks": 300})
    params = sample_genesis_params(shape, config, gen(3))
    x, y = _genesis_triton(cubes, params, config)
    assert torch.equal(x, apply_genesis_reference(cubes, params, config)[0])
    assert torch.equal(y, cubes)
    for n in range(shape[0]):
        orig, out = cubes[n, 0].numpy(), x[n, 0].numpy()
        last = np.full(orig.shape, -1)
        for k, (h, w, d, sh, sw, sd) in enumerate(params.shuffle_boxes[n].tolist()):
            last[h : h + sh, w : w + sw, d : d + sd] = k
        np.testing.assert_array_equal(out[last < 0], orig[last < 0])
        source = np.rint(out.astype(np.float64) * cubes.numel()).astype(np.int64) - n * orig.size
        src_pos = np.stack(np.unravel_index(source, orig.shape), axis=-1)
        boxes = params.shuffle_boxes[n].numpy()
        for voxel in zip(*np.nonzero(last >= 0), strict=True):
            h, w, d, sh, sw, sd = boxes[last[voxel]]
            ph, pw, pd = src_pos[voxel]
            assert h <= ph < h + sh and w <= pw < w + sw and d <= pd < d + sd
        assert not np.array_equal(out, orig)


def test_shuffle_skips_cubes_without_shuffling_and_painting_uses_noise():
    shape = (4, 1, 21, 22, 20)  # blocks up to 2x2x2: a 1-voxel block moves nothing
    cubes = distinct_cubes(shape)
    config = GenesisTransformConfig(**{**OFF, "local_rate": 0.5, "shuffle_blocks": 40})
    params = sample_genesis_params(shape, config, gen(8))
    assert params.do_shuffle.any() and (~params.do_shuffle).any()
    x, _ = _genesis_triton(cubes, params, config)
    for n in range(shape[0]):
        assert torch.equal(x[n], cubes[n]) != bool(params.do_shuffle[n])
    config = GenesisTransformConfig(**{**OFF, "paint_rate": 1.0, "inpaint_rate": 1.0})
    params = sample_genesis_params(shape, config, gen(9))
    x, _ = _genesis_triton(cubes, params, config)
    painted = x != cubes
    assert painted.any() and torch.equal(x[painted], params.noise[painted])


# The published 10,000 blocks per cube, on odd shapes: batch 1 with the largest blocks (6x6x3 =
# 108 slots ranked per block) and batch 5 with mid-sized ones; distinct voxel values, so a voxel
# taken from a wrong slot of its block cannot go unnoticed.
PUBLISHED = [(1, 1, 65, 63, 33), (5, 1, 31, 29, 27)]


@pytest.mark.parametrize("shape", PUBLISHED, ids=lambda s: "x".join(map(str, s)))
def test_published_block_count_shuffles_exactly_as_reference(shape):
    config = GenesisTransformConfig(**{**OFF, "flip_rate": 1.0, "local_rate": 1.0})
    assert config.shuffle_blocks == 10_000
    cubes = distinct_cubes(shape)
    params = sample_genesis_params(shape, config, gen(sum(shape)))
    x, y = _genesis_triton(cubes, params, config)
    x_ref, y_ref = apply_genesis_reference(cubes, params, config)
    assert torch.equal(y, y_ref) and torch.equal(x, x_ref)
    assert not torch.equal(x, y)


@pytest.mark.parametrize(
    ("shape", "lanes"),
    [((1, 1, 61, 62, 30), 128), ((2, 1, 31, 29, 27), 32)],
    ids=["one-block-per-program", "two-blocks-per-program"],
)
def test_small_block_groups_as_on_a_gpu(monkeypatch, shape, lanes):
    """The interpreter normally ranks every block of a cube in one program; a GPU groups a few
    (one 6x6x3 block per 128 lanes at the published shape). Same result either way."""
    monkeypatch.setattr(genesis_triton, "_INTERPRETER_LANES", lanes)
    check3d(triton_path, shape, "shuffle", seed=lanes, shuffle_blocks=120)


def test_published_defaults_batch5():
    check3d(triton_path, (5, 1, 29, 31, 23), "defaults", seed=11)


def test_no_box_or_permutation_table_is_built(monkeypatch):
    """The kernel derives every block's box and permutation itself: the launcher reads only the
    drawn words and seeds, so neither (N, K, 6) boxes nor the (N, K, V) table is materialised."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the Triton path built a shuffle table")

    config = GenesisTransformConfig(**{**OFF, "local_rate": 1.0, "shuffle_blocks": 200})
    cubes = distinct_cubes((2, 1, 23, 22, 21))
    params = sample_genesis_params(cubes.shape, config, gen(4))
    monkeypatch.setattr(genesis_params, "block_permutations", forbidden)
    monkeypatch.setattr(genesis_params, "shuffle_boxes_from_draws", forbidden)
    x, _ = _genesis_triton(cubes, params, config)
    assert params._perm is None and params._boxes is None
    monkeypatch.undo()
    assert torch.equal(x, apply_genesis_reference(cubes, params, config)[0])


def test_launcher_errors():
    config = GenesisTransformConfig(**OFF)
    params = sample_genesis_params((1, 1, 16, 16, 16), config, gen(0))
    with pytest.raises(ValueError, match="float32, bfloat16"):
        _genesis_triton(torch.rand(1, 1, 16, 16, 16, dtype=torch.float64), params, config)
    with pytest.raises(ValueError, match="do not match"):
        _genesis_triton(torch.rand(2, 1, 16, 16, 16), params, config)
    with pytest.raises(ValueError, match="N, 1, H, W, D"):
        _genesis_triton(torch.rand(1, 2, 16, 16, 16), params, config)


def test_non_contiguous_input_and_no_blocks():
    config = GenesisTransformConfig(**{**OFF, "flip_rate": 1.0, "shuffle_blocks": 0})
    base = torch.rand((1, 1, 19, 17, 18), generator=gen(5))
    cubes = base.transpose(2, 4)  # (1, 1, 18, 17, 19), not contiguous
    params = sample_genesis_params(cubes.shape, config, gen(6))
    x, y = _genesis_triton(cubes, params, config)
    x_ref, y_ref = apply_genesis_reference(cubes, params, config)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


# ---------------------------------------------------------------------------------------------
# dispatch


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts launcher calls while still running the kernel."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return _genesis_triton(*args, **kwargs)

    monkeypatch.setattr(genesis_triton, "_genesis_triton", counted)
    return calls


def test_cpu_tensors_take_the_reference_by_default(monkeypatch, kernel_calls):
    monkeypatch.delenv("ANATOMIX_KERNELS", raising=False)
    cubes = torch.rand((1, 1, 16, 16, 16), generator=gen(0))
    assert not use_triton(cubes)
    transform_batch(cubes, GenesisTransformConfig(shuffle_blocks=10), gen(1))
    assert kernel_calls == []


@pytest.mark.parametrize("value", ["torch", "reference"])
def test_forcing_torch(monkeypatch, kernel_calls, value):
    monkeypatch.setenv("ANATOMIX_KERNELS", value)
    cubes = torch.rand((1, 1, 16, 16, 16), generator=gen(0))
    assert not use_triton(cubes)
    transform_batch(cubes, GenesisTransformConfig(shuffle_blocks=10), gen(1))
    assert kernel_calls == []


def test_forcing_triton_on_cpu_under_interpreter(monkeypatch, kernel_calls):
    monkeypatch.setenv("ANATOMIX_KERNELS", "Triton ")
    cubes = torch.rand((2, 1, 16, 15, 14), generator=gen(0))
    config = GenesisTransformConfig(shuffle_blocks=20)
    assert use_triton(cubes)
    x, y = transform_batch(cubes, config, gen(1))
    assert kernel_calls == [1]
    params = sample_genesis_params(cubes.shape, config, gen(1))
    x_ref, y_ref = apply_genesis_reference(cubes, params, config)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-6)
    x2, _ = apply_genesis(cubes, params, config)
    assert torch.equal(x, x2) and kernel_calls == [1, 1]


def test_bad_env_value(monkeypatch):
    monkeypatch.setenv("ANATOMIX_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="ANATOMIX_KERNELS"):
        genesis.use_triton(torch.zeros(1))
