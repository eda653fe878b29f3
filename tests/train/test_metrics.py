"""Overlap metrics, the soft Dice loss and the rank-based ROC AUC against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.metrics import average_ranks, dice, iou, roc_auc, soft_dice_loss


def masks():
    """Two samples of 6 voxels.

    sample 0: P = {0,1,2}, T = {1,2,3}  → |P∩T| = 2, |P|+|T| = 6, |P∪T| = 4
              Dice = 4/6 = 2/3, IoU = 2/4 = 1/2
    sample 1: P = {0},     T = {0,1,2,3} → |P∩T| = 1, |P|+|T| = 5, |P∪T| = 4
              Dice = 2/5, IoU = 1/4
    pooled:   |P∩T| = 3, |P|+|T| = 11, |P∪T| = 8 → Dice = 6/11, IoU = 3/8
    """
    p = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool)
    t = np.array([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]], bool)
    return p, t


def test_dice_iou_hand_values():
    p, t = masks()
    np.testing.assert_allclose(dice(p, t, reduction="none"), [2 / 3, 2 / 5])
    np.testing.assert_allclose(iou(p, t, reduction="none"), [1 / 2, 1 / 4])
    assert dice(p, t) == pytest.approx((2 / 3 + 2 / 5) / 2)
    assert iou(p, t) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert isinstance(dice(p, t), float) and dice(p, t).mean() == dice(p, t)  # np.float64
    assert dice(p, t, reduction="global") == pytest.approx(6 / 11)
    assert iou(p, t, reduction="global") == pytest.approx(3 / 8)


def test_dice_iou_accept_tensors_probabilities_and_extra_dims():
    p, t = masks()
    probs = torch.tensor(np.where(p, 0.9, 0.2), dtype=torch.float32).reshape(2, 1, 2, 3)
    target = torch.tensor(t, dtype=torch.float32).reshape(2, 1, 2, 3)
    np.testing.assert_allclose(dice(probs, target, reduction="none"), [2 / 3, 2 / 5])
    np.testing.assert_allclose(iou(probs, target, reduction="none"), [1 / 2, 1 / 4])
    # a probability exactly at the threshold is background
    assert dice(np.array([[0.5]]), np.array([[1.0]])) == 0.0


def test_empty_cases():
    empty = np.zeros((1, 4), bool)
    full = np.ones((1, 4), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0  # nothing there, nothing said
    assert dice(full, empty) == 0.0 and iou(empty, full) == 0.0
    # the empty-empty sample counts as 1 inside a batch mean: (1 + 0) / 2
    assert dice(np.r_[empty, full], np.r_[empty, empty]) == 0.5
    assert iou(np.r_[empty, empty], np.r_[empty, empty], reduction="global") == 1.0


def test_eps_smoothing():
    p, t = masks()
    # sample 0 with eps 1: (4 + 1) / (6 + 1)
    assert dice(p[:1], t[:1], eps=1.0) == pytest.approx(5 / 7)
    assert iou(p[:1], t[:1], eps=1.0) == pytest.approx(3 / 5)


def test_shape_and_reduction_errors():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((1, 3)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="reduction"):
        iou(np.zeros((1, 3)), np.zeros((1, 3)), reduction="sum")


def test_soft_dice_loss_hand_values():
    # p = [0.5, 1, 0, 0.5], t = [1, 1, 0, 0]: Σpt = 1.5, Σp = 2, Σt = 2
    # smooth 1: 1 - (3 + 1) / (4 + 1) = 0.2
    p = torch.tensor([[0.5, 1.0, 0.0, 0.5]])
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert soft_dice_loss(p, t).item() == pytest.approx(0.2)
    assert soft_dice_loss(p, t, smooth=0.0).item() == pytest.approx(1 - 3 / 4)
    # empty prediction and target: loss 0 thanks to smooth
    z = torch.zeros(2, 1, 2, 2, 2)
    assert soft_dice_loss(z, z).item() == 0.0
    # global pools the batch; mean averages per-sample losses
    p2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # global: Σpt=1, Σp=1, Σt=2 → 1 - 3/4; mean: s0 = 1 - 3/3 = 0, s1 = 1 - 1/2 → 0.25
    assert soft_dice_loss(p2, t2).item() == pytest.approx(0.25)
    assert soft_dice_loss(p2, t2, reduction="mean").item() == pytest.approx(0.25)
    p3 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # global: Σpt=1, Σp=2, Σt=2 → 1 - 3/5 = 0.4; mean: s0 = 1 - 3/4, s1 = 1 - 1/2 → 0.375
    assert soft_dice_loss(p3, t2).item() == pytest.approx(0.4)
    assert soft_dice_loss(p3, t2, reduction="mean").item() == pytest.approx(0.375)


def test_soft_dice_loss_gradient_flows():
    p = torch.rand(2, 1, 3, 3, 3, requires_grad=True)
    t = (torch.rand(2, 1, 3, 3, 3) > 0.5).float()
    soft_dice_loss(p, t).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_average_ranks_ties():
    # sorted: 1 (rank 1), 2, 2 (ranks 2,3 → 2.5), 5 (rank 4)
    np.testing.assert_array_equal(average_ranks([5, 2, 1, 2]), [4, 2.5, 1, 2.5])


def test_roc_auc_hand_values():
    # positives {0.8, 0.4}, negatives {0.6, 0.2}: pairs (0.8>0.6)(0.8>0.2)(0.4<0.6)(0.4>0.2) → 3/4
    assert roc_auc([0.8, 0.6, 0.4, 0.2], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0
    assert roc_auc([0.9, 0.1], [0, 1]) == 0.0


def test_roc_auc_ties():
    # positives {0.5, 0.7}, negatives {0.5, 0.1}:
    # (0.5 vs 0.5) tie = 1/2, (0.5 > 0.1) = 1, (0.7 > 0.5) = 1, (0.7 > 0.1) = 1 → 3.5 / 4
    assert roc_auc(np.array([0.5, 0.5, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(0.875)
    # every score equal: chance
    assert roc_auc([0.3] * 5, [1, 0, 1, 0, 0]) == pytest.approx(0.5)


def test_roc_auc_matches_pair_count_on_random_data():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    y = rng.integers(0, 2, 40)
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    expected = pairs / (len(pos) * len(neg))
    assert roc_auc(torch.tensor(s), torch.tensor(y)) == pytest.approx(expected)


def test_roc_auc_degenerate():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="labels"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0.1, float("nan")], [0, 1])
