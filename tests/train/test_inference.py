"""The PyTorch adapter of :mod:`imaging.sliding` (which is checked against MONAI in
tests/imaging/test_sliding.py): batches of samples, padding, blending, exactness for pointwise
models."""

from __future__ import annotations

import pytest
import torch

from train.inference import blend_weights, sliding_window_inference, window_starts


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
@pytest.mark.parametrize(
    "shape,roi",
    [
        ((11, 9, 7), (4, 4, 4)),
        ((5, 3, 6), (6, 6, 4)),
        ((8, 8, 8), (8, 8, 8)),
        ((2, 1, 9), (3, 3, 3)),
    ],
)
def test_pointwise_predictor_is_reproduced(shape, roi, overlap, blend):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 1, *shape), generator=g)
    out = sliding_window_inference(
        x, roi, lambda w: torch.sigmoid(3 * w) ** 2, overlap=overlap, sw_batch_size=3, blend=blend
    )
    assert out.shape == x.shape
    torch.testing.assert_close(out, torch.sigmoid(3 * x) ** 2, rtol=1e-6, atol=1e-6)


def test_identity_constant_blend_is_exact():
    # constant blend sums k identical copies and divides by k: exact for values whose multiples
    # stay exactly representable (quarter-integers), whatever the coverage k
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-400, 400, (1, 2, 11, 8, 7), generator=g).float() / 4
    out = sliding_window_inference(x, (4, 4, 4), lambda w: w, overlap=0.5)
    assert torch.equal(out, x)


def test_pointwise_conv_matches_full_volume_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, kernel_size=1)
    x = torch.randn(2, 2, 13, 10, 7)
    with torch.no_grad():
        full = conv(x)
        out = sliding_window_inference(x, (6, 6, 4), conv, overlap=0.5, sw_batch_size=5)
        out_g = sliding_window_inference(x, (6, 6, 4), conv, overlap=0.3, blend="gaussian")
    assert out.shape == (2, 3, 13, 10, 7)
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_g, full, rtol=1e-5, atol=1e-5)


def test_3x3x3_conv_interior_of_a_single_window_is_exact():
    # with roi equal to the volume there is one window: identical to the full-volume conv
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 1, kernel_size=3, padding=1)
    x = torch.randn(1, 1, 6, 7, 5)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_inference(x, (6, 7, 5), conv), conv(x))


def test_every_voxel_is_covered():
    # a predictor of ones with constant blend: the un-normalised sum is the coverage count;
    # recover it by stitching a counter that marks each window once
    shape, roi = (13, 10, 7), (5, 4, 3)
    seen = torch.zeros(shape)

    def mark(w):
        return torch.ones_like(w)

    out = sliding_window_inference(torch.zeros(1, 1, *shape), roi, mark, overlap=0.4)
    assert torch.equal(out, torch.ones(1, 1, *shape))  # divided by a non-zero count everywhere
    for sx in window_starts(13, 5, 0.4):
        for sy in window_starts(10, 4, 0.4):
            for sz in window_starts(7, 3, 0.4):
                seen[sx : sx + 5, sy : sy + 4, sz : sz + 3] += 1
    assert seen.min() >= 1


def test_window_inputs_have_roi_size_and_padding_value():
    sizes = []

    def spy(w):
        sizes.append(tuple(w.shape))
        assert (w[:, :, :, :, 0] == -7).all() and (w[:, :, :, :, -1] == -7).all()
        return w

    x = torch.zeros(1, 1, 9, 9, 2)  # z padded from 2 to 4: one slice each side
    out = sliding_window_inference(x, (4, 4, 4), spy, overlap=0.5, sw_batch_size=4, pad_value=-7)
    assert torch.equal(out, x)
    assert all(s[1:] == (1, 4, 4, 4) for s in sizes) and max(s[0] for s in sizes) <= 4
    # 4 × 4 × 1 windows (starts 0, 2, 4, 5 per in-plane axis) in chunks of 4
    assert sum(s[0] for s in sizes) == 16


def test_gaussian_weights_positive_and_peaked():
    w = blend_weights((8, 6, 5), "gaussian")
    assert w.shape == (8, 6, 5) and (w > 0).all()
    assert w.max() <= 1.0 and w[0, 0, 0] < w[4, 3, 2]
    assert torch.equal(blend_weights((2, 2, 2), "constant"), torch.ones(2, 2, 2))


def test_errors():
    x = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="N, C"):
        sliding_window_inference(x[0], (2, 2, 2), lambda w: w)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(x, (2, 2, 2), lambda w: w, overlap=1.0)
    with pytest.raises(ValueError, match="returned shape"):
        sliding_window_inference(x, (2, 2, 2), lambda w: w[:, :, :1])
    with pytest.raises(ValueError, match="blend"):
        sliding_window_inference(x, (2, 2, 2), lambda w: w, blend="linear")
