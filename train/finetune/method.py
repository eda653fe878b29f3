"""Fine-tuning as a :class:`~train.method.Method`: 3D segmentation (U-Net, Dice + BCE) or 3D
classification (Genesis encoder + MLP head, BCE), from scratch or from Genesis weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.registry import build_model
from models.unet3d import GENESIS_CLASSIFIER, GENESIS_UNET

from ..cards import genesis_card
from ..method import Method
from ..metrics import dice, iou, roc_auc, soft_dice_loss
from .config import FinetuneConfig
from .init import initialise
from .tasks import build_task


class FinetuneMethod(Method):
    def __init__(self, cfg: FinetuneConfig, run_dir=None) -> None:
        self.cfg = cfg
        self.task = build_task(cfg.task.name, **cfg.task.args)
        self.init_summary = ""

    @property
    def kind(self) -> str:
        return self.task.kind

    def build_model(self):
        if self.kind == "segmentation":
            name = GENESIS_UNET.model_name
            args = {"norm": self.cfg.model.norm, "out_activation": None}
        else:
            name, args = (
                GENESIS_CLASSIFIER.model_name,
                {"n_classes": 1, "norm": self.cfg.model.norm},
            )
        model = build_model(name, **args)
        self.init_summary = initialise(model, self.cfg.model.init, self.kind)
        if self.cfg.model.freeze_encoder:
            for key, param in model.named_parameters():
                if key.startswith("down_tr"):
                    param.requires_grad_(False)
        return model, name, args

    def datasets(self):
        return self.task.train, self.task.val

    def inference_card(self) -> dict:
        task = "segment" if self.kind == "segmentation" else "classify"
        return genesis_card(
            task,
            self.task.cube_size,
            labels={"main": ["nodule"]},  # every registered task targets lung nodules
            threshold=self.cfg.eval.threshold,
            overlap=self.cfg.eval.overlap,
            blend=self.cfg.eval.blend,
            batch_norm=self.cfg.eval.batch_norm,
        )

    def loss(self, model, batch, generator: torch.Generator, ctx) -> torch.Tensor:
        x, y = batch
        logits = model(x).float()
        bce = F.binary_cross_entropy_with_logits(logits, y)
        if self.kind == "classification":
            return bce
        dice_loss = soft_dice_loss(torch.sigmoid(logits), y, smooth=1.0)
        return self.cfg.loss.dice_weight * dice_loss + self.cfg.loss.bce_weight * bce

    @torch.no_grad()
    def val_metrics(self, net, val_set, device) -> dict:
        return score_cubes(net, val_set, self.kind, self.cfg.eval.threshold, device)


@torch.no_grad()
def predict_cubes(net, cubes, device, batch_size: int = 8):
    """Sigmoid outputs and targets of every item of ``cubes`` (a task split)."""
    net.eval()
    outs, targets = [], []
    for start in range(0, len(cubes), batch_size):
        x, y = cubes.batch(list(range(start, min(start + batch_size, len(cubes)))))
        outs.append(torch.sigmoid(net(x.to(device)).float()).cpu())
        targets.append(y)
    return torch.cat(outs), torch.cat(targets)


def score_cubes(net, cubes, kind: str, threshold: float, device) -> dict:
    """Dice / IoU (segmentation) or AUC (classification) over a split's cubes."""
    probs, targets = predict_cubes(net, cubes, device)
    if kind == "classification":
        try:
            return {"auc": float(roc_auc(probs.flatten(), targets.flatten()))}
        except ValueError:  # one class only in this split
            return {}
    pred = probs >= threshold
    truth = targets >= 0.5
    return {"dice": float(dice(pred, truth).mean()), "iou": float(iou(pred, truth).mean())}
