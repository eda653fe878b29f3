"""Ark as a :class:`~train.method.Method`: one backbone, one head per dataset, an EMA teacher.

Each round visits the datasets cyclically, one full epoch each (the engine's *phases*). In the
epoch of dataset i (entry ``it = round * n_datasets + i`` of the schedules):

    student sees the photometrically changed view, the teacher the same geometry without it;
    loss = (1 - c[it]) * BCE(student head i, y) + c[it] * MSE(student embedding, teacher embedding)

and after the epoch the teacher takes ``teacher <- m[it] teacher + (1 - m[it]) student``, with m a
cosine from 0.9 to 1 and c from 0 to 0.5 over ``rounds * n_datasets`` entries
(docs/METHODS.md §2.3).

Two deliberate differences from the release, both documented in README: the learning-rate
schedule is stepped once per round with the round index (the release passes the validation loss
where timm expects the epoch, so its schedule follows the loss value), and labels a dataset marks
unknown may be masked out of the loss instead of trained as negatives (``missing: mask``).

Validation scores the *teacher* (the model Ark releases and export reads): the mean BCE over every
dataset's validation split is the engine's val loss, and per-dataset AUROC is logged beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from models.ark import ARK, ArkModel

from ..cards import ark_card
from ..method import Method
from ..teacher import StudentTeacher, cosine_value, unwrap
from ..views2d import ark_views, normalize, resize_center_crop
from .config import ArkConfig
from .data import build_sources, eval_resize
from .evaluate import score_sources


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the labels whose mask is 1 (masked labels give no gradient).

    With an all-ones mask this is ``BCEWithLogitsLoss()`` (mean over every label), as released.
    """
    per_label = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (per_label * mask).sum() / mask.sum().clamp(min=1.0)


class ArkMethod(Method):
    ddp_kwargs = {"find_unused_parameters": True}  # only one head is used per step

    def __init__(self, cfg: ArkConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self._sources = None

    # -- engine interface ------------------------------------------------------------------------
    def model_args(self) -> dict:
        heads = self.head_sizes()
        return {
            "backbone": self.cfg.model.backbone,
            "img_size": self.cfg.views.size,
            "embed_dim": self.cfg.model.embed_dim,
            "projector": self.cfg.model.projector,
            "head_sizes": heads,
            "head_names": [d.head_name for d in self.cfg.data.datasets],
        }

    def build_model(self):
        args = self.model_args()
        return StudentTeacher(ArkModel(**args)), ARK.model_name, args

    def export_model(self, model):
        return unwrap(model).teacher, ARK.model_name, self.model_args()

    def sources(self):
        if self._sources is None:
            cache = self.cfg.data.cache_dir or str(self.run_dir / "cache")
            self._sources = build_sources(self.cfg.data, cache, show=self.cfg.loop.progress)
        return self._sources

    def inference_card(self) -> dict:
        return ark_card(self.cfg.views.size, self.sources()["train"])

    def head_sizes(self) -> list[int]:
        return [s.num_classes for s in self.sources()["train"]]

    def datasets(self):
        sources = self.sources()
        return list(sources["train"]), ValSet(sources["val"])

    def schedule_index(self, epoch: int, phase: int) -> int:
        return epoch * len(self.cfg.data.datasets) + phase

    def schedule_length(self) -> int:
        return self.cfg.loop.epochs * len(self.cfg.data.datasets)

    def consistency(self, it: int) -> float:
        s = self.cfg.schedule
        return cosine_value(s.consistency_start, s.consistency_end, self.schedule_length(), it)

    def momentum(self, it: int) -> float:
        s = self.cfg.schedule
        return cosine_value(s.momentum_start, s.momentum_end, self.schedule_length(), it)

    def loss(self, model, batch, generator: torch.Generator, ctx) -> torch.Tensor:
        if ctx is None:
            return self.val_loss(model, batch)
        images, target, mask, head = batch
        v = self.cfg.views
        student_view, teacher_view = ark_views(
            images,
            generator,
            out_size=v.size,
            scale=v.scale,
            rotate=v.rotate,
            p=v.photometric_p,
        )
        i = int(head[0])
        (emb_s, logits_s), (emb_t, _) = model(student_view, teacher_view, head=i)
        c = self.consistency(self.schedule_index(ctx.epoch, ctx.phase))
        cls = masked_bce(logits_s, target, mask)
        return (1.0 - c) * cls + c * F.mse_loss(emb_s.float(), emb_t.float())

    def after_phase(self, model, ctx) -> None:
        unwrap(model).ema_update(self.momentum(self.schedule_index(ctx.epoch, ctx.phase)))

    # -- validation ------------------------------------------------------------------------------
    def val_loss(self, model, groups) -> torch.Tensor:
        teacher = unwrap(model).teacher
        total, count = 0.0, 0
        for images, target, mask, head in groups:
            size = self.cfg.views.size
            x = normalize(resize_center_crop(images, eval_resize(size), size))
            _, logits = teacher(x, head=int(head[0]))
            total = total + masked_bce(logits, target, mask) * len(images)
            count += len(images)
        return total / max(count, 1)

    def val_metrics(self, net, val_set, device) -> dict:
        teacher = unwrap(net).teacher
        scores = score_sources(
            teacher, val_set.sources, device, size=self.cfg.views.size, ten_crop=False
        )
        out = {f"auroc/{name}": r["mean_auroc"] for name, r in scores["datasets"].items()}
        out["auroc_mean"] = scores["mean_auroc"]
        return out


class ValSet:
    """All datasets' validation items; a batch is a list of per-dataset groups."""

    def __init__(self, sources) -> None:
        self.sources = list(sources)
        self.index = [(s, i) for s, src in enumerate(self.sources) for i in range(len(src))]

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, indices: list[int]):
        groups: dict[int, list[int]] = {}
        for k in indices:
            s, i = self.index[k]
            groups.setdefault(s, []).append(i)
        return [self.sources[s].batch(items) for s, items in groups.items()]
