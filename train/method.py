"""The engine's method interface: every call :func:`train.engine.fit` makes on a method.

A method (Genesis restoration, fine-tuning, Ark, PEAC, ...) subclasses :class:`Method`, gives
``build_model``, ``datasets`` and ``loss``, and overrides the hooks it needs; the others keep the
no-op defaults below, so the engine calls every hook without probing for it. A public name that
looks like a hook but is not one (``after_steps``, ``val_metric``, ``on_epoch``) is a
``TypeError`` when the class is defined: a misspelt hook would otherwise never run.

Hooks run before the checkpoint that records their step, so a resumed run neither repeats nor
skips one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from .settings import RunConfig


class Source(Protocol):
    """A training or validation set: its length, and a batch of items by index."""

    def __len__(self) -> int: ...
    def batch(self, indices: list[int]) -> torch.Tensor | tuple[torch.Tensor, ...]: ...


@dataclass(frozen=True)
class StepContext:
    """Where a training step sits: epoch, phase (training source) and step counters."""

    epoch: int
    phase: int  # index of the training source (0 when there is one)
    step_in_phase: int
    steps_in_phase: int
    global_step: int  # before this step's optimiser update
    epochs: int
    phases: int

    @property
    def last_in_phase(self) -> bool:
        return self.step_in_phase == self.steps_in_phase - 1


#: Prefixes reserved for hooks: a public name with one of them must be a hook of :class:`Method`.
HOOK_PREFIXES = ("after_", "before_", "on_")


class Method:
    """Base of every training method; see ``train/genesis/method.py`` for a short one.

    Attributes:
        cfg: the method's config; the engine reads ``cfg.loop`` and ``cfg.optim``.
        ddp_kwargs: extra ``DistributedDataParallel`` arguments (Ark: ``find_unused_parameters``,
            as one head of several is used per step).
    """

    cfg: RunConfig
    ddp_kwargs: ClassVar[dict[str, Any]] = {}

    def build_model(self) -> tuple[torch.nn.Module, str, dict]:
        """``(model, registry name, constructor args)``; checkpoints hold the whole model."""
        raise NotImplementedError

    def datasets(self) -> tuple[Source | list[Source], Source]:
        """``(training source or list of them, validation source)``. A list is visited in order
        each epoch, one full pass per source (a *phase*: Ark's cyclic visit of its datasets)."""
        raise NotImplementedError

    def loss(
        self, model, batch, generator: torch.Generator, ctx: StepContext | None
    ) -> torch.Tensor:
        """The scalar loss of ``batch``; ``ctx`` is the step's place while training and None
        for validation. ``generator`` is the step's only source of randomness (exact resume)."""
        raise NotImplementedError

    def after_step(self, model, ctx: StepContext) -> None:
        """After every optimiser step (PEAC's per-iteration EMA teacher)."""

    def after_phase(self, model, ctx: StepContext) -> None:
        """After the last step of each phase (Ark's per-dataset EMA teacher)."""

    def val_metrics(self, net, val_set: Source, device: torch.device) -> dict:
        """Extra figures logged with each epoch's validation loss."""
        return {}

    def export_model(self, model) -> tuple[torch.nn.Module, str, dict] | None:
        """What ``model.safetensors`` holds when validation improves, as ``(module, name,
        args)`` (the teacher of a student-teacher pair); None: the model as built."""
        return None

    def inference_card(self) -> dict | None:
        """What inference needs (task, preprocessing, labels; :mod:`train.cards`), stored in
        ``model.safetensors``' metadata for ``export``; None: no card."""
        return None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in vars(cls):
            if name.startswith("_") or name in HOOKS:
                continue
            near = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.8)
            if near or name.startswith(HOOK_PREFIXES):
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise TypeError(
                    f"{cls.__qualname__}.{name} is not a hook of train.method.Method ({hint}"
                    f"hooks: {', '.join(sorted(HOOKS))}); name a helper so it is not mistaken "
                    "for one"
                )


#: The public names of :class:`Method`: what the engine calls or reads.
HOOKS = frozenset(name for name in vars(Method) if not name.startswith("_"))
