"""What ``export --from`` points at: a run directory, a weights file, or an official release.

Returns the model, its registry name, the inference card recorded at training (or the family's
published defaults when the file has none, e.g. an imported official checkpoint), the SHA-256 of
the file the weights came from, and the run's resolved config where there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from torch import nn

from models.checkpoint import CheckpointError, load_model, load_weights
from models.official import import_official
from models.registry import get_family, official_families

from .manifest import sha256_file

#: Suffixes of released (pickled) checkpoints; read with ``weights_only=True`` only.
OFFICIAL_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")


@dataclass
class ModelSource:
    """A model to export and where it came from."""

    model: nn.Module
    model_name: str
    model_args: dict
    card: dict
    path: Path
    kind: str  # "run", "checkpoint" or "official"
    sha256: str
    config: dict | None = None
    metadata: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The manifest's ``source`` entry."""
        out = {"kind": self.kind, "path": str(self.path), "sha256": self.sha256}
        for key in ("epoch", "val_loss", "source", "source_file", "source_entry"):
            if key in self.metadata and self.metadata[key] is not None:
                out[key] = self.metadata[key]
        return out


def default_card(model: nn.Module, model_name: str) -> dict:
    """The family's published preprocessing, for files that record no card (labels then
    default to generic names)."""
    try:
        family = get_family(model_name)
    except KeyError:
        raise ValueError(f"no export defaults for model {model_name!r}") from None
    return {"task": None, "preprocessing": family.preprocessing(model).to_dict()}


def _read_config(run_dir: Path) -> dict | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    return data if isinstance(data, dict) else None


def resolve_source(path: str | os.PathLike, *, official: str | None = None) -> ModelSource:
    """Load the model behind ``path``.

    Args:
        path: a run directory (its ``model.safetensors``, the best validation weights), a
            ``.safetensors`` weights file written by anatomix, or a released checkpoint
            (``.pt``/``.pth``/``.tar``) when ``official`` names its family.
        official: the method family of a released checkpoint
            (:func:`models.registry.official_families`).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file cannot be used; the message says why and what to pass.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory or file")
    if official is not None:
        if official not in official_families():
            raise ValueError(
                f"unknown official family {official!r}; valid: {', '.join(official_families())}"
            )
        report = import_official(official, path)
        model = report.model.eval()
        meta = {"source": f"official {official}", "source_file": path.name}
        meta["source_entry"] = report.source_entry
        return ModelSource(
            model,
            report.model_name,
            dict(report.model_args),
            default_card(model, report.model_name),
            path,
            "official",
            sha256_file(path),
            metadata=meta,
        )
    kind, config = "checkpoint", None
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ValueError(
                f"{path}: no model.safetensors (a run writes it after its first validation)"
            )
        kind, config, path = "run", _read_config(path), weights
    elif path.suffix.lower() in OFFICIAL_SUFFIXES:
        raise ValueError(
            f"{path} is a released PyTorch checkpoint: say whose with --official "
            f"{{{','.join(official_families())}}}"
        )
    try:
        _, info = load_weights(path)
        model = load_model(path).eval()
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None
    card = dict(info.metadata.get("inference") or default_card(model, info.model_name))
    meta = {k: v for k, v in info.metadata.items() if k != "inference"}
    return ModelSource(
        model,
        info.model_name,
        dict(info.model_args),
        card,
        path,
        kind,
        sha256_file(path),
        config,
        meta,
    )
