"""PEAC as a :class:`~train.method.Method`: POPAR restoration + global/local consistency.

PEAC: Zhou, Luo, Pang, Ding, Gotway, Liang, "Learning Anatomically Consistent Embedding for Chest
Radiography", BMVC 2023 (oral), arXiv:2312.00335; official code https://github.com/jlianglab/PEAC
(``global_local_popar_swin.py``, the single-node script). Written from docs/METHODS.md §3.

One step, per batch of loaded squares (``B, 1, L, L``, L = 608 for the paper):

1. grid views (:mod:`train.peac.views`): jitter, then crop 1 and crop 2 of ``window`` cells at
   cell offsets ``box1``, ``box2``;
2. POPAR branch per sample: with p ``popar.p_shuffle`` crop 1's cells are shuffled (``perm1`` a
   random permutation, applied inside the model), otherwise it gets the Genesis-2D appearance
   distortion (``perm1`` = identity); crop 2 is always clean;
3. grey → 3 channels, ``(x - 0.5056) / 0.252``; the restoration target is the clean, ordered
   crop 1 in this normalised space (the release normalises its ``gt_patch1`` with the same
   transform as the inputs);
4. student(crop1, perm1), teacher(crop2), student(crop2), teacher(crop1, perm1) and the losses of
   :mod:`train.peac.losses`; after every optimiser step the teacher takes
   ``teacher <- m teacher + (1 - m) student`` with ``m`` a cosine from 0.999 to 1 over all
   training iterations (docs/METHODS.md §3.5).

The two student passes run as one batch ``[crop1; crop2]`` and the two teacher passes as
``[crop2; crop1]`` (one DDP forward per step; the backbones normalise per token with LayerNorm,
so batching changes no value of the single-node losses, only stochastic-depth draws).
Validation (``ctx=None``) computes the same total loss with the engine's fixed per-batch
generator, the model in eval mode; ``export_model`` gives the teacher, which PEAC releases.
``val_metrics`` adds the collapse/correspondence diagnostics of :mod:`train.peac.diagnostics`.

Two options depart from the release, for the CPU preset ``configs/peac/tiny_conv.yaml`` (issue
#18): ``popar.order_on_unshuffled: false`` (order scored on shuffled crops only) and
``losses.local_kind: infonce`` (:func:`train.peac.losses.local_infonce` instead of the MSE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kernels.genesis2d import genesis2d
from models.peac import PEAC, PEACModel

from ..cards import peac_card
from ..engine import step_generator
from ..method import Method
from ..teacher import StudentTeacher, cosine_value, unwrap
from ..views2d import normalize
from .config import PEACConfig
from .data import build_source
from .diagnostics import diagnostics
from .losses import (
    global_loss,
    local_infonce,
    local_loss,
    order_loss,
    restore_loss,
    total_loss,
)
from .views import grid_views


class PEACPair(StudentTeacher):
    """Student and EMA teacher of PEAC; each may see its own view permutation."""

    def forward(self, x_student, perm_student, x_teacher, perm_teacher):
        """Student (order, restored, global, local) and teacher (global, local) as tuples."""
        s = self.student(x_student, perm_student)
        with torch.no_grad():
            t = self.teacher(x_teacher, perm_teacher)
        return (s.order, s.restored, s.global_, s.local), (t.global_, t.local)


@dataclass
class PEACBatch:
    """The network inputs and targets of one step (see :meth:`PEACMethod.make_views`).

    Attributes:
        x1: (B, 3, S, S) normalised crop 1, appearance-distorted where not shuffled (the model
            shuffles the others with ``perm1``).
        target1: (B, 3, S, S) normalised clean, ordered crop 1 (the restoration target).
        x2: (B, 3, S, S) normalised clean crop 2.
        perm1: (B, g*g) int64 on the images' device; identity where not shuffled.
        shuffled: (B,) bool (CPU): crop 1's cells were shuffled.
        box1, box2: (B, 2) int64 (CPU) ``(row0, col0)`` of the crops in the shared grid.
    """

    x1: torch.Tensor
    target1: torch.Tensor
    x2: torch.Tensor
    perm1: torch.Tensor
    shuffled: torch.Tensor
    box1: torch.Tensor
    box2: torch.Tensor


class PEACMethod(Method):
    DIAG_IMAGES = 16  # validation images the per-epoch diagnostics look at
    # ddp_kwargs stays empty: every student parameter gets a gradient in every step (the local
    # term keeps its graph even when all samples are shuffled), so DDP needs no unused-parameter
    # search.

    def __init__(self, cfg: PEACConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self._args: dict | None = None

    # -- engine interface ------------------------------------------------------------------------
    def model_kwargs(self) -> dict:
        m = self.cfg.model
        return {
            "backbone": m.backbone,
            "img_size": m.img_size,
            "in_chans": 3,
            "global_dims": list(m.global_dims),
            "local_dims": list(m.local_dims),
            "order_head": True,
            "decoder": True,
        }

    def build_model(self):
        model = PEACModel(**self.model_kwargs())
        if model.grid != self.cfg.views.window or model.cell != self.cfg.cell:
            raise ValueError(
                f"{self.cfg.model.backbone} at {self.cfg.model.img_size} px gives "
                f"{model.grid} x {model.grid} tokens of {model.cell} px, but the views use "
                f"windows of {self.cfg.views.window} cells of {self.cfg.cell} px: set "
                f"views.window={model.grid}"
            )
        self._args = model.model_args
        return PEACPair(model), PEAC.model_name, self._args

    def inference_card(self) -> dict:
        return peac_card(self.cfg.model.img_size)

    def export_model(self, model):
        teacher = unwrap(model).teacher
        return teacher, PEAC.model_name, teacher.model_args

    def datasets(self):
        data, loop = self.cfg.data, self.cfg.loop
        cache = data.cache_dir or str(self.run_dir / "cache")
        size = self.cfg.load_size
        train = build_source(data, "train", size, cache, loop.progress)
        val = build_source(data, "val", size, cache, loop.progress, limit=data.val_limit)
        return train, val

    def momentum(self, global_step: int, total_steps: int) -> float:
        s = self.cfg.schedule
        return cosine_value(s.momentum_start, s.momentum_end, total_steps, global_step)

    def val_metrics(self, net, val_set, device) -> dict:
        """Collapse and correspondence diagnostics (:mod:`train.peac.diagnostics`) on the
        first ``DIAG_IMAGES`` validation images with fixed views, logged with every epoch."""
        n = min(self.DIAG_IMAGES, len(val_set))
        images = val_set.batch(list(range(n)))
        images = (images[0] if isinstance(images, tuple) else images).to(device)
        gen = step_generator(self.cfg.loop.seed, -2, 0)
        return diagnostics(self, unwrap(net), images, gen)

    def after_step(self, model, ctx) -> None:
        total = ctx.epochs * ctx.steps_in_phase  # iterations of the whole run
        unwrap(model).ema_update(self.momentum(ctx.global_step, total))

    def loss(self, model, batch, generator: torch.Generator, ctx) -> torch.Tensor:
        """PEAC's total loss of one batch; training (ctx given) and validation (ctx None) alike."""
        parts = self.loss_parts(model, batch, generator)
        w = self.cfg.losses
        return total_loss(
            parts["order"],
            parts["restore"],
            parts["global"],
            parts["local"],
            order_weight=w.order_weight,
            restore_weight=w.restore_weight,
            global_weight=w.global_weight,
            local_weight=w.local_weight,
        )

    # -- the step ----------------------------------------------------------------------------------
    def make_views(self, images: torch.Tensor, generator: torch.Generator) -> PEACBatch:
        """Grid views, the POPAR branch and normalisation of a batch (B, 1, L, L) in [0, 1].

        Randomness, in this order, from ``generator``: jitter and offsets, the branch of each
        sample, a permutation for every sample, the Genesis-2D parameters of the distorted ones.
        """
        cfg = self.cfg
        v = grid_views(
            images.float(),
            generator,
            cell=cfg.cell,
            window=cfg.views.window,
            max_offset=cfg.views.max_offset,
        )
        b, n = images.shape[0], cfg.views.window**2
        shuffled = torch.rand(b, generator=generator) < cfg.popar.p_shuffle
        perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(b)])
        perm1 = torch.where(shuffled[:, None], perms, torch.arange(n).expand(b, n))
        clean1 = v.crop1
        x1 = clean1
        distort = torch.nonzero(~shuffled).flatten()
        if distort.numel():
            # Genesis-2D moves whole pixels and paints one noise value across channels, so the
            # one-channel film distorted then repeated equals distorting the 3-channel copy.
            pick = distort.to(images.device)
            x1 = clean1.index_copy(0, pick, genesis2d(clean1[pick], cfg.popar.genesis2d, generator))
        mean, std = (cfg.views.mean,) * 3, (cfg.views.std,) * 3
        return PEACBatch(
            x1=normalize(x1, mean, std),
            target1=normalize(clean1, mean, std),
            x2=normalize(v.crop2, mean, std),
            perm1=perm1.to(images.device),
            shuffled=shuffled,
            box1=v.box1,
            box2=v.box2,
        )

    def loss_parts(self, model, images: torch.Tensor, generator) -> dict[str, torch.Tensor]:
        """The four unweighted losses of one batch (see :mod:`train.peac.losses`)."""
        p = self.make_views(images, generator)
        b = p.x1.shape[0]
        ident = torch.arange(p.perm1.shape[1], device=p.perm1.device).expand(b, -1)
        (order, restored, g_s, l_s), (g_t, l_t) = model(
            torch.cat([p.x1, p.x2]),
            torch.cat([p.perm1, ident]),
            torch.cat([p.x2, p.x1]),
            torch.cat([ident, p.perm1]),
        )
        g1s, g2s, l1s, l2s = g_s[:b], g_s[b:], l_s[:b], l_s[b:]
        g2t, g1t, l2t, l1t = g_t[:b], g_t[b:], l_t[:b], l_t[b:]
        return {
            "order": self.order_term(order[:b], p),
            "restore": restore_loss(restored[:b], p.target1),
            "global": global_loss(g1s, g2t, g2s, g1t),
            "local": self.local_term(l1s, l2t, l1t, l2s, p),
        }

    def order_term(self, logits: torch.Tensor, p: PEACBatch) -> torch.Tensor:
        """POPAR's order loss, on every sample (the release) or on shuffled ones only."""
        if self.cfg.popar.order_on_unshuffled:
            return order_loss(logits, p.perm1)
        rows = torch.nonzero(p.shuffled).flatten()
        if rows.numel() == 0:  # keep the graph (DDP): zero loss, zero gradients
            return logits.float().sum() * 0.0
        pick = rows.to(logits.device)
        return order_loss(logits[pick], p.perm1[pick])

    def local_term(self, l1s, l2t, l1t, l2s, p: PEACBatch) -> torch.Tensor:
        """The configured local loss (PEAC's MSE, or the dense InfoNCE option)."""
        w = self.cfg.losses
        if w.local_kind == "infonce":
            return local_infonce(
                l1s, l2t, l1t, l2s, p.box1, p.box2, ~p.shuffled, w.local_temperature, w.bug_compat
            )
        return local_loss(l1s, l2t, l1t, l2s, p.box1, p.box2, ~p.shuffled, w.bug_compat)
