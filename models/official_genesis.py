"""The official Models Genesis release → :class:`models.unet3d.UNet3D`.

``Genesis_Chest_CT.pt`` (MrGiovanni/ModelsGenesis, Hugging Face ``MrGiovanni/ModelsGenesis``):
``{'epoch', 'state_dict', 'optimizer_state_dict'}`` with ``module.``-prefixed (DataParallel)
keys. A bare state dict and unprefixed keys are accepted too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .official import ImportReport, finish_import, read_release
from .unet3d import GENESIS_UNET


def import_genesis(
    path: Path,
    *,
    out: Path | None,
    strict: bool,
    model_args: dict[str, Any],
    entry: str | None = None,
) -> ImportReport:
    """Read the release (its ``state_dict`` entry, or ``entry``) into a U-Net shaped like it."""
    state, epoch, entry, stripped = read_release(path, entry=entry)
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
        family=GENESIS_UNET.family,
        source=path,
        model=GENESIS_UNET.builder(**args),
        model_name=GENESIS_UNET.model_name,
        model_args=args,
        source_epoch=epoch,
        stripped_prefix=stripped,
        source_entry=entry,
    )
    source = "official Models Genesis release (MrGiovanni/ModelsGenesis)"
    return finish_import(report, state, strict=strict, out=out, source=source)
