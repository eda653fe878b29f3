"""Import officially released checkpoints into our models and our safetensors format.

One importer per method family in :data:`OFFICIAL_IMPORTERS`, behind :func:`import_official`.
Each reads the released file with ``weights_only=True`` only, maps its key names onto ours,
checks every key and tensor shape, and returns an :class:`ImportReport`.

Families:
    ``genesis``: Models Genesis ``Genesis_Chest_CT.pt`` (MrGiovanni/ModelsGenesis, Hugging Face
    ``MrGiovanni/ModelsGenesis``): ``{'epoch', 'state_dict', 'optimizer_state_dict'}`` with
    ``module.``-prefixed (DataParallel) keys → :class:`models.unet3d.UNet3D`. A bare state dict
    and unprefixed keys are accepted too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, CheckpointMismatchError, load_torch_file, save_weights
from .registry import build_model


@dataclass
class ImportReport:
    """Outcome of importing an official checkpoint.

    Attributes:
        family: importer family (e.g. ``"genesis"``).
        source: the file read.
        model: our model with the imported weights (None only if construction failed).
        model_name: registry name of ``model``.
        model_args: its constructor keyword arguments.
        missing: model keys that the file lacks.
        unexpected: file keys that the model lacks (after renaming).
        mismatched: ``"key: file (…) vs model (…)"`` for same-named tensors of different shape.
        loaded: number of tensors copied.
        source_epoch: the epoch stored in the file, if any.
        stripped_prefix: the key prefix removed (``"module."``) or None.
        filled: keys absent from the file but harmless to default (``num_batches_tracked``).
        out: safetensors file written, if any.
    """

    family: str
    source: Path
    model: nn.Module | None
    model_name: str
    model_args: dict[str, Any]
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    loaded: int = 0
    source_epoch: int | None = None
    stripped_prefix: str | None = None
    filled: list[str] = field(default_factory=list)
    out: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every key matched by name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        epoch = f", epoch {self.source_epoch}" if self.source_epoch is not None else ""
        status = "OK" if self.ok else "MISMATCH"
        lines = [
            f"{self.family} import of {self.source.name}{epoch} into {self.model_name}: {status}; "
            + (f"{self.loaded} tensors loaded" if self.loaded else "nothing loaded")
            + (f", prefix {self.stripped_prefix!r} stripped" if self.stripped_prefix else "")
        ]
        for title, keys in (
            ("missing from file", self.missing),
            ("unexpected in file", self.unexpected),
            ("wrong shape", self.mismatched),
            ("absent, defaulted", self.filled),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (
                    f", … (+{len(keys) - 10})" if len(keys) > 10 else ""
                )
                lines.append(f"  {title} ({len(keys)}): {shown}")
        if self.out is not None:
            lines.append(f"  written to {self.out}")
        return "\n".join(lines)


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """Find the state dict (and epoch) in a loaded training checkpoint or bare state dict."""
    epoch = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        epoch = obj.get("epoch")
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        top = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path}: expected a state dict or {{'state_dict': ...}} checkpoint, got {top}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries are not tensors: {bad[:5]}")
    return dict(obj), int(epoch) if isinstance(epoch, int) else None


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict, str | None]:
    if not any(k.startswith(prefix) for k in state):
        return state, None
    return {k.removeprefix(prefix): v for k, v in state.items()}, prefix


def _match(
    report: ImportReport, state: dict[str, torch.Tensor], *, strict: bool
) -> dict[str, torch.Tensor]:
    """Fill the report's key/shape comparison; return the tensors that can be loaded."""
    expected = report.model.state_dict()
    absent = sorted(set(expected) - set(state))
    # Older PyTorch did not save BatchNorm's step counter; it does not affect outputs.
    report.filled = [k for k in absent if k.endswith("num_batches_tracked")]
    report.missing = [k for k in absent if k not in report.filled]
    report.unexpected = sorted(set(state) - set(expected))
    usable = {}
    for key in sorted(set(state) & set(expected)):
        got, want = tuple(state[key].shape), tuple(expected[key].shape)
        if got != want:
            report.mismatched.append(f"{key}: file {got} vs model {want}")
        else:
            usable[key] = state[key]
    if strict and not report.ok:
        err = CheckpointMismatchError(
            f"{report}\n(pass strict=False to import the matching tensors anyway)"
        )
        err.report = report
        raise err
    return usable


def _import_genesis(
    path: Path, *, out: Path | None, strict: bool, model_args: dict[str, Any]
) -> ImportReport:
    state, epoch = _unwrap(load_torch_file(path), path)
    state, stripped = _strip_prefix(state, "module.")
    head = state.get("out_tr.final_conv.weight")
    stem = state.get("down_tr64.ops.0.conv1.weight")
    args: dict[str, Any] = {
        "n_class": int(head.shape[0]) if head is not None and head.dim() == 5 else 1,
        "in_channels": int(stem.shape[1]) if stem is not None and stem.dim() == 5 else 1,
        "act": "relu",
        "norm": "batch_stats",
        "out_activation": "sigmoid",
    }
    args.update(model_args)
    report = ImportReport(
        family="genesis",
        source=path,
        model=build_model("unet3d", **args),
        model_name="unet3d",
        model_args=args,
        source_epoch=epoch,
        stripped_prefix=stripped,
    )
    usable = _match(report, state, strict=strict)
    report.model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if out is not None:
        meta = {
            "source": "official Models Genesis release (MrGiovanni/ModelsGenesis)",
            "source_file": path.name,
            "source_epoch": epoch,
            "import_missing": report.missing,
            "import_mismatched": report.mismatched,
        }
        report.out = save_weights(
            report.model, out, model_name="unet3d", model_args=args, metadata=meta
        )
    return report


#: family name → importer ``(path, *, out, strict, model_args) -> ImportReport``.
OFFICIAL_IMPORTERS: dict[str, Callable[..., ImportReport]] = {
    "genesis": _import_genesis,
}


def import_official(
    family: str,
    path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    strict: bool = True,
    model_args: dict[str, Any] | None = None,
) -> ImportReport:
    """Load an officially released checkpoint into our model (and optionally our format).

    Args:
        family: a key of :data:`OFFICIAL_IMPORTERS` (``"genesis"``).
        path: the released file (e.g. ``Genesis_Chest_CT.pt``); read with ``weights_only=True``.
        out: if given, also write our safetensors weights file there (atomically).
        strict: raise on any missing/unexpected key or shape mismatch; with False, load the
            matching tensors, leave the rest initialised, and describe it in the report.
        model_args: constructor arguments overriding those inferred from the file (e.g.
            ``{"norm": "standard"}``).

    Returns:
        :class:`ImportReport`; ``str(report)`` is a readable summary.

    Raises:
        KeyError: unknown family; the message lists the valid ones.
        CheckpointMismatchError: ``strict`` and keys/shapes differ (``err.report`` holds the
            report).
        UnsafeCheckpointError: the file needs arbitrary unpickling.
        CheckpointError: the file's layout is not recognised.
    """
    try:
        importer = OFFICIAL_IMPORTERS[family]
    except KeyError:
        raise KeyError(
            f"unknown official family {family!r}; valid: {', '.join(sorted(OFFICIAL_IMPORTERS))}"
        ) from None
    return importer(
        Path(path),
        out=Path(out) if out is not None else None,
        strict=strict,
        model_args=dict(model_args or {}),
    )
