"""Initialise a fine-tuning model from Models Genesis weights (ours or the released file)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from models.checkpoint import load_weights
from models.official import import_official
from models.unet3d import GENESIS_UNET


def genesis_state_dict(spec: str) -> dict:
    """Weights named by ``genesis:<path>``: a run directory (its ``model.safetensors``), a
    ``.safetensors`` file, or the released ``Genesis_Chest_CT.pt`` (read with weights_only)."""
    if not spec.startswith("genesis:"):
        raise ValueError(f"init must be 'scratch' or 'genesis:<path>', got {spec!r}")
    path = Path(spec.removeprefix("genesis:"))
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        return load_weights(path)[0]
    return import_official(GENESIS_UNET.family, path).model.state_dict()


def initialise(model: nn.Module, spec: str, kind: str) -> str:
    """Load ``spec`` into ``model`` (the whole U-Net, or the classifier's encoder); a summary."""
    if spec == "scratch":
        return "random initialisation"
    state = genesis_state_dict(spec)
    if kind == "classification":
        result = model.load_encoder_from(state, strict=True)
        return f"encoder: {len(result.loaded)} tensors from {spec}"
    model.load_state_dict(state, strict=True)
    return f"encoder-decoder: {len(state)} tensors from {spec}"
