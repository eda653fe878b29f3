"""Sliding-window inference of a PyTorch model over whole volumes.

A thin adapter: the tiling and blending are :mod:`imaging.sliding`'s, the implementation the
server and export scoring use too, so the Dice ``evaluate`` reports is stitched as served. The
predictor runs on the volume's device; windows travel as NumPy arrays between calls. Gradients are
not switched off here: call it under ``torch.no_grad()`` / ``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from imaging.sliding import WindowSpec, window_starts
from imaging.sliding import blend_weights as _blend_weights
from imaging.sliding import sliding_window as _sliding_window

__all__ = ["blend_weights", "sliding_window_inference", "window_starts"]


def blend_weights(roi_size: Sequence[int], mode: Literal["constant", "gaussian"]) -> torch.Tensor:
    """Per-voxel weights ``(X, Y, Z)`` of one window (see :func:`imaging.sliding.blend_weights`)."""
    return torch.from_numpy(_blend_weights(roi_size, mode))


def sliding_window_inference(
    volume: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    blend: Literal["constant", "gaussian"] = "constant",
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Run ``predictor`` on overlapping ``roi_size`` windows of each sample and stitch them.

    Args:
        volume: ``(N, C, X, Y, Z)`` input; each sample is stitched on its own.
        roi_size: ``(x, y, z)`` window size the predictor expects.
        predictor: ``(B, C, x, y, z)`` → ``(B, C_out, x, y, z)``; it must not mix the samples
            of a batch (make batch-statistics normalisation batch independent first:
            :func:`models.unet3d.batch_independent`).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        sw_batch_size: windows per predictor call.
        blend: ``"constant"`` or ``"gaussian"``.
        pad_value: fill value for volumes smaller than the roi.

    Returns:
        ``(N, C_out, X, Y, Z)`` float32 tensor on ``volume``'s device.

    Raises:
        ValueError: bad shapes or arguments, or a predictor output of another size.
    """
    if volume.ndim != 5:
        raise ValueError(f"volume must be (N, C, X, Y, Z), got shape {tuple(volume.shape)}")
    spec = WindowSpec(tuple(roi_size), overlap, blend, pad_value)
    if len(spec.roi) != 3:
        raise ValueError(f"roi_size must be three positive ints, got {tuple(roi_size)}")
    device = volume.device

    def predict(windows: np.ndarray) -> np.ndarray:
        out = predictor(torch.from_numpy(windows).to(device))
        return out.detach().float().cpu().numpy()

    samples = volume.detach().float().cpu().numpy()
    outs = [_sliding_window(s, spec, predict, batch=sw_batch_size) for s in samples]
    return torch.from_numpy(np.stack(outs)).to(device)
