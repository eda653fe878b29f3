"""Export-time modules: a registered model as one tensor-in, tensors-out ``forward`` for a task.

ONNX and TensorRT see a graph with a single input named ``image`` and named outputs whose
meaning is written into the manifest; the training-time models keep their richer Python APIs.
What each family exports, and how, is declared beside its model
(:attr:`models.family.Family.export`); this module only looks it up and checks the task.
"""

from __future__ import annotations

from torch import nn

from models.family import ExportGraph, GraphOptions
from models.registry import get_family

__all__ = ["ExportGraph", "GraphOptions", "build_graph"]


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
        model_name: its registry name (:func:`models.registry.get_family`).
        task: one of the family's tasks; None: the card's, else the family's first.
        card: the inference card recorded at training (labels per head, head activations,
            roi size); missing entries get generic defaults.
        head, batch_norm, roi_size: :class:`models.family.GraphOptions` (ignored by families
            they do not apply to).

    Raises:
        ValueError: an unregistered model, or a task the family does not export.
    """
    card = dict(card or {})
    try:
        family = get_family(model_name)
    except KeyError as exc:
        raise ValueError(str(exc.args[0]).replace("unknown model", "no export for model")) from None
    task = task or card.get("task") or family.tasks[0]
    if task not in family.tasks:
        raise ValueError(
            f"task {task!r} does not apply to {model_name}; valid: {', '.join(family.tasks)}"
        )
    options = GraphOptions(head, batch_norm, tuple(roi_size) if roi_size else None)
    return family.export(model.eval(), task, card, options)
