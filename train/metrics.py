"""Evaluation metrics and the Dice loss of the fine-tuning tasks (NumPy / PyTorch, no sklearn).

Overlap metrics (:func:`dice`, :func:`iou`) take binary masks ``(B, ...)`` whose first axis is the
batch; anything that is not boolean is binarised with ``> threshold`` (0.5), so 0/1 floats and
probabilities both work. Three reductions:

- ``"mean"``: the per-sample score averaged over the batch (the usual "mean Dice");
- ``"none"``: the per-sample scores, float64 ``(B,)``;
- ``"global"``: one score over all voxels of the batch pooled, as the Models Genesis notebooks
  compute their test IoU/Dice (``overlap.sum() / union.sum()`` over the whole test array).

**Empty vs empty**: a sample whose prediction and target are both empty scores 1.0 (a perfect
"nothing there" answer); an empty target with a non-empty prediction (or the reverse) scores 0.0.

:func:`roc_auc` is the exact area under the ROC curve from the Mann–Whitney U statistic, with
tied scores given their average rank (a tie between a positive and a negative counts 1/2).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Reduction = Literal["mean", "none", "global"]


def _as_bool(x, threshold: float) -> np.ndarray:
    """A NumPy bool array from a bool/number array or tensor (``> threshold`` unless bool)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if x.dtype == bool else x > threshold


def _overlap_counts(pred_mask, true_mask, threshold: float) -> tuple[np.ndarray, ...]:
    """Per-sample ``(|P ∩ T|, |P|, |T|)`` as float64 ``(B,)`` arrays."""
    p = _as_bool(pred_mask, threshold)
    t = _as_bool(true_mask, threshold)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    if p.ndim == 0:
        raise ValueError("masks need at least one (batch) dimension")
    p = p.reshape(p.shape[0], -1)
    t = t.reshape(t.shape[0], -1)
    inter = (p & t).sum(axis=1).astype(np.float64)
    return inter, p.sum(axis=1).astype(np.float64), t.sum(axis=1).astype(np.float64)


def _reduce(num: np.ndarray, den: np.ndarray, eps: float, reduction: Reduction):
    """``(num + eps) / (den + eps)`` per sample or pooled, with 0/0 defined as 1.0."""
    if reduction == "global":
        num, den = num.sum(keepdims=True), den.sum(keepdims=True)
    elif reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean', 'none' or 'global', got {reduction!r}")
    num, den = num + eps, den + eps
    safe = np.where(den > 0, den, 1.0)
    score = np.where(den > 0, num / safe, 1.0)  # both masks empty (and eps = 0): 1.0
    if reduction == "none":
        return score
    return np.float64(score.mean() if score.size else np.nan)  # a float with .mean()


def dice(
    pred_mask, true_mask, eps: float = 0.0, reduction: Reduction = "mean", threshold: float = 0.5
):
    """Dice coefficient ``2|P ∩ T| / (|P| + |T|)`` of binary masks.

    Args:
        pred_mask: ``(B, ...)`` predicted mask (bool, 0/1 or probabilities), array or tensor.
        true_mask: ``(B, ...)`` target mask, same shape.
        eps: smoothing added to numerator and denominator (0 = the exact ratio).
        reduction: ``"mean"`` (mean of per-sample Dice), ``"none"`` (``(B,)`` array) or
            ``"global"`` (all voxels pooled).
        threshold: non-bool inputs are binarised with ``> threshold``.

    Returns:
        A float (``"mean"``, ``"global"``) or a float64 ``(B,)`` array (``"none"``). A sample
        with both masks empty scores 1.0.
    """
    inter, n_p, n_t = _overlap_counts(pred_mask, true_mask, threshold)
    return _reduce(2.0 * inter, n_p + n_t, eps, reduction)


def iou(
    pred_mask, true_mask, eps: float = 0.0, reduction: Reduction = "mean", threshold: float = 0.5
):
    """Intersection over union (Jaccard) ``|P ∩ T| / |P ∪ T|`` of binary masks.

    Arguments and return value as for :func:`dice`; both masks empty scores 1.0.
    """
    inter, n_p, n_t = _overlap_counts(pred_mask, true_mask, threshold)
    return _reduce(inter, n_p + n_t - inter, eps, reduction)


def soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1.0,
    reduction: Literal["global", "mean"] = "global",
) -> torch.Tensor:
    """Differentiable soft Dice loss ``1 - (2 Σ p·t + smooth) / (Σ p + Σ t + smooth)``.

    The default ``"global"`` sums over the whole batch flattened, as Models Genesis'
    ``dice_coef_loss`` / ``torch_dice_coef_loss`` (smooth 1) do; ``"mean"`` computes the loss per
    sample and averages.

    Args:
        probs: ``(B, ...)`` probabilities in [0, 1] (after the sigmoid).
        target: ``(B, ...)`` 0/1 target, same shape.
        smooth: added to numerator and denominator (an empty target and prediction give loss 0).
        reduction: ``"global"`` or ``"mean"``.

    Returns:
        Scalar tensor.
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs shape {tuple(probs.shape)} differs from {tuple(target.shape)}")
    target = target.to(probs.dtype)
    if reduction == "global":
        p, t = probs.reshape(1, -1), target.reshape(1, -1)
    elif reduction == "mean":
        p, t = probs.reshape(probs.shape[0], -1), target.reshape(target.shape[0], -1)
    else:
        raise ValueError(f"reduction must be 'global' or 'mean', got {reduction!r}")
    inter = (p * t).sum(dim=1)
    score = (2.0 * inter + smooth) / (p.sum(dim=1) + t.sum(dim=1) + smooth)
    return 1.0 - score.mean()


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values`` (1-D), ties sharing the mean of the ranks they span."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # boundaries of runs of equal values in the sorted order
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(v.size, np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(scores, labels) -> float:
    """Exact ROC AUC: ``(R₊ - n₊(n₊ + 1)/2) / (n₊ n₋)`` with ``R₊`` the rank sum of positives.

    Equals the probability that a random positive outranks a random negative, ties counting 1/2.

    Args:
        scores: ``(N,)`` real scores (higher = more likely positive), array or tensor.
        labels: ``(N,)`` 0/1 (or bool) labels.

    Raises:
        ValueError: shapes differ, a label is not 0/1, scores are not finite, or only one class
            is present (AUC undefined).
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN/inf)")
    pos = y.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC AUC needs both classes; got {n_pos} positive and {n_neg} negative labels"
        )
    r_pos = average_ranks(s)[pos].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
