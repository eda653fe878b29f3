"""Per-epoch PEAC diagnostics: does the run learn correspondence, or collapse?

Issue #18's audit of the tiny preset found the global embeddings of different images at cosine
1.000 after two epochs, the local tokens' variation gone, and a local loss that was the same
with correct, transposed or another patient's matching. These numbers, logged to
``metrics.jsonl`` with each epoch's validation loss (``PEACMethod.val_metrics``), show that on
every run:

- ``loss_order`` / ``loss_restore`` / ``loss_global`` / ``loss_local``: the four unweighted parts
  (the local one as configured: PEAC's MSE or the InfoNCE option);
- ``order_acc_shuffled`` / ``order_acc_unshuffled``: POPAR's order head per branch (100 % on
  unshuffled crops with chance on shuffled ones is a position shortcut, not order recovery);
- ``global_cos_between_images``: mean cosine of different images' global embeddings (→ 1 is
  collapse);
- ``token_spread`` / ``local_spread``: across the tokens of one image, variance over mean squared
  norm of the backbone tokens / local embeddings (→ 0 is collapse);
- ``local_loss_correct`` / ``_transposed`` / ``_other_patient``: PEAC's local MSE with the correct
  matching, the release's row/column transposition, and another image's tokens at the same grid
  cells. Learned correspondence shows as correct clearly below the other two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.grid import match_patches

from .losses import global_loss, restore_loss


def spread(tokens: torch.Tensor) -> float:
    """``(B, g, g, D)`` → mean over images of (variance across tokens) / (mean squared norm)."""
    t = tokens.float().flatten(1, 2)  # B, N, D
    var = (t - t.mean(1, keepdim=True)).pow(2).sum(-1).mean(1)
    norm = t.pow(2).sum(-1).mean(1).clamp_min(1e-12)
    return float((var / norm).mean())


def mean_offdiag_cosine(x: torch.Tensor) -> float:
    """Mean cosine similarity between different rows of ``x`` (B, D); NaN for B < 2."""
    b = x.shape[0]
    if b < 2:
        return math.nan
    z = F.normalize(x.float(), dim=1)
    sim = z @ z.T
    return float((sim.sum() - sim.diagonal().sum()) / (b * (b - 1)))


@torch.no_grad()
def diagnostics(method, pair, images: torch.Tensor, generator: torch.Generator) -> dict:
    """The numbers of the module docstring for one batch; student and teacher in eval mode."""
    student, teacher = pair.student, pair.teacher
    modes = student.training, teacher.training
    student.eval(), teacher.eval()
    try:
        p = method.make_views(images, generator)
        s1, s2 = student(p.x1, p.perm1), student(p.x2)
        t2, t1 = teacher(p.x2), teacher(p.x1, p.perm1)
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    keep = ~p.shuffled
    out = {
        "loss_order": float(method.order_term(s1.order, p)),
        "loss_restore": float(restore_loss(s1.restored, p.target1)),
        "loss_global": float(global_loss(s1.global_, t2.global_, s2.global_, t1.global_)),
        "loss_local": float(method.local_term(s1.local, t2.local, t1.local, s2.local, p)),
    }
    hit = (s1.order.argmax(-1) == p.perm1).float().mean(1).cpu()  # per sample
    for name, rows in (("shuffled", p.shuffled), ("unshuffled", keep)):
        out[f"order_acc_{name}"] = float(hit[rows].mean()) if rows.any() else math.nan
    out["global_cos_between_images"] = mean_offdiag_cosine(s2.global_)
    out["token_spread"] = spread(s2.tokens)
    out["local_spread"] = spread(s2.local)
    idx = torch.nonzero(keep).flatten()
    if idx.numel():
        dev = s1.local.device
        k = idx.to(dev)
        b1, b2 = p.box1[idx].to(dev), p.box2[idx].to(dev)
        a, z = s1.local[k], t2.local[k]
        out["local_loss_correct"] = float(match_patches(a, z, b1, b2, False))
        out["local_loss_transposed"] = float(match_patches(a, z, b1, b2, True))
        # another image's clean crop 2 (the next one in the batch), matched at the same grid cells
        other = (idx + 1) % images.shape[0]
        o = other.to(dev)
        out["local_loss_other_patient"] = float(
            match_patches(a, t2.local[o], b1, p.box2[other].to(dev), False)
        )
    else:
        for key in ("correct", "transposed", "other_patient"):
            out[f"local_loss_{key}"] = math.nan
    return out
