"""PEAC's Genesis-2D appearance distortion: parameters and PyTorch reference (no interpreter).

Published behaviour restated (docs/METHODS.md section 3.3 item 5 and section 1.2): 40 shuffle blocks
of randint(1, H//10) x randint(1, W//10) pixels, always applied, read from the original image;
Bezier map p 0.9 (inverted p 0.5); painting p 0.9, in-painting 0.2 / out-painting 0.8, 3-pixel
margins, further boxes while u < 0.95, the same noise in every channel.
"""

import math

import pytest
import torch

from kernels.genesis2d import (
    Genesis2DConfig,
    apply_genesis2d,
    apply_genesis2d_reference,
    genesis2d,
    sample_genesis2d_params,
)
from tests.kernels.genesis_parity import OFF2, gen

OFF = OFF2


def coded_images(shape) -> torch.Tensor:
    """Channel c of pixel p holds p + 100000 * c: every value names its pixel and channel."""
    b, c, h, w = shape
    pixel = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    chan = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1)
    return (pixel + 100000 * chan).expand(b, c, h, w).contiguous()


def test_config_defaults_are_peac():
    config = Genesis2DConfig()
    assert (config.blocks, config.bezier_points) == (40, 500)
    assert (config.nonlinear_rate, config.paint_rate, config.inpaint_rate) == (0.9, 0.9, 0.2)
    assert config.paint_box_rate == 0.95
    with pytest.raises(ValueError):
        Genesis2DConfig(paint_rate=1.5)
    with pytest.raises(ValueError):
        sample_genesis2d_params((1, 3, 12, 40), Genesis2DConfig(), gen(0))  # out-paint needs 14


@pytest.mark.parametrize("seed", range(5))
def test_single_block_permutes_only_inside_and_keeps_pixels_whole(seed):
    shape = (2, 3, 57, 43)
    config = Genesis2DConfig(**dict(OFF, blocks=1))
    images = coded_images(shape)
    params = sample_genesis2d_params(shape, config, gen(seed))
    out = apply_genesis2d_reference(images, params, config)
    for n in range(shape[0]):
        h0, w0, sh, sw = params.shuffle_boxes[n, 0].tolist()
        assert 1 <= sh <= 5 and 1 <= sw <= 4
        inside = torch.zeros(shape[2:], dtype=torch.bool)
        inside[h0 : h0 + sh, w0 : w0 + sw] = True
        assert torch.equal(out[n][:, ~inside], images[n][:, ~inside])
        block_in = images[n][:, inside]
        block_out = out[n][:, inside]
        for ch in range(shape[1]):  # same multiset per channel
            assert torch.equal(block_in[ch].sort().values, block_out[ch].sort().values)
        # Documented choice: one pixel permutation for all channels (channel vectors intact).
        for ch in range(1, shape[1]):
            assert torch.equal(block_out[ch] - 100000 * ch, block_out[0])


def test_forty_blocks_read_from_original_within_the_last_covering_block():
    shape = (3, 3, 64, 48)
    config = Genesis2DConfig(**dict(OFF, blocks=40))
    images = coded_images(shape)
    params = sample_genesis2d_params(shape, config, gen(7))
    out = apply_genesis2d_reference(images, params, config)
    w_dim = shape[3]
    for n in range(shape[0]):
        owner = torch.full(shape[2:], -1)
        for k, (h0, w0, sh, sw) in enumerate(params.shuffle_boxes[n].tolist()):
            owner[h0 : h0 + sh, w0 : w0 + sw] = k
        src = out[n, 0].long()  # the original pixel each output pixel came from
        src_h, src_w = src // w_dim, src % w_dim
        for ch in range(1, shape[1]):
            assert torch.equal(out[n, ch] - 100000 * ch, out[n, 0])
        unowned = owner < 0
        assert torch.equal(out[n][:, unowned], images[n][:, unowned])
        boxes = params.shuffle_boxes[n][owner.clamp(min=0)]  # (H, W, 4)
        in_box = (
            (src_h >= boxes[..., 0])
            & (src_h < boxes[..., 0] + boxes[..., 2])
            & (src_w >= boxes[..., 1])
            & (src_w < boxes[..., 1] + boxes[..., 3])
        )
        assert bool(in_box[~unowned].all())


def union_mask(params, n, spatial):
    mask = torch.zeros(spatial, dtype=torch.bool)
    for (h0, w0, sh, sw), ok in zip(
        params.paint_boxes[n].tolist(), params.paint_box_valid[n].tolist(), strict=True
    ):
        if ok:
            mask[h0 : h0 + sh, w0 : w0 + sw] = True
    return mask


@pytest.mark.parametrize("inpaint_rate", [1.0, 0.0])
def test_painting_regions_and_noise_shared_across_channels(inpaint_rate):
    shape = (6, 3, 40, 33)
    config = Genesis2DConfig(**dict(OFF, paint_rate=1.0, inpaint_rate=inpaint_rate))
    images = torch.rand(shape, generator=gen(1))
    params = sample_genesis2d_params(shape, config, gen(2))
    out = apply_genesis2d_reference(images, params, config)
    for n in range(shape[0]):
        inside = union_mask(params, n, shape[2:])
        noisy = inside if inpaint_rate == 1.0 else ~inside
        assert bool(noisy.any())
        for ch in range(shape[1]):
            assert torch.equal(out[n, ch][noisy], params.noise[n, 0][noisy])
            assert torch.equal(out[n, ch][~noisy], images[n, ch][~noisy])
        for (h0, w0, sh, sw), ok in zip(
            params.paint_boxes[n].tolist(), params.paint_box_valid[n].tolist(), strict=True
        ):
            if ok:  # 3-pixel margins
                assert h0 >= 3 and w0 >= 3 and h0 + sh <= 37 and w0 + sw <= 30


def test_intensity_map_is_monotone_and_shared_by_channels():
    shape = (40, 3, 14, 50)
    config = Genesis2DConfig(**dict(OFF, nonlinear_rate=1.0))
    ramp = torch.linspace(0, 1, shape[2] * shape[3]).view(1, 1, shape[2], shape[3])
    images = ramp.expand(shape).contiguous()
    params = sample_genesis2d_params(shape, config, gen(3))
    out = apply_genesis2d_reference(images, params, config)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[:, 1], out[:, 0]) and torch.equal(out[:, 2], out[:, 0])
    flat = out[:, 0].reshape(shape[0], -1)
    step = flat[:, 1:] - flat[:, :-1]
    for n in range(shape[0]):
        if params.inverted[n]:
            assert bool((step[n] <= 0).all()) and flat[n, 0] > flat[n, -1]
        else:
            assert bool((step[n] >= 0).all()) and flat[n, 0] < flat[n, -1]


def within(count: int, total: int, p: float) -> bool:
    return abs(count - total * p) <= 4.5 * math.sqrt(total * p * (1 - p))


def test_rates_and_ranges_over_2000_draws():
    total = 2000
    shape = (total, 3, 70, 35)
    config = Genesis2DConfig()
    params = sample_genesis2d_params(shape, config, gen(11))
    assert within(int(params.do_nonlinear.sum()), total, 0.9)
    assert within(int(params.inverted.sum()), total, 0.5)
    assert within(int(params.do_paint.sum()), total, 0.9)
    assert within(int(params.inpaint.sum()), total, 0.2)
    inp = params.inpaint
    assert within(int(params.paint_box_valid[inp, 0].sum()), int(inp.sum()), 0.95)
    assert bool(params.paint_box_valid[~inp, 0].all())
    assert within(int(params.paint_box_valid[~inp, 1].sum()), int((~inp).sum()), 0.95)
    boxes = params.shuffle_boxes
    assert boxes.shape == (total, 40, 4)
    assert int(boxes[..., 2].min()) == 1 and int(boxes[..., 2].max()) == 7
    assert int(boxes[..., 3].min()) == 1 and int(boxes[..., 3].max()) == 3
    assert bool((boxes[..., 0] + boxes[..., 2] <= 70).all())
    assert bool((boxes[..., 1] + boxes[..., 3] <= 35).all())
    sizes = params.paint_boxes[..., 2:]
    in_sizes, out_sizes = sizes[inp], sizes[~inp]
    assert int(in_sizes[..., 0].min()) == 70 // 6 and int(in_sizes[..., 0].max()) == 70 // 3
    assert int(out_sizes[..., 0].min()) == 70 - 4 * 70 // 7
    assert int(out_sizes[..., 0].max()) == 70 - 3 * 70 // 7
    assert params.noise.shape == (total, 1, 70, 35)


def test_seed_determinism_and_public_op():
    shape = (3, 3, 30, 31)
    images = torch.rand(shape, generator=gen(0))
    a = genesis2d(images, None, gen(5))
    b = genesis2d(images, None, gen(5))
    c = genesis2d(images, None, gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == shape and a.dtype == images.dtype
    assert a.min() >= 0 and a.max() <= 1
    params = sample_genesis2d_params(shape, Genesis2DConfig(), gen(5))
    assert torch.equal(apply_genesis2d(images, params), a)  # CPU: the reference


def test_bfloat16_reference_runs():
    shape = (2, 3, 20, 21)
    images = torch.rand(shape, generator=gen(0))
    params = sample_genesis2d_params(shape, Genesis2DConfig(), gen(1))
    low = apply_genesis2d_reference(images.bfloat16(), params)
    high = apply_genesis2d_reference(images.bfloat16().float(), params)
    assert low.dtype == torch.bfloat16
    assert (low.float() - high).abs().max() <= 2**-8
