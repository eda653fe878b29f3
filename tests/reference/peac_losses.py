"""PEAC's losses restated from docs/METHODS.md §3.4 (the single-node script), plain torch.

Published behaviour restated (jlianglab/PEAC ``global_local_popar_swin.py``, described in
docs/METHODS.md §3.3-3.4, not copied):

* ``L_order = CE(o1s [B*196, 196], perm1.flatten())``: every token classifies its original index;
* ``L_restore = MSE(r1s, clean ordered crop1)``;
* ``L_global = MSE(g1s, g2t) + MSE(g2s, g1t)`` on L2-normalised (dim 1) embeddings;
* ``L_local = 0.5 [MSE(l1s[unshuffled][mask1], l2t[unshuffled][mask2]) + MSE(l1t[..][mask1],
  l2s[..][mask2])]``, 0 if every sample is shuffled, with ``mask1`` / ``mask2`` boolean
  ``w x w`` masks of the overlap cells flattened row-major (``get_index``); the release fills
  mask rows from the y (column-offset) range and columns from the x (row-offset) range;
* ``L = L_order + L_restore + 1e5 L_global + L_local``.
"""

from __future__ import annotations

import math

import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``nn.MSELoss()``: the mean of the squared differences over every element."""
    return ((a.double() - b.double()) ** 2).sum() / a.numel()


def l2_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` for (B, D): each row divided by its Euclidean norm."""
    rows = []
    for row in x.double():
        norm = math.sqrt(sum(float(v) ** 2 for v in row))
        rows.append(row / max(norm, 1e-12))
    return torch.stack(rows)


def global_loss(g1s, g2t, g2s, g1t) -> torch.Tensor:
    n = l2_normalize_rows
    return mse(n(g1s), n(g2t)) + mse(n(g2s), n(g1t))


def order_loss(logits: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Mean over every (sample, token) of -log softmax(logits)[target], target = perm[b, j]."""
    b, n, _ = logits.shape
    total = 0.0
    for i in range(b):
        for j in range(n):
            row = logits[i, j].double()
            log_z = math.log(sum(math.exp(float(v - row.max())) for v in row)) + float(row.max())
            total += log_z - float(row[int(perm[i, j])])
    return torch.tensor(total / (b * n), dtype=torch.float64)


def restore_loss(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return mse(restored, clean)


def overlap_masks(box1, box2, w: int, released: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ``w x w`` boolean overlap masks of crops at ``(x1, y1)`` and ``(x2, y2)``.

    x is the row offset of the crop (its first array axis), y the column offset. Correct masks
    set rows from the x overlap and columns from the y overlap; the released ``get_index`` sets
    rows from the y overlap and columns from the x overlap (``released=True``).
    """
    (x1, y1), (x2, y2) = (int(v) for v in box1), (int(v) for v in box2)
    x_lo, x_hi = max(x1, x2), min(x1, x2) + w
    y_lo, y_hi = max(y1, y2), min(y1, y2) + w
    masks = []
    for x, y in ((x1, y1), (x2, y2)):
        mask = torch.zeros(w, w, dtype=torch.bool)
        if released:
            mask[y_lo - y : y_hi - y, x_lo - x : x_hi - x] = True
        else:
            mask[x_lo - x : x_hi - x, y_lo - y : y_hi - y] = True
        masks.append(mask.flatten())
    return masks[0], masks[1]


def local_loss(l1s, l2t, l1t, l2s, box1, box2, shuffled, released=False) -> torch.Tensor:
    """0.5 [MSE(l1s, l2t) + MSE(l1t, l2s)] over the masked tokens of the unshuffled samples."""
    b, w, _, d = l1s.shape
    kept = [i for i in range(b) if not bool(shuffled[i])]
    if not kept:
        return torch.tensor(0.0, dtype=torch.float64)
    terms = []
    for first, second in ((l1s, l2t), (l1t, l2s)):
        a, z = [], []
        for i in kept:
            m1, m2 = overlap_masks(box1[i], box2[i], w, released)
            a.append(first[i].reshape(w * w, d)[m1])
            z.append(second[i].reshape(w * w, d)[m2])
        terms.append(mse(torch.cat(a), torch.cat(z)))
    return 0.5 * (terms[0] + terms[1])


def total_loss(order, restore, global_, local, global_weight=1e5, local_weight=1.0):
    return order + restore + global_weight * global_ + local_weight * local
