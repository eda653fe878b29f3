"""PEAC's four losses as small pure functions (docs/METHODS.md §3.4, the single-node script).

With student ``s`` and EMA teacher ``t``, crop 1 (order- or appearance-distorted, permutation
``perm1``; identity for the appearance branch) and crop 2 (clean, identity order)::

    o1s, r1s, g1s, l1s = s(crop1, perm1);   g2t, l2t = t(crop2)
    g2s, l2s = s(crop2);                    g1t, l1t = t(crop1, perm1)
    L_order   = CE(o1s as (B*N, N), perm1.flatten())
    L_restore = MSE(r1s, clean ordered crop1)
    L_global  = MSE(n(g1s), n(g2t)) + MSE(n(g2s), n(g1t)),  n = L2-normalise along the features
    L_local   = 0.5 [M(l1s, l2t) + M(l1t, l2s)]  over the samples whose order was NOT shuffled
    L = L_order + L_restore + 1e5 L_global + L_local

``M`` is the MSE over the tokens of the cells the two crops share
(:func:`kernels.grid.match_patches`). Local embeddings are not normalised (as the release trains).
Every loss is computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.grid import match_patches, overlap_indices


def global_loss(
    g1s: torch.Tensor, g2t: torch.Tensor, g2s: torch.Tensor, g1t: torch.Tensor
) -> torch.Tensor:
    """Symmetrised global consistency: MSE(n(g1s), n(g2t)) + MSE(n(g2s), n(g1t)).

    Args:
        g1s, g2t, g2s, g1t: (B, D) global embeddings (student / teacher of crops 1 / 2).

    Returns:
        0-d float32; each MSE is the mean over B * D of the L2-normalised embeddings.
    """

    def n(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1)

    return F.mse_loss(n(g1s), n(g2t)) + F.mse_loss(n(g2s), n(g1t))


def order_loss(logits: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every token's original position.

    Args:
        logits: (B, N, N) order logits of the student on crop 1 (token j, class k = "this
            token's content came from position k").
        perm: (B, N) int64 permutation applied (token j shows cell ``perm[b, j]``), the target.

    Returns:
        0-d float32, the mean over the B * N tokens.
    """
    n = logits.shape[-1]
    return F.cross_entropy(logits.float().reshape(-1, n), perm.reshape(-1).to(logits.device))


def restore_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the restored image (B, C, H, W) and the clean, ordered crop 1 (same shape)."""
    return F.mse_loss(restored.float(), target.float())


def local_loss(
    l1s: torch.Tensor,
    l2t: torch.Tensor,
    l1t: torch.Tensor,
    l2s: torch.Tensor,
    box1: torch.Tensor,
    box2: torch.Tensor,
    keep: torch.Tensor,
    bug_compat: bool = False,
) -> torch.Tensor:
    """Symmetrised local consistency over the matched cells of the kept (unshuffled) samples.

    Args:
        l1s, l2t, l1t, l2s: (B, g, g, D) per-token embeddings.
        box1, box2: (B, 2) int64 ``(row0, col0)`` of each crop in the shared grid (any device).
        keep: (B,) bool, True where crop 1's order was not shuffled (CPU: no device sync).
        bug_compat: the release's row/column transposition (see :mod:`train.peac.views`).

    Returns:
        0-d float32 ``0.5 * (M(l1s, l2t) + M(l1t, l2s))`` over the kept samples, where ``M`` is one
        MSE over their concatenated matched tokens; 0 (with zero gradients) when none is kept.
    """
    idx = torch.nonzero(keep.cpu()).flatten()
    if idx.numel() == 0:  # all shuffled: no local term, but keep the graph (DDP, zero grads)
        return (l1s.sum() + l2s.sum()).float() * 0.0
    dev = l1s.device
    pick = idx.to(dev)
    b1, b2 = box1.cpu()[idx].to(dev), box2.cpu()[idx].to(dev)
    a = match_patches(l1s[pick], l2t[pick], b1, b2, bug_compat)
    z = match_patches(l1t[pick], l2s[pick], b1, b2, bug_compat)
    return 0.5 * (a + z)


def dense_infonce(
    q: torch.Tensor,
    k: torch.Tensor,
    box1: torch.Tensor,
    box2: torch.Tensor,
    temperature: float,
    bug_compat: bool = False,
) -> torch.Tensor:
    """Dense InfoNCE: each matched token of view 1 must pick its cell among *all* cells of the
    same image's view 2 (cosine / ``temperature``, cross-entropy).

    Not PEAC's loss (PEAC: the MSE of :func:`local_loss`); the option of the CPU presets, whose
    MSE collapsed (issue #18). Negatives come only from the same image, so the loss asks for
    tokens that tell the cells of one film apart, never for different patients to differ.

    Args:
        q: (B, g, g, D) view-1 embeddings; k: (B, g, g, D) view-2 embeddings (the target side).
        box1, box2: (B, 2) int64 crop boxes (any device).

    Returns:
        0-d float32, the mean over every matched token of the batch.
    """
    b, h, w, d = q.shape
    qn = F.normalize(q.float().reshape(b, h * w, d), dim=-1)
    kn = F.normalize(k.float().reshape(b, h * w, d), dim=-1)
    rows, targets = [], []
    for i in range(b):
        i1, i2 = overlap_indices(box1[i].cpu(), box2[i].cpu(), (h, w), bug_compat)
        dev = q.device
        rows.append(qn[i, i1.to(dev)] @ kn[i].T)  # (K, g²)
        targets.append(i2.to(dev))
    if not rows:
        return (q.sum() + k.sum()).float() * 0.0
    return F.cross_entropy(torch.cat(rows) / temperature, torch.cat(targets))


def local_infonce(
    l1s, l2t, l1t, l2s, box1, box2, keep, temperature: float, bug_compat: bool = False
) -> torch.Tensor:
    """:func:`dense_infonce` symmetrised like :func:`local_loss` (student view 1 → teacher view 2
    and student view 2 → teacher view 1) over the kept (unshuffled) samples."""
    idx = torch.nonzero(keep.cpu()).flatten()
    if idx.numel() == 0:
        return (l1s.sum() + l2s.sum()).float() * 0.0
    pick = idx.to(l1s.device)
    b1, b2 = box1.cpu()[idx], box2.cpu()[idx]
    a = dense_infonce(l1s[pick], l2t[pick], b1, b2, temperature, bug_compat)
    z = dense_infonce(l2s[pick], l1t[pick], b2, b1, temperature, bug_compat)
    return 0.5 * (a + z)


def total_loss(
    order: torch.Tensor,
    restore: torch.Tensor,
    global_: torch.Tensor,
    local: torch.Tensor,
    *,
    order_weight: float = 1.0,
    restore_weight: float = 1.0,
    global_weight: float = 1.0e5,
    local_weight: float = 1.0,
) -> torch.Tensor:
    """The weighted sum; the defaults are the release's (``L_local`` weight 0 gives PEAC⁻¹)."""
    return (
        order_weight * order
        + restore_weight * restore
        + global_weight * global_
        + local_weight * local
    )
