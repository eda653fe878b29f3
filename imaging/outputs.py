"""What one graph output of an exported model means: the one type the family export adapters
(``models``) write and the manifest (``export``, ``serve``) reads.

Torch-free and at the bottom layer for the same reason as :class:`imaging.preprocess.Preprocessing`:
every stage, the server included, shares it without importing a model.
"""

from __future__ import annotations

from dataclasses import dataclass

MEANINGS = ("probabilities", "mask_probabilities", "restored", "embedding", "token_map")
ACTIVATIONS = ("sigmoid", "softmax", "none")


@dataclass
class OutputSpec:
    """One graph output and what it means.

    Attributes:
        name: ONNX output name.
        meaning: one of :data:`MEANINGS`.
        activation: one of :data:`ACTIVATIONS` (already applied in the graph).
        shape: symbolic shape (``"batch"`` and spatial names for dynamic axes).
        labels: class names for probability outputs.
        head: the head's name (a model with one head per dataset).
    """

    name: str
    meaning: str
    activation: str
    shape: list
    labels: list[str] | None = None
    head: str | None = None
