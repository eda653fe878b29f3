"""Export-time modules: each (model family, task) as one tensor-in, tensors-out ``forward``.

ONNX and TensorRT see a graph with a single input named ``image`` and named outputs whose
meaning is written into the manifest; the training-time models keep their richer Python APIs.
The Models Genesis batch-statistics normalisation is made batch independent here
(:func:`models.unet3d.batch_independent`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.ark import ArkModel
from models.peac import PEACModel
from models.unet3d import GenesisClassifier, UNet3D, batch_independent

#: Tasks each registered model can be exported for (the first is the default).
TASKS: dict[str, tuple[str, ...]] = {
    "unet3d": ("segment", "restore"),
    "genesis_classifier": ("classify",),
    "ark": ("classify", "embed"),
    "peac": ("correspond", "embed"),
}
FAMILIES = {"unet3d": "genesis", "genesis_classifier": "genesis", "ark": "ark", "peac": "peac"}


@dataclass
class OutputInfo:
    """What one graph output means (copied into the manifest).

    Attributes:
        name: ONNX output name.
        meaning: ``probabilities``, ``mask_probabilities``, ``restored``, ``embedding`` or
            ``token_map``.
        activation: ``sigmoid``, ``softmax`` or ``none`` (already applied in the graph).
        shape: symbolic shape (``"batch"`` and spatial names for dynamic axes).
        labels: class names for probability outputs.
        head: the head's name (Ark).
    """

    name: str
    meaning: str
    activation: str
    shape: list
    labels: list[str] | None = None
    head: str | None = None


@dataclass
class ExportGraph:
    """A module ready for export and the description of its input and outputs."""

    module: nn.Module
    task: str
    input_shape: list  # symbolic, e.g. ["batch", 1, "x", "y", "z"]
    example_shape: tuple[int, ...]  # a batch-2 example (a batch of 1 can fix the axis to 1)
    multiple_of: list[int]
    outputs: list[OutputInfo] = field(default_factory=list)
    dynamic_spatial: bool = False
    notes: dict = field(default_factory=dict)


class _GenesisVolume(nn.Module):
    def __init__(self, net: UNet3D):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image, return_logits=True))


class _GenesisClass(nn.Module):
    def __init__(self, net: GenesisClassifier):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    return torch.sigmoid(logits)


class _ArkGraph(nn.Module):
    def __init__(self, net: ArkModel, heads: list[int], activations: list[str]):
        super().__init__()
        self.net, self.heads, self.activations = net, heads, activations

    def forward(self, image: torch.Tensor):
        z = self.net.embed(image)
        outs = [
            _activate(self.net.omni_heads[h](z), a)
            for h, a in zip(self.heads, self.activations, strict=True)
        ]
        return (z, *outs)


class _PEACGraph(nn.Module):
    def __init__(self, net: PEACModel, tokens: bool):
        super().__init__()
        self.net, self.with_tokens = net, tokens

    def forward(self, image: torch.Tensor):
        t = self.net.tokens(image)
        emb = t.mean(dim=(1, 2))
        return (emb, t) if self.with_tokens else emb


def _labels(card: dict, head: str, n: int) -> list[str]:
    names = (card.get("labels") or {}).get(head)
    if names and len(names) == n:
        return [str(v) for v in names]
    return [f"class_{i}" for i in range(n)]


def build_graph(
    model: nn.Module,
    model_name: str,
    *,
    task: str | None = None,
    card: dict | None = None,
    head: str | None = None,
    batch_norm: str = "per_sample",
    roi_size: tuple[int, int, int] | None = None,
) -> ExportGraph:
    """Wrap ``model`` for export as ``task``.

    Args:
        model: a registry model in eval mode.
        model_name: its registry name (:data:`models.registry.MODELS`).
        task: one of :data:`TASKS` ``[model_name]``; None picks the first.
        card: the inference card recorded at training (labels per head, head activations,
            roi size); missing entries get generic defaults.
        head: Ark only: export this head alone (by name); default every head.
        batch_norm: Genesis only: :data:`models.unet3d.BATCH_NORM_MODES`.
        roi_size: Genesis only: the example (and TensorRT opt) spatial size ``(X, Y, Z)``.

    Returns:
        :class:`ExportGraph`.
    """
    card = dict(card or {})
    if model_name not in TASKS:
        raise ValueError(f"no export for model {model_name!r}; exportable: {sorted(TASKS)}")
    task = task or card.get("task") or TASKS[model_name][0]
    if task not in TASKS[model_name]:
        raise ValueError(
            f"task {task!r} does not apply to {model_name}; valid: {', '.join(TASKS[model_name])}"
        )
    model = model.eval()
    if model_name in ("unet3d", "genesis_classifier"):
        return _genesis_graph(model, model_name, task, card, batch_norm, roi_size)
    if model_name == "ark":
        return _ark_graph(model, task, card, head)
    return _peac_graph(model, task)


def _genesis_graph(model, model_name, task, card, batch_norm, roi_size) -> ExportGraph:
    fixed, replaced = batch_independent(model, batch_norm)
    roi = tuple(int(s) for s in (roi_size or card.get("roi_size") or (64, 64, 32)))
    example = (2, model.in_channels, *roi)
    notes = {"batch_norm": batch_norm if replaced else "running (model trained with it)"}
    notes["batch_norm_layers_replaced"] = replaced
    if model_name == "genesis_classifier":
        n = fixed.dense_2.out_features
        out = OutputInfo(
            "probabilities", "probabilities", "sigmoid", ["batch", n], _labels(card, "main", n)
        )
        return ExportGraph(
            _GenesisClass(fixed),
            task,
            ["batch", model.in_channels, *roi],
            example,
            [1, 1, 8, 8, 8],
            [out],
            dynamic_spatial=False,
            notes=notes,
        )
    n = fixed.out_tr.final_conv.out_channels
    shape = ["batch", n, "x", "y", "z"]
    if task == "segment":
        out = OutputInfo(
            "probabilities", "mask_probabilities", "sigmoid", shape, _labels(card, "main", n)
        )
    else:
        out = OutputInfo("restored", "restored", "sigmoid", shape)
    return ExportGraph(
        _GenesisVolume(fixed),
        task,
        ["batch", model.in_channels, "x", "y", "z"],
        example,
        [1, 1, 8, 8, 8],
        [out],
        dynamic_spatial=True,
        notes=notes,
    )


def _ark_graph(model: ArkModel, task, card, head) -> ExportGraph:
    size, chans = int(model.img_size), int(model.in_chans)
    emb = OutputInfo("embedding", "embedding", "none", ["batch", int(model.embed_dim)])
    heads: list[int] = []
    if task == "classify":
        if not model.head_names:
            raise ValueError("this Ark model has no heads; export it with --task embed")
        if head is not None:
            if head not in model.head_names:
                raise ValueError(f"no head {head!r}; heads: {', '.join(model.head_names)}")
            heads = [model.head_names.index(head)]
        else:
            heads = list(range(len(model.head_names)))
    acts = (card.get("activations") or {}) if card else {}
    outputs, activations = [emb], []
    for h in heads:
        name = model.head_names[h]
        n = model.omni_heads[h].out_features
        act = acts.get(name, "sigmoid")
        activations.append(act)
        outputs.append(
            OutputInfo(
                f"probs_{name}", "probabilities", act, ["batch", n], _labels(card, name, n), name
            )
        )
    return ExportGraph(
        _ArkGraph(model, heads, activations),
        task,
        ["batch", chans, size, size],
        (2, chans, size, size),
        [1, 1, 1, 1],
        outputs,
    )


def _peac_graph(model: PEACModel, task) -> ExportGraph:
    size, chans, g = int(model.img_size), int(model.in_chans), int(model.grid)
    dim = int(model.num_features)
    outputs = [OutputInfo("embedding", "embedding", "none", ["batch", dim])]
    if task == "correspond":
        outputs.append(OutputInfo("tokens", "token_map", "none", ["batch", g, g, dim]))
    return ExportGraph(
        _PEACGraph(model, task == "correspond"),
        task,
        ["batch", chans, size, size],
        (2, chans, size, size),
        [1, 1, 1, 1],
        outputs,
        notes={"grid": g, "cell": int(model.cell)},
    )
