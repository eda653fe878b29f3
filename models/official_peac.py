"""The official PEAC release → :class:`models.peac.PEACModel`.

jlianglab/PEAC (Google Drive links in its README): a training checkpoint
``{'student', 'teacher', 'optimizer', 'epoch'}`` (``teacher`` by default, ``entry="student"`` for
the other) with ``module.``-prefixed keys, or a bare state dict. ``swin_model.*`` (Microsoft
Swin = timm 0.5.4 names) becomes ``backbone.*`` through :mod:`models.timm_import`; ``mlp.*``,
``mlp_local.*``, ``head.weight``, ``decoder.0.*`` keep their names; the tied order-head ``bias``
is ``head.bias``. The ViT-B release's layout is unverified: any ``<prefix>patch_embed.proj.weight``
names the backbone.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError
from .official import ImportReport, finish_import, read_release
from .peac import PEAC
from .timm_import import infer_swin, infer_vit, layout_note, map_backbone, start_report

#: Input size of PEAC's Swin release (docs/METHODS.md §3.2), used when the file does not tell.
_PEAC_SWIN_IMG_SIZE = 448


def _expander_dims(state: dict[str, torch.Tensor], name: str) -> list[int]:
    """Output widths of the Linear layers of PEAC's ``name`` MLP (2-D weights ``name.{i}``)."""
    linear = sorted(
        (int(m.group(1)), v)
        for k, v in state.items()
        if (m := re.fullmatch(rf"{re.escape(name)}\.(\d+)\.weight", k)) and v.dim() == 2
    )
    return [int(v.shape[0]) for _, v in linear]


def _infer_args(
    backbone: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], path: Path
) -> dict[str, Any]:
    """PEACModel arguments: backbone from its tensors, input size from the order head (g² cells)
    or, for Swin, the first stage's attention mask; expander widths from the MLP weights."""
    if "layers.0.blocks.0.attn.relative_position_bias_table" in backbone:
        args = infer_swin(backbone, path, "a PEAC")
        patch, window = args.pop("_patch"), args.pop("_window")
        mask = backbone.get("layers.0.blocks.1.attn_mask")  # (windows, w², w²) at stage 0
        if mask is not None and window and mask.dim() == 3:
            args["img_size"] = math.isqrt(mask.shape[0]) * window * patch
        else:
            args["img_size"] = _PEAC_SWIN_IMG_SIZE
    elif "blocks.0.attn.qkv.weight" in backbone:
        args = infer_vit(backbone, path)
    else:
        raise CheckpointError(
            f"{path}: not a PEAC checkpoint: its backbone is neither a Swin nor a ViT "
            f"(keys start {sorted(backbone)[:5]})"
        )
    reduction = args.pop("_reduction")
    head = parts.get("head.weight")
    if head is not None and head.dim() == 2 and math.isqrt(head.shape[0]) ** 2 == head.shape[0]:
        args["img_size"] = math.isqrt(head.shape[0]) * reduction
    args["global_dims"] = _expander_dims(parts, "mlp")
    args["local_dims"] = _expander_dims(parts, "mlp_local")
    args["order_head"] = head is not None or "bias" in parts
    args["decoder"] = "decoder.0.weight" in parts
    return args


def import_peac(
    path: Path,
    *,
    out: Path | None,
    strict: bool,
    model_args: dict[str, Any],
    entry: str | None = None,
) -> ImportReport:
    """Read the release (its ``teacher``, else ``student``/``state_dict``/``model``, or
    ``entry``)."""
    entries = ("teacher", "student", "state_dict", "model")
    state, epoch, entry, stripped = read_release(path, entries, entry)
    # The backbone's name in the file (``swin_model.`` in the release): whatever precedes its
    # patch embedding.
    anchor = next((k for k in state if k.endswith("patch_embed.proj.weight")), None)
    if anchor is None or anchor == "patch_embed.proj.weight":
        raise CheckpointError(
            f"{path}: not a PEAC checkpoint: no prefixed backbone patch embedding "
            f"('swin_model.patch_embed.proj.weight'; keys start {sorted(state)[:5]})"
        )
    prefix = anchor.removesuffix("patch_embed.proj.weight")
    backbone = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    parts = {k: v for k, v in state.items() if not k.startswith(prefix)}
    args = _infer_args(backbone, parts, path)
    report = start_report(
        PEAC.family, path, args, model_args, PEAC.builder, PEAC.model_name,
        epoch=epoch, stripped=stripped, entry=entry,
    )  # fmt: skip
    mapped, old_layout = map_backbone(report, backbone, prefix)
    # The release's order head is a bias-free Linear plus a Parameter ``bias`` tied to
    # ``head.bias``: the state dict holds the same tensor under both names.
    if "bias" in parts:
        bias = parts.pop("bias")
        if "head.bias" not in parts:
            parts["head.bias"] = bias
        else:
            report.dropped.append("bias")
            if not torch.equal(bias, parts["head.bias"]):
                report.mismatched.append("bias: differs from head.bias (the release ties them)")
    mapped.update(parts)
    source = "official PEAC release (jlianglab/PEAC)"
    return finish_import(
        report, mapped, strict=strict, out=out, source=source, metadata=layout_note(old_layout)
    )
