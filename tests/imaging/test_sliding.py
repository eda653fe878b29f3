"""The one sliding-window implementation against MONAI's ``sliding_window_inference``.

MONAI is the reference users would otherwise run: same windows, padding and blend weights, so
the same stitched output for a predictor whose windows disagree (a 3×3×3 convolution sees each
window's borders differently).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_swi

from imaging.sliding import LEGACY_BLEND, WindowSpec, blend_weights, sliding_window, window_starts


def _conv(seed: int, c_in: int = 1, c_out: int = 2) -> torch.nn.Conv3d:
    torch.manual_seed(seed)
    return torch.nn.Conv3d(c_in, c_out, kernel_size=3, padding=1).eval()


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize(
    "shape,roi,overlap",
    [
        ((20, 17, 9), (8, 8, 4), 0.5),
        ((20, 17, 9), (8, 8, 4), 0.25),
        ((13, 6, 11), (8, 8, 4), 0.6),  # y shorter than the roi: padded
        ((16, 16, 8), (16, 16, 8), 0.5),  # one window
        ((31, 9, 5), (7, 4, 3), 0.0),
    ],
)
def test_matches_monai(shape, roi, overlap, blend):
    conv = _conv(1)
    x = torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = monai_swi(x, roi, 3, conv, overlap=overlap, mode=blend, cval=-0.5)
        got = sliding_window(
            x[0].numpy(),
            WindowSpec(roi, overlap, blend, pad_value=-0.5),
            lambda w: conv(torch.from_numpy(w)).numpy(),
            batch=3,
        )
    assert got.shape == (2, *shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-5, atol=1e-6)


def test_blends_differ_where_windows_disagree():
    # guards the reference test above: the two blends give different answers for this predictor
    conv, x = _conv(1), np.random.default_rng(0).random((1, 20, 17, 9), np.float32)
    run = {
        b: sliding_window(x, WindowSpec((8, 8, 4), 0.5, b), lambda w: conv(torch.from_numpy(w))
                          .detach().numpy())
        for b in ("constant", "gaussian")
    }  # fmt: skip
    assert np.abs(run["constant"] - run["gaussian"]).max() > 1e-3


def test_gaussian_weights_match_monai_importance_map():
    from monai.data.utils import compute_importance_map

    for roi in [(8, 6, 5), (32, 32, 16), (3, 1, 2)]:
        want = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125).numpy()
        np.testing.assert_allclose(blend_weights(roi, "gaussian"), want, rtol=1e-6, atol=1e-7)
    assert (blend_weights((8, 6, 5), "constant") == 1).all()


def test_window_starts_like_monai():
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(11, 4, 0.5) == [0, 2, 4, 6, 7]  # last window flush with the end
    assert window_starts(8, 8, 0.5) == [0]
    assert window_starts(5, 3, 0.9) == [0, 1, 2]  # stride int(0.3) → 1
    with pytest.raises(ValueError):
        window_starts(3, 4, 0.5)


def test_pointwise_predictor_is_reproduced_exactly_enough():
    x = np.random.default_rng(1).random((2, 11, 9, 7), np.float32)
    for blend in ("constant", "gaussian"):
        out = sliding_window(x, WindowSpec((4, 4, 4), 0.5, blend), lambda w: w * 2.0 + 1.0)
        np.testing.assert_allclose(out, x * 2.0 + 1.0, rtol=1e-6)


def test_spec_from_manifest_and_legacy_default():
    spec = WindowSpec.from_inference(
        {"roi_size": [32, 32, 16], "overlap": 0.25, "blend": "gaussian", "pad_value": 0.1},
        (99, 99, 99),
    )
    assert spec == WindowSpec((32, 32, 16), 0.25, "gaussian", 0.1)
    assert WindowSpec.from_inference(spec.to_inference(), (1, 1, 1)) == spec
    legacy = WindowSpec.from_inference({"roi_size": [8, 8, 8]}, (1, 1, 1))
    assert legacy.blend == LEGACY_BLEND == "constant" and legacy.overlap == 0.5
    assert WindowSpec.from_inference({}, (5, 6, 7)).roi == (5, 6, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"roi": (0, 4, 4)}, "roi"),
        ({"roi": (4, 4, 4), "overlap": 1.0}, "overlap"),
        ({"roi": (4, 4, 4), "blend": "linear"}, "blend"),
        ({"roi": (4, 4, 4), "pad_value": float("nan")}, "pad_value"),
    ],
)
def test_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowSpec(**kwargs)


def test_bad_volume_or_predictor_output():
    spec = WindowSpec((2, 2, 2))
    with pytest.raises(ValueError, match="C, X, Y, Z"):
        sliding_window(np.zeros((4, 4, 4), np.float32), spec, lambda w: w)
    with pytest.raises(ValueError, match="returned shape"):
        sliding_window(np.zeros((1, 4, 4, 4), np.float32), spec, lambda w: w[:, :, :1])
    with pytest.raises(ValueError, match="batch"):
        sliding_window(np.zeros((1, 4, 4, 4), np.float32), spec, lambda w: w, batch=0)
