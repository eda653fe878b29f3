"""Reuse Ark or PEAC weights on a new chest X-ray task: fine-tuning with a new head, or linear
probing (Ark: post-projector embedding; PEAC: mean-pooled token map).

Fine-tuning follows the BenchmarkTransformers protocol Ark reports (docs/METHODS.md §2.4): the
pretrained backbone and projector, one new linear head, RandomResizedCrop + horizontal flip +
rotation ±7°, SGD, early stopping on the validation loss; test with ten crops. Linear probing
freezes everything, embeds each image once (post-projector embedding, centre crop) and fits an
L2-regularised logistic regression per task on the embeddings.

    python -m train.run transfer --init ark:runs/ark-tiny --config configs/ark/transfer_tiny.yaml
    python -m train.run transfer --mode probe --init ark:runs/ark-tiny --config ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.ark import ARK, ArkModel
from models.checkpoint import atomic_write_bytes, load_model
from models.peac import PEAC

from ..cards import ark_card
from ..method import Method
from ..settings import LoopConfig, OptimConfig
from ..views2d import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize,
    resize_center_crop,
    sample_geometry,
    warp,
)
from .config import ArkDataConfig, ArkDatasetConfig, ArkModelConfig
from .data import build_source, eval_resize
from .evaluate import score_source, score_sources
from .method import masked_bce


@dataclass
class TransferConfig:
    """A new task on pretrained weights."""

    dataset: ArkDatasetConfig = field(default_factory=lambda: ArkDatasetConfig(name="synth_nih"))
    data: ArkDataConfig = field(default_factory=lambda: ArkDataConfig(datasets=[]))
    init: str = "scratch"  # "scratch", "ark:<run dir | file>" or "peac:<run dir | file>"
    model: ArkModelConfig = field(default_factory=ArkModelConfig)  # used with init=scratch
    size: int = 224
    rotate: float = 7.0
    ten_crop: bool = True  # test-time ten-crop averaging
    probe_l2: float = 1e-3  # linear probing: weight of the L2 penalty
    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01, scheduler="cosine"))


#: the families whose weights can start a transfer run, as ``<family>:<path>``
INIT_KINDS = (ARK.family, PEAC.family)


def init_statistics(init: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` the initial weights were trained with, used for every view, for
    evaluation and in the exported card: PEAC's grey statistics (0.5056 / 0.252,
    ``models.peac``) for ``peac:``, ImageNet's for Ark and scratch (Ark's release)."""
    if init.partition(":")[0] == PEAC.family:
        from models.peac import PEAC_MEAN, PEAC_STD

        return (PEAC_MEAN,) * 3, (PEAC_STD,) * 3  # the grey film repeated to 3 channels
    return IMAGENET_MEAN, IMAGENET_STD


def load_pretrained(init: str) -> ArkModel:
    """``ark:<run dir | file>`` → the Ark model saved there (a run's best teacher);
    ``peac:<run dir | file>`` → PEAC's backbone as an Ark-style classifier body: no projector,
    the embedding is the mean of the token map (what PEAC trains), no heads."""
    kind, _, where = init.partition(":")
    if kind not in INIT_KINDS or not where:
        raise ValueError(
            f"init must be 'scratch', 'ark:<run dir | .safetensors>' or "
            f"'peac:<run dir | .safetensors>', got {init!r}"
        )
    path = Path(where)
    path = path / "model.safetensors" if path.is_dir() else path
    model = load_model(path)
    if kind == PEAC.family:
        from models.peac import PEACModel

        if not isinstance(model, PEACModel):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a PEAC model")
        body = ArkModel(
            backbone=model.backbone_name,
            img_size=model.img_size,
            in_chans=model.in_chans,
            projector="none",
            global_pool="avg",
        )
        body.backbone.load_state_dict(model.backbone.state_dict(), strict=True)
        return body
    if not isinstance(model, ArkModel):
        raise ValueError(f"{path} holds a {type(model).__name__}, not an Ark model")
    return model


def new_task_model(cfg: TransferConfig, num_classes: int) -> ArkModel:
    """Pretrained (or fresh) backbone + projector with one new head named after the dataset."""
    if cfg.init == "scratch":
        model = ArkModel(
            backbone=cfg.model.backbone,
            img_size=cfg.size,
            embed_dim=cfg.model.embed_dim,
            projector=cfg.model.projector,
        )
    else:
        pre = load_pretrained(cfg.init)
        args = pre.model_args | {"head_sizes": [], "head_names": []}
        model = ArkModel(**args)
        own = {k: v for k, v in pre.state_dict().items() if not k.startswith("omni_heads.")}
        model.load_state_dict(own, strict=True)
    model.add_head(num_classes, cfg.dataset.head_name)
    return model


class TransferMethod(Method):
    """Fine-tuning as a :class:`~train.method.Method` (one head, all weights trained)."""

    def __init__(self, cfg: TransferConfig, run_dir: str | Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.stats = init_statistics(cfg.init)
        self._sources: dict = {}

    def source(self, split: str):
        if split not in self._sources:
            cache = self.cfg.data.cache_dir or str(self.run_dir / "cache")
            self._sources[split] = build_source(
                self.cfg.dataset, 0, split, self.cfg.data, Path(cache), self.cfg.loop.progress
            )
        return self._sources[split]

    def build_model(self):
        model = new_task_model(self.cfg, self.source("train").num_classes)
        return model, ARK.model_name, model.model_args

    def datasets(self):
        return self.source("train"), self.source("val")

    def inference_card(self) -> dict:
        return ark_card(self.cfg.size, [self.source("train")], stats=self.stats)

    def loss(self, model, batch, generator: torch.Generator, ctx) -> torch.Tensor:
        images, target, mask, _ = batch
        if model.training:
            images = self.train_view(images, generator)
        else:
            images = normalize(
                resize_center_crop(images, eval_resize(self.cfg.size), self.cfg.size), *self.stats
            )
        _, logits = model(images, head=0)
        return masked_bce(logits, target, mask)

    def train_view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """RandomResizedCrop + horizontal flip (p 0.5) + rotation ±``rotate``° (always)."""
        n = images.shape[0]
        geo = sample_geometry(
            n, generator, in_size=tuple(images.shape[-2:]), out_size=self.cfg.size,
            shift=0.0, scale_limit=0.0, rotate=self.cfg.rotate, affine_p=1.0,
        )  # fmt: skip
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return normalize(warp(images, geo), *self.stats)

    def val_metrics(self, net, val_set, device) -> dict:
        scores = score_sources(net, [val_set], device, size=self.cfg.size, stats=self.stats)
        return {"auroc_mean": scores["mean_auroc"]}


def evaluate_transfer_run(run_dir: str | Path, cfg: TransferConfig, split: str = "test") -> dict:
    """Per-class AUROC of the run's best weights on ``split`` (ten-crop when configured)."""
    run_dir = Path(run_dir)
    method = TransferMethod(cfg, run_dir)
    model = load_model(run_dir / "model.safetensors").eval()
    scores = score_sources(
        model, [method.source(split)], torch.device("cpu"), size=cfg.size,
        ten_crop=cfg.ten_crop, stats=method.stats,
    )  # fmt: skip
    result = {"mode": "finetune", "split": split, **scores}
    atomic_write_bytes(run_dir / f"eval_{split}.json", json.dumps(result, indent=2).encode())
    return result


@torch.no_grad()
def embed_source(
    model: ArkModel, source, size: int, device, batch_size: int = 64, stats=None
) -> np.ndarray:
    """Post-projector embeddings ``(N, E)`` of every item (centre crop, frozen model), normalised
    with ``stats`` ``(mean, std)`` (None: ImageNet's)."""
    mean, std = stats or (IMAGENET_MEAN, IMAGENET_STD)
    model.eval().to(device)
    out = []
    for start in range(0, len(source), batch_size):
        images = source.batch(list(range(start, min(start + batch_size, len(source)))))[0]
        x = normalize(resize_center_crop(images.to(device), eval_resize(size), size), mean, std)
        out.append(model.embed(x).float().cpu().numpy())
    return np.concatenate(out)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, l2: float, iters: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest logistic regression on standardised features (L-BFGS, masked labels ignored).

    Returns (weight (C, E), bias (C,)) acting on the *standardised* features; see
    :func:`probe_predict`.
    """
    xt = torch.from_numpy(x).double()
    yt, mt = torch.from_numpy(y).double(), torch.from_numpy(mask).double()
    w = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xt @ w.T + b
        bce = F.binary_cross_entropy_with_logits(logits, yt, reduction="none")
        loss = (bce * mt).sum() / mt.sum().clamp(min=1) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(cfg: TransferConfig, run_dir: str | Path, split: str = "test") -> dict:
    """Frozen embeddings of the train split → logistic regression → AUROC on ``split``."""
    run_dir = Path(run_dir)
    method = TransferMethod(cfg, run_dir)
    model = new_task_model(cfg, method.source("train").num_classes)
    device = torch.device("cpu")
    train, test = method.source("train"), method.source(split)
    x_train = embed_source(model, train, cfg.size, device, stats=method.stats)
    x_test = embed_source(model, test, cfg.size, device, stats=method.stats)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    w, b = fit_logistic((x_train - mean) / std, train.target, train.mask, cfg.probe_l2)
    logits = torch.from_numpy((x_test - mean) / std).double() @ w.T + b
    probs = logits.sigmoid().numpy()
    scores = score_source(probs, test)
    result = {"mode": "probe", "init": cfg.init, "split": split, "n_train": len(train),
              "n_test": len(test), **scores}  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / f"probe_{split}.json", json.dumps(result, indent=2).encode())
    return result
