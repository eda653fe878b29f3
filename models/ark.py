"""Foundation Ark: a timm backbone, a projector, and one classification head per dataset.

Paper: Ma, Pang, Gotway, Liang, "Foundation Ark: Accruing and Reusing Knowledge for Superior and
Robust Performance", MICCAI 2023, arXiv:2310.09507. Original code:
https://github.com/jlianglab/Ark (``models.py``, written for timm 0.5.4).

Written from the description in docs/METHODS.md §2.1, not copied. Ark pools the backbone's last
feature map (F values: 1024 for Swin-B), maps it through a projector to the shared embedding
(1376 values), and puts one linear head per pretraining dataset ("omni heads") on top. Module
names give the released key names once the backbone's keys carry a ``backbone.`` prefix::

    backbone.…                               the timm model, built with num_classes=0
    projector.{weight,bias}                  projector="linear": Linear(F → 1376)
    projector.{0,2}.{weight,bias}            projector="mlp": Linear(F → 1376), ReLU, Linear
    omni_heads.{i}.{weight,bias}             Linear(embed_dim → C_i), in the configured order

Released files use the timm 0.5.4 Swin names; :mod:`models.official` maps them (family ``ark``).
Inputs are ``(B, C, H, W)`` images, ImageNet-normalised in Ark's recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from imaging.outputs import OutputSpec
from imaging.preprocess import ark_cxr

from . import backbones  # noqa: F401  (registers the small timm backbones of CPU presets)
from .family import ExportGraph, Family, GraphOptions, card_labels, register

PROJECTORS = ("linear", "mlp", "none")


def _create_backbone(
    name: str, img_size: int, in_chans: int, global_pool: str | None = None
) -> nn.Module:
    """``timm.create_model(name, num_classes=0)``: its ``forward`` returns the pooled ``(B, F)``.

    ``global_pool`` (e.g. ``"avg"``) overrides timm's pooling; a ViT then averages its patch
    tokens instead of taking the class token.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": in_chans}
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
        # ViTs would otherwise move their final norm after the pooling (``fc_norm``); keeping it
        # on the tokens makes "avg" the mean of the normed token map, as PEAC's embedding.
        kwargs["fc_norm"] = False
    cfg = get_pretrained_cfg(name)
    default = cfg.input_size[-1] if cfg is not None and cfg.input_size else None
    if img_size != default:
        kwargs["img_size"] = img_size
    while True:
        try:
            return timm.create_model(name, **kwargs)
        except TypeError as exc:
            # Convolutional nets take any input size and have no img_size argument; only ViTs
            # know fc_norm.
            dropped = [k for k in ("img_size", "fc_norm") if k in kwargs and k in str(exc)]
            if not dropped:
                raise
            for k in dropped:
                del kwargs[k]


class ArkModel(nn.Module):
    """Backbone → projector → one linear head per dataset (Ark's student/teacher network).

    Args:
        backbone: any timm model name (Ark: ``swin_base_patch4_window7_224``).
        img_size: input height = width; passed to timm when it differs from the model's default
            (Swin/ViT build their windows and position tables for it).
        in_chans: input channels.
        embed_dim: projector width (Ark: 1376). Ignored with ``projector="none"``, where the
            embedding is the backbone feature itself.
        projector: ``"linear"``, ``"mlp"`` (Linear, ReLU, Linear) or ``"none"``.
        head_sizes: classes per head, one head per dataset, in the configured dataset order.
        head_names: one name per head (default ``head0``, ``head1``, …).
        global_pool: timm pooling override (``"avg"`` for a classifier on PEAC's mean-pooled
            tokens); None keeps the backbone's default.
    """

    def __init__(
        self,
        backbone: str = "swin_base_patch4_window7_224",
        img_size: int = 224,
        in_chans: int = 3,
        embed_dim: int = 1376,
        projector: str = "linear",
        head_sizes: Sequence[int] = (),
        head_names: Sequence[str] | None = None,
        global_pool: str | None = None,
    ) -> None:
        super().__init__()
        if projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {projector!r}")
        head_sizes = [int(c) for c in head_sizes]
        if any(c < 1 for c in head_sizes):
            raise ValueError(f"every head needs at least one class, got {head_sizes}")
        if head_names is None:
            head_names = [f"head{i}" for i in range(len(head_sizes))]
        head_names = [str(n) for n in head_names]
        if len(head_names) != len(head_sizes):
            raise ValueError(f"{len(head_names)} head_names for {len(head_sizes)} head_sizes")

        self.backbone_name = backbone
        self.img_size = int(img_size)
        self.in_chans = int(in_chans)
        self.projector_kind = projector
        self.global_pool = global_pool
        self.backbone = _create_backbone(backbone, self.img_size, self.in_chans, global_pool)
        self.num_features = int(self.backbone.num_features)  # F, before the projector
        if projector == "none":
            self.embed_dim = self.num_features
            self.projector = nn.Identity()
        elif projector == "linear":
            self.embed_dim = int(embed_dim)
            self.projector = nn.Linear(self.num_features, self.embed_dim)
        else:
            self.embed_dim = int(embed_dim)
            self.projector = nn.Sequential(
                nn.Linear(self.num_features, self.embed_dim),
                nn.ReLU(inplace=True),
                nn.Linear(self.embed_dim, self.embed_dim),
            )
        self._embed_arg = int(embed_dim)
        self.head_sizes: list[int] = []
        self.head_names: list[str] = []
        self.omni_heads = nn.ModuleList()
        for size, name in zip(head_sizes, head_names, strict=True):
            self.add_head(size, name)

    @property
    def num_heads(self) -> int:
        """Number of classification heads."""
        return len(self.omni_heads)

    @property
    def model_args(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild this model, heads added later included."""
        return {
            "backbone": self.backbone_name,
            "img_size": self.img_size,
            "in_chans": self.in_chans,
            "embed_dim": self._embed_arg,
            "projector": self.projector_kind,
            "head_sizes": list(self.head_sizes),
            "head_names": list(self.head_names),
        } | ({"global_pool": self.global_pool} if self.global_pool is not None else {})

    def add_head(self, num_classes: int, name: str | None = None) -> int:
        """Append a freshly initialised ``Linear(embed_dim → num_classes)`` head.

        Used to fine-tune onto a new task while keeping the pretraining heads.

        Returns:
            The new head's index (for ``forward(x, head=index)``).
        """
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"a head needs at least one class, got {num_classes}")
        name = f"head{len(self.omni_heads)}" if name is None else str(name)
        if name in self.head_names:
            raise ValueError(f"a head named {name!r} exists already")
        layer = nn.Linear(self.embed_dim, num_classes)
        ref = next(self.backbone.parameters(), None)
        if ref is not None:
            layer.to(device=ref.device, dtype=ref.dtype)
        self.omni_heads.append(layer)
        self.head_sizes.append(num_classes)
        self.head_names.append(name)
        return len(self.omni_heads) - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone feature before the projector: ``(B, C, H, W)`` → ``(B, F)``."""
        return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Post-projector embedding (linear probing, serving): ``(B, C, H, W)`` → ``(B, E)``."""
        return self.projector(self.backbone(x))

    def forward(
        self, x: torch.Tensor, head: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        """Embedding and logits.

        Args:
            x: ``(B, in_chans, img_size, img_size)`` images.
            head: index of one head, or None for all of them.

        Returns:
            ``(embedding (B, E), logits (B, C_head))`` for one head, or
            ``(embedding, [logits of every head, in order])`` when ``head`` is None.
        """
        z = self.embed(x)
        if head is None:
            return z, [h(z) for h in self.omni_heads]
        if not -self.num_heads <= head < self.num_heads:
            raise IndexError(f"head {head} out of range for {self.num_heads} heads")
        return z, self.omni_heads[head](z)


# -------------------------------------------------------------------------------- family


class _ExportHeads(nn.Module):
    """Ark for export: the embedding and each chosen head's activated probabilities."""

    def __init__(self, net: ArkModel, heads: list[int], activations: list[str]):
        super().__init__()
        self.net, self.heads, self.activations = net, heads, activations

    def forward(self, image: torch.Tensor):
        z = self.net.embed(image)
        outs = []
        for h, act in zip(self.heads, self.activations, strict=True):
            logits = self.net.omni_heads[h](z)
            outs.append(
                torch.softmax(logits, dim=-1) if act == "softmax" else torch.sigmoid(logits)
            )
        return (z, *outs)


def _export(model: ArkModel, task: str, card: dict, options: GraphOptions) -> ExportGraph:
    """``embed`` (the shared embedding) or ``classify`` (the embedding and every head's — or
    ``options.head``'s — probabilities, with the activation and labels the card records)."""
    size, chans = int(model.img_size), int(model.in_chans)
    heads: list[int] = []
    if task == "classify":
        if not model.head_names:
            raise ValueError("this Ark model has no heads; export it with --task embed")
        if options.head is not None:
            if options.head not in model.head_names:
                raise ValueError(f"no head {options.head!r}; heads: {', '.join(model.head_names)}")
            heads = [model.head_names.index(options.head)]
        else:
            heads = list(range(len(model.head_names)))
    acts = card.get("activations") or {}
    outputs = [OutputSpec("embedding", "embedding", "none", ["batch", int(model.embed_dim)])]
    activations = []
    for h in heads:
        name = model.head_names[h]
        n = model.omni_heads[h].out_features
        act = acts.get(name, "sigmoid")
        activations.append(act)
        labels = card_labels(card, name, n)
        outputs.append(
            OutputSpec(f"probs_{name}", "probabilities", act, ["batch", n], labels, name)
        )
    return ExportGraph(
        _ExportHeads(model, heads, activations),
        task,
        ["batch", chans, size, size],
        (2, chans, size, size),
        [1, 1, 1, 1],
        outputs,
    )


def _import_release(path, **kwargs):
    """The Foundation Ark release importer (imported on use)."""
    from .official_ark import import_ark

    return import_ark(path, **kwargs)


ARK = register(
    Family(
        family="ark",
        model_name="ark",
        builder=ArkModel,
        tasks=("classify", "embed"),
        export=_export,
        preprocessing=lambda model: ark_cxr(int(model.img_size)),
        # an Ark embedding export is the embedding service's first choice; a classifier
        # export can embed too (its first output), after any dedicated embedding export
        roles={"classify": {"cxr_classify": 0, "embed": 2}, "embed": {"embed": 0}},
        importer=_import_release,
    )
)
