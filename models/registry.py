"""Model registry: every family declared beside its model (:mod:`models.family`), behind one
front door, :func:`build_model`, and the lookups every stage uses (:func:`get_family`,
:func:`list_families`, :func:`official_family`).

Constructors take plain keyword arguments only; checkpoints store those arguments
(``model_args``) so :func:`models.checkpoint.load_model` rebuilds a model from the file alone.
Adding a family: declare it at the bottom of its model module with :func:`models.family.register`
and import that module here.
"""

from __future__ import annotations

from torch import nn

from . import ark, peac, unet3d  # noqa: F401 - each module registers its families
from .family import REGISTRY, Family

#: registry name → constructor (the families' builders)
MODELS: dict[str, type[nn.Module]] = {name: f.builder for name, f in REGISTRY.items()}


def list_families() -> list[Family]:
    """Every registered model's family descriptor, in registration order."""
    return list(REGISTRY.values())


def get_family(model_name: str) -> Family:
    """The descriptor of registered model ``model_name``.

    Raises:
        KeyError: not registered; the message lists the valid names.
    """
    try:
        return REGISTRY[model_name]
    except KeyError:
        raise KeyError(
            f"unknown model {model_name!r}; valid names: {', '.join(sorted(REGISTRY))}"
        ) from None


def family_names() -> list[str]:
    """The method families (manifest ``family`` values), each once."""
    return list(dict.fromkeys(f.family for f in REGISTRY.values()))


def official_families() -> dict[str, Family]:
    """Method family → the descriptor that owns its official-release importer."""
    out: dict[str, Family] = {}
    for f in REGISTRY.values():
        if f.importer is not None:
            out.setdefault(f.family, f)
    return out


def build_model(name: str, **kwargs) -> nn.Module:
    """Construct the registered model ``name`` with keyword arguments ``kwargs``.

    Args:
        name: a registered model name (:data:`MODELS`).
        **kwargs: the model's constructor arguments.

    Returns:
        A freshly initialised ``nn.Module``.

    Raises:
        KeyError: ``name`` is not registered; the message lists the valid names.
    """
    return get_family(name).builder(**kwargs)
