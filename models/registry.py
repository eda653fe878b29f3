"""Model registry: one dict of constructors behind one front door, :func:`build_model`.

Constructors take plain keyword arguments only; checkpoints store those arguments
(``model_args``) so :func:`models.checkpoint.load_model` rebuilds a model from the file alone.
"""

from __future__ import annotations

from torch import nn

from .ark import ArkModel
from .peac import PEACModel
from .unet3d import GenesisClassifier, UNet3D

MODELS: dict[str, type[nn.Module]] = {
    "unet3d": UNet3D,
    "genesis_classifier": GenesisClassifier,
    "ark": ArkModel,
    "peac": PEACModel,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Construct the registered model ``name`` with keyword arguments ``kwargs``.

    Args:
        name: a key of :data:`MODELS`.
        **kwargs: the model's constructor arguments.

    Returns:
        A freshly initialised ``nn.Module``.

    Raises:
        KeyError: ``name`` is not registered; the message lists the valid names.
    """
    try:
        cls = MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    return cls(**kwargs)
