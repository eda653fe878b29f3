"""Import officially released checkpoints into our models and our safetensors format.

The common steps live here — read the file with ``weights_only=True`` only, find its state dict,
compare every key and tensor shape with our model, load, save — behind one front door,
:func:`import_official`. Each family's importer sits beside its model and is declared in its
family descriptor (:attr:`models.family.Family.importer`): :mod:`models.official_genesis`,
:mod:`models.official_ark`, :mod:`models.official_peac`; the Swin/ViT key mapping the last two
share is :mod:`models.timm_import`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, CheckpointMismatchError, load_torch_file, save_weights


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
        dropped: file keys deliberately not loaded (an unused classifier, buffers the model
            recomputes); they do not make the import fail.
        source_entry: the checkpoint entry read (``"teacher"``, ``"state_dict"``), if any.
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
    dropped: list[str] = field(default_factory=list)
    source_entry: str | None = None

    @property
    def ok(self) -> bool:
        """True when every key matched by name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        epoch = f", epoch {self.source_epoch}" if self.source_epoch is not None else ""
        if self.source_entry is not None:
            epoch += f", entry {self.source_entry!r}"
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
            ("dropped (unused)", self.dropped),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (
                    f", … (+{len(keys) - 10})" if len(keys) > 10 else ""
                )
                lines.append(f"  {title} ({len(keys)}): {shown}")
        if self.out is not None:
            lines.append(f"  written to {self.out}")
        return "\n".join(lines)


def unwrap(
    obj: Any,
    path: Path,
    entries: tuple[str, ...] = ("state_dict",),
    requested: str | None = None,
) -> tuple[dict[str, torch.Tensor], int | None, str | None]:
    """Find the state dict, epoch and entry name in a training checkpoint or bare state dict.

    ``entries`` are the checkpoint keys that may hold the state dict, most wanted first;
    ``requested`` names the one entry to take (it must exist).
    """
    if requested is not None:
        if not (isinstance(obj, Mapping) and isinstance(obj.get(requested), Mapping)):
            held = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: no {requested!r} entry in the file (it holds {held})")
        entries = (requested,)
    epoch = entry = None
    if isinstance(obj, Mapping):
        entry = next((e for e in entries if isinstance(obj.get(e), Mapping)), None)
        if entry is not None:
            epoch = obj.get("epoch")
            obj = obj[entry]
    if not isinstance(obj, Mapping) or not obj:
        top = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        wanted = " or ".join(f"{{{e!r}: ...}}" for e in entries)
        raise CheckpointError(f"{path}: expected a state dict or {wanted} checkpoint, got {top}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries are not tensors: {bad[:5]}")
    return dict(obj), int(epoch) if isinstance(epoch, int) else None, entry


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict, str | None]:
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


def read_release(
    path: Path, entries: tuple[str, ...] = ("state_dict",), entry: str | None = None
) -> tuple[dict[str, torch.Tensor], int | None, str | None, str | None]:
    """The prelude every importer shares: read ``path`` safely, take its state dict (``entry``,
    else the first of ``entries`` present) and strip a DataParallel ``module.`` prefix →
    ``(state, epoch, entry, stripped prefix)``."""
    state, epoch, entry = unwrap(load_torch_file(path), path, entries=entries, requested=entry)
    state, stripped = strip_prefix(state, "module.")
    return state, epoch, entry, stripped


def official_families() -> dict:
    """Method family → its descriptor with an official importer (:mod:`models.registry`)."""
    from .registry import official_families as families  # the registry imports the models

    return families()


def finish_import(
    report: ImportReport,
    state: dict[str, torch.Tensor],
    *,
    strict: bool,
    out: Path | None,
    source: str,
    metadata: dict | None = None,
) -> ImportReport:
    """Compare ``state`` (already in our key names) with ``report.model``, load what matches
    and, when ``out`` is given, write our weights file with where they came from."""
    usable = _match(report, state, strict=strict)
    report.model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if out is not None:
        meta = {
            "source": source,
            "source_file": Path(report.source).name,
            "source_entry": report.source_entry,
            "source_epoch": report.source_epoch,
            **(metadata or {}),
            "import_dropped": report.dropped,
            "import_missing": report.missing,
            "import_mismatched": report.mismatched,
        }
        report.out = save_weights(
            report.model, out, model_name=report.model_name, model_args=report.model_args,
            metadata=meta,
        )  # fmt: skip
    return report


def import_official(
    family: str,
    path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    strict: bool = True,
    model_args: dict[str, Any] | None = None,
    entry: str | None = None,
) -> ImportReport:
    """Load an officially released checkpoint into our model (and optionally our format).

    Args:
        family: a method family with a released checkpoint (:func:`official_families`).
        path: the released file (e.g. ``Genesis_Chest_CT.pt``); read with ``weights_only=True``.
        out: if given, also write our safetensors weights file there (atomically).
        strict: raise on any missing/unexpected key or shape mismatch; with False, load the
            matching tensors, leave the rest initialised, and describe it in the report.
        model_args: constructor arguments overriding those inferred from the file (e.g.
            ``{"norm": "standard"}``).
        entry: the training checkpoint's entry to read (e.g. ``"student"``); by default the
            family's usual one (``teacher`` for Ark and PEAC, ``state_dict`` for Genesis).

    Returns:
        :class:`ImportReport`; ``str(report)`` is a readable summary.

    Raises:
        KeyError: unknown family; the message lists the valid ones.
        CheckpointMismatchError: ``strict`` and keys/shapes differ (``err.report`` holds the
            report).
        UnsafeCheckpointError: the file needs arbitrary unpickling.
        CheckpointError: the file's layout is not recognised, or it has no such ``entry``.
    """
    importers = official_families()
    if family not in importers:
        raise KeyError(f"unknown official family {family!r}; valid: {', '.join(importers)}")
    return importers[family].importer(
        Path(path),
        out=Path(out) if out is not None else None,
        strict=strict,
        model_args=dict(model_args or {}),
        entry=entry,
    )
