"""A model family, declared once beside its architecture (as timm keeps ``default_cfgs`` next
to each model): how to build it, which tasks it exports and how, its published preprocessing,
its official-weights importer and the serving roles of each exported task.

This module holds the types only; :mod:`models.registry` collects the declarations (each model
module calls :func:`register`) and is what every stage reads. docs/DESIGN.md, "Adding a model
family", walks through a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imaging.outputs import OutputSpec
from imaging.preprocess import Preprocessing

if TYPE_CHECKING:  # the types only: this module imports no torch
    from torch import nn

    from .official import ImportReport

#: what a served endpoint asks for; an export's manifest records the roles it can fill
ROLES = ("cxr_classify", "embed", "correspond", "ct_segment")
#: how a model that normalises with batch statistics (Models Genesis as released) is exported:
#: each sample's own statistics, or the running ones tracked in training
BATCH_NORM_MODES = ("per_sample", "running")


@dataclass(frozen=True)
class GraphOptions:
    """Export choices that apply to some families only (the ``export.run`` flags).

    Attributes:
        head: export this head alone (families with one head per dataset); None: every head.
        batch_norm: how a family with batch-statistics normalisation is made batch
            independent (:data:`BATCH_NORM_MODES`).
        roi_size: the example (and TensorRT optimisation) spatial size of a volume model.
    """

    head: str | None = None
    batch_norm: str = "per_sample"
    roi_size: tuple[int, ...] | None = None


@dataclass
class ExportGraph:
    """A module ready for export and the description of its input and outputs."""

    module: nn.Module
    task: str
    input_shape: list  # symbolic, e.g. ["batch", 1, "x", "y", "z"]
    example_shape: tuple[int, ...]  # a batch-2 example (a batch of 1 can fix the axis to 1)
    multiple_of: list[int]
    outputs: list[OutputSpec] = field(default_factory=list)
    dynamic_spatial: bool = False
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One registered model and everything the stages need to know about it.

    Attributes:
        family: the method family recorded in manifests and checkpoints' cards (``"genesis"``);
            several models can share one (a U-Net and a classifier).
        model_name: the registry name stored in weights files (``model_name``).
        builder: ``builder(**model_args) -> nn.Module``.
        tasks: export tasks, the default first.
        export: ``export(model, task, card, options) -> ExportGraph``: the model as one
            tensor-in, tensors-out ``forward`` for ``task``, its outputs described.
        preprocessing: ``preprocessing(model) -> Preprocessing``: the published preset, for
            weights that record none (an imported release).
        roles: task → {serving role: rank}; a lower rank is preferred when several loaded
            models can fill a role. A task absent here is exported but serves no endpoint.
        importer: ``importer(path, *, out, strict, model_args, entry) -> ImportReport`` for
            the family's official release, or None. One importer per family: the first
            model declaring it owns it.
    """

    family: str
    model_name: str
    builder: Callable[..., nn.Module]
    tasks: tuple[str, ...]
    export: Callable[[Any, str, dict, GraphOptions], ExportGraph]
    preprocessing: Callable[[Any], Preprocessing]
    roles: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    importer: Callable[..., ImportReport] | None = None

    def __post_init__(self):
        if not self.tasks:
            raise ValueError(f"{self.model_name}: a family exports at least one task")
        for task, roles in self.roles.items():
            if task not in self.tasks:
                raise ValueError(f"{self.model_name}: roles for {task!r}, not one of its tasks")
            unknown = set(roles) - set(ROLES)
            if unknown:
                raise ValueError(f"{self.model_name}: unknown serving role(s) {sorted(unknown)}")

    def serves(self, task: str) -> dict[str, int]:
        """The roles an export of ``task`` fills, with their ranks (the manifest's ``serves``)."""
        return dict(self.roles.get(task, {}))


def card_labels(card: Mapping, head: str, n: int) -> list[str]:
    """Class names of ``head`` recorded in a training card, or ``class_0..`` when absent or of
    the wrong length."""
    names = (card.get("labels") or {}).get(head)
    if names and len(names) == n:
        return [str(v) for v in names]
    return [f"class_{i}" for i in range(n)]


#: model name → its family; filled by :func:`register` as the model modules are imported
REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to :data:`REGISTRY` (once per model name) and return it."""
    if family.model_name in REGISTRY and REGISTRY[family.model_name] is not family:
        raise ValueError(f"model {family.model_name!r} is registered twice")
    REGISTRY[family.model_name] = family
    return family
