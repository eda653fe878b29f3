"""The official Foundation Ark release → :class:`models.ark.ArkModel`.

jlianglab/Ark (weights by request form): the released teacher
``ark6_teacher_ep200_swinb_projector1376_mlp.pth.tar`` (a bare state dict) or a full training
checkpoint ``{'epoch', 'lossMIN', 'state_dict', 'teacher', 'optimizer', 'scheduler'}``
(``teacher`` is taken). Its Swin keys use timm 0.5.4 names, mapped by :mod:`models.timm_import`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .ark import ARK
from .checkpoint import CheckpointError
from .official import ImportReport, finish_import, read_release
from .timm_import import infer_swin, layout_note, map_backbone, start_report

#: the file's keys that are Ark's own (not the backbone's); they keep their names
_ARK_PARTS = ("projector.", "omni_heads.")


def _infer_args(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """ArkModel arguments read off the tensors: Swin variant, projector kind, head widths."""
    args = infer_swin(state, path, "an Ark")
    del args["_reduction"], args["_patch"], args["_window"]
    if "projector.0.weight" in state:
        args["projector"], args["embed_dim"] = "mlp", int(state["projector.0.weight"].shape[0])
    elif "projector.weight" in state:
        args["projector"], args["embed_dim"] = "linear", int(state["projector.weight"].shape[0])
    else:
        args["projector"] = "none"
    heads = sorted(
        int(m.group(1)) for k in state if (m := re.fullmatch(r"omni_heads\.(\d+)\.weight", k))
    )
    if heads != list(range(len(heads))):
        raise CheckpointError(f"{path}: omni_heads are numbered {heads}, expected 0..n-1")
    args["head_sizes"] = [int(state[f"omni_heads.{i}.weight"].shape[0]) for i in heads]
    return args


def import_ark(
    path: Path,
    *,
    out: Path | None,
    strict: bool,
    model_args: dict[str, Any],
    entry: str | None = None,
) -> ImportReport:
    """Read the release (its ``teacher``, else ``state_dict``/``model``, or ``entry``)."""
    state, epoch, entry, stripped = read_release(path, ("teacher", "state_dict", "model"), entry)
    args = _infer_args(state, path)
    report = start_report(
        ARK.family, path, args, model_args, ARK.builder, ARK.model_name,
        epoch=epoch, stripped=stripped, entry=entry,
    )  # fmt: skip
    backbone = {k: v for k, v in state.items() if not k.startswith(_ARK_PARTS)}
    mapped, old_layout = map_backbone(report, backbone)
    mapped.update((k, v) for k, v in state.items() if k.startswith(_ARK_PARTS))
    source = "official Foundation Ark release (jlianglab/Ark)"
    return finish_import(
        report, mapped, strict=strict, out=out, source=source, metadata=layout_note(old_layout)
    )
