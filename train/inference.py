"""Sliding-window inference over whole volumes with a model trained on fixed-size cubes.

Behaves like MONAI's ``sliding_window_inference`` (written here without MONAI): windows of
``roi_size`` tile every spatial axis with stride ``int(roi · (1 - overlap))`` (at least 1; the
whole axis when it equals the roi), the last window is placed flush with the end of the axis; a
volume smaller than the roi along an axis is padded with ``pad_value`` (half before, half after)
and the output cropped back; overlapping window outputs are averaged with per-voxel weights
(``"constant"``: all ones, ``"gaussian"``: a centred Gaussian with σ = 0.125 · roi per axis).

Gradients are not switched off here: call it under ``torch.no_grad()`` / ``torch.inference_mode()``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

SIGMA_SCALE = 0.125  # MONAI's default for the Gaussian blend


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis of length ``size >= roi``.

    Stride ``max(int(roi · (1 - overlap)), 1)``; the last start is ``size - roi`` so the final
    window ends flush with the axis.
    """
    if roi > size:
        raise ValueError(f"roi {roi} larger than the (padded) axis {size}")
    if roi == size:
        return [0]
    stride = max(int(roi * (1.0 - overlap)), 1)
    n = math.ceil((size - roi) / stride) + 1
    return sorted({min(i * stride, size - roi) for i in range(n)})


def blend_weights(
    roi_size: Sequence[int],
    mode: Literal["constant", "gaussian"],
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Per-voxel weights ``(X, Y, Z)`` of one window for ``mode`` (strictly positive)."""
    if mode == "constant":
        return torch.ones(tuple(roi_size), device=device, dtype=dtype)
    if mode != "gaussian":
        raise ValueError(f"blend must be 'constant' or 'gaussian', got {mode!r}")
    w = torch.ones((), dtype=torch.float64)
    for r in roi_size:
        sigma = max(SIGMA_SCALE * r, 1e-3)
        i = torch.arange(r, dtype=torch.float64) - (r - 1) / 2.0
        w = w[..., None] * torch.exp(-0.5 * (i / sigma) ** 2)
    w = w / w.max()
    return w.clamp_min(1e-6).to(device=device, dtype=dtype)  # never 0: every voxel gets a weight


def sliding_window_inference(
    volume: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    blend: Literal["constant", "gaussian"] = "constant",
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Run ``predictor`` on overlapping ``roi_size`` windows and stitch the outputs.

    Args:
        volume: ``(N, C, X, Y, Z)`` input.
        roi_size: ``(x, y, z)`` window size the predictor expects.
        predictor: maps ``(B, C, x, y, z)`` → ``(B, C_out, x, y, z)`` (same spatial size).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        sw_batch_size: windows per predictor call (drawn across the whole batch ``N``).
        blend: ``"constant"`` (plain average) or ``"gaussian"`` (centre-weighted average).
        pad_value: fill value for volumes smaller than the roi.

    Returns:
        ``(N, C_out, X, Y, Z)`` float tensor on ``volume``'s device.

    Raises:
        ValueError: bad shapes or arguments, or a predictor output of another spatial size.
    """
    if volume.ndim != 5:
        raise ValueError(f"volume must be (N, C, X, Y, Z), got shape {tuple(volume.shape)}")
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be three positive ints, got {tuple(roi_size)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    n, _, *spatial = volume.shape

    # pad axes shorter than the roi: half before, the rest after (F.pad lists the last axis first)
    pad_lo = [max(r - s, 0) // 2 for r, s in zip(roi, spatial, strict=True)]
    pad_hi = [max(r - s, 0) - lo for r, s, lo in zip(roi, spatial, pad_lo, strict=True)]
    if any(pad_lo) or any(pad_hi):
        pads = [p for lo, hi in zip(pad_lo[::-1], pad_hi[::-1], strict=True) for p in (lo, hi)]
        volume = F.pad(volume, pads, mode="constant", value=pad_value)
    padded = volume.shape[2:]

    starts = list(
        itertools.product(*(window_starts(s, r, overlap) for s, r in zip(padded, roi, strict=True)))
    )
    jobs = [(b, st) for b in range(n) for st in starts]  # every window of every sample
    weights = None
    out = count = None
    for k in range(0, len(jobs), sw_batch_size):
        chunk = jobs[k : k + sw_batch_size]
        windows = torch.stack([_window(volume[b], st, roi) for b, st in chunk])
        pred = predictor(windows)
        if pred.ndim != 5 or tuple(pred.shape[2:]) != roi or pred.shape[0] != len(chunk):
            raise ValueError(
                f"predictor returned shape {tuple(pred.shape)} for input {tuple(windows.shape)}; "
                "expected (B, C_out) + roi_size"
            )
        if out is None:
            dtype = pred.dtype if pred.is_floating_point() else torch.float32
            out = torch.zeros((n, pred.shape[1], *padded), device=volume.device, dtype=dtype)
            count = torch.zeros((1, 1, *padded), device=volume.device, dtype=dtype)
            weights = blend_weights(roi, blend, device=volume.device, dtype=dtype)
        pred = pred.to(device=volume.device, dtype=out.dtype)
        for (b, st), p in zip(chunk, pred, strict=True):
            sl = tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True))
            out[(b, slice(None), *sl)] += p * weights
            if b == 0:  # every sample has the same windows: count once
                count[(0, 0, *sl)] += weights
    out = out / count
    crop = tuple(slice(lo, lo + s) for lo, s in zip(pad_lo, spatial, strict=True))
    return out[(slice(None), slice(None), *crop)]


def _window(x: torch.Tensor, start: Sequence[int], roi: Sequence[int]) -> torch.Tensor:
    """``x[:, s0:s0+r0, s1:s1+r1, s2:s2+r2]`` of a ``(C, X, Y, Z)`` tensor."""
    return x[(slice(None), *(slice(s, s + r) for s, r in zip(start, roi, strict=True)))]
