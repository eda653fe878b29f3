"""Weights on disk: safetensors files that rebuild their model, atomic writes, safe torch loads.

A weights file is a safetensors file whose string metadata carries ``model_name`` (a key of
:data:`models.registry.MODELS`) and ``model_args`` (JSON of the constructor's keyword arguments),
so :func:`load_model` needs nothing but the file. Every write goes to a temporary file in the
destination directory, is fsync'ed and then renamed over the target (:func:`atomic_path`), so a
crash leaves either the old file or the new one, never half of one. The training engine reuses
:func:`atomic_path` for ``state.pt`` and ``config.yaml``.

Pickled torch files are only ever read with ``weights_only=True`` (:func:`load_torch_file`).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from imaging.atomic import atomic_path, atomic_write_bytes  # noqa: F401  (re-exported)

from .registry import build_model

#: Version of our metadata layout inside safetensors files.
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint/weights file cannot be used as asked (unreadable, incomplete, mismatched)."""


class UnsafeCheckpointError(CheckpointError):
    """The file would need arbitrary unpickling (``weights_only=False``); it is refused."""


class CheckpointMismatchError(CheckpointError):
    """Keys or tensor shapes of a checkpoint do not match the model."""


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights file says about itself.

    Attributes:
        model_name: registry name of the model (None for a foreign safetensors file).
        model_args: constructor keyword arguments.
        metadata: the free-form metadata given to :func:`save_weights`.
        raw: the file's raw string metadata.
    """

    model_name: str | None
    model_args: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# safetensors weights


def _saveable(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, none sharing storage (safetensors refuses sharing)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        whole = storage.nbytes() == t.numel() * t.element_size()
        if ptr in seen or not whole or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(ptr)
        out[key] = t
    return out


def save_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    model_name: str,
    model_args: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write weights as safetensors, with what is needed to rebuild the model.

    Args:
        model_or_state_dict: a module (its ``state_dict()`` is saved) or a state dict.
        path: destination ``.safetensors`` file; replaced atomically.
        model_name: registry name (:data:`models.registry.MODELS`).
        model_args: the constructor's keyword arguments (JSON-serialisable).
        metadata: optional free-form, JSON-serialisable information (source, step, hash...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: a state entry is not a tensor, or ``model_args``/``metadata`` are not JSON.
    """
    state = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    tensors = _saveable(state)
    try:
        header = {
            "format": "pt",
            "anatomix_format": FORMAT_VERSION,
            "model_name": str(model_name),
            "model_args": json.dumps(dict(model_args), sort_keys=True),
            "metadata": json.dumps(metadata or {}, sort_keys=True),
        }
    except TypeError as exc:
        raise TypeError(f"model_args and metadata must be JSON-serialisable: {exc}") from None
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=header)
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """Read a safetensors weights file onto the CPU.

    Args:
        path: a file written by :func:`save_weights` (any safetensors file is accepted; then
            ``info.model_name`` is None).

    Returns:
        ``(state_dict, info)``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a valid safetensors file, or its metadata is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = dict(f.metadata() or {})
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        info = WeightsInfo(
            model_name=raw.get("model_name"),
            model_args=json.loads(raw.get("model_args", "{}")),
            metadata=json.loads(raw.get("metadata", "{}")),
            raw=raw,
        )
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt model_args/metadata JSON: {exc}") from exc
    return state, info


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model stored in ``path`` and load its weights strictly.

    Returns:
        The module (in training mode, as constructed; call ``.eval()`` for inference).

    Raises:
        CheckpointError: the file does not name a model, or keys/shapes do not match.
        KeyError: the model name is not registered.
    """
    return model_from_weights(*load_weights(path), source=path)


def model_from_weights(
    state: dict[str, torch.Tensor], info: WeightsInfo, source: str | os.PathLike = "weights"
) -> nn.Module:
    """:func:`load_model` on what :func:`load_weights` already read (one read of the file when
    the caller also needs ``info``); ``source`` names it in errors."""
    if not info.model_name:
        raise CheckpointError(f"{source} does not record a model_name; use load_weights instead")
    model = build_model(info.model_name, **info.model_args)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(
            f"{source}: weights do not fit {info.model_name}({info.model_args}): {exc}"
        ) from exc
    return model


# --------------------------------------------------------------------------------------------
# pickled torch files


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    Never falls back to ``weights_only=False``: a file that needs arbitrary Python objects to
    be unpickled could run arbitrary code, so it is refused.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file references Python globals beyond tensors and plain
            containers.
        CheckpointError: the file is not a torch checkpoint at all (truncated, wrong format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc.__context__ or exc).strip().splitlines()[0]
        if "global" in detail.lower():
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it contains Python objects other than tensors and "
                f"plain containers ({detail}). Only weights_only=True loading is allowed. If "
                "you trust the file, re-save just its tensors (e.g. its state_dict) with "
                "torch.save or save_weights in a separate, trusted step."
            ) from exc
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({detail})") from exc
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({exc})") from exc
