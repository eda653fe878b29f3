"""Released Swin and ViT weights (timm 0.5.4 and Microsoft names) → the installed timm's names
under our ``backbone.`` prefix, and the arguments read off their tensors: what the Ark and PEAC
importers (:mod:`models.official_ark`, :mod:`models.official_peac`) share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .checkpoint import CheckpointError
from .official import ImportReport

#: (stem width, depths) of a Swin → the timm name's variant part.
SWIN_VARIANTS = {
    (96, (2, 2, 6, 2)): "swin_tiny",
    (96, (2, 2, 18, 2)): "swin_small",
    (128, (2, 2, 18, 2)): "swin_base",
    (192, (2, 2, 18, 2)): "swin_large",
}
#: Swin window size → the input size that timm's model names pair with it.
SWIN_IMG_SIZE = {7: 224, 12: 384}
#: Buffers Swin recomputes from its configuration (timm 0.5.4 saved them; timm ≥ 0.6 does not).
SWIN_BUFFERS = ("relative_position_index", "attn_mask")
#: Classifiers of the plain timm model that Ark never uses (its heads are ``omni_heads``).
VESTIGIAL = ("head.", "head_dist.")


def backbone_key(key: str, old_layout: bool) -> str:
    """A released Swin key → the installed timm's name (without our ``backbone.`` prefix).

    timm 0.5.4 (Ark's pin) put the patch merging at the *end* of stage i
    (``layers.{i}.downsample``, i = 0..2); timm ≥ 0.6 puts it at the *start* of stage i + 1.
    The merging itself (norm over 4C, Linear 4C → 2C, same 2×2 gather order) is unchanged.
    """
    if old_layout:
        key = re.sub(
            r"^layers\.(\d+)\.downsample\.",
            lambda m: f"layers.{int(m.group(1)) + 1}.downsample.",
            key,
        )
    return key


def infer_swin(state: dict[str, torch.Tensor], path: Path, family: str) -> dict[str, Any]:
    """Swin arguments read off its (unprefixed) tensors: timm name (None if unknown), the
    input size timm pairs with its window, input channels, and ``_describe`` (for errors).

    Also ``_reduction`` (input pixels per final token: patch · 2^(stages-1)) and ``_depths``.
    """
    stem = state.get("patch_embed.proj.weight")
    if stem is None or stem.dim() != 4:
        raise CheckpointError(
            f"{path}: not {family} checkpoint: no Swin patch embedding 'patch_embed.proj.weight' "
            f"(keys start {sorted(state)[:5]})"
        )
    depths = []
    while blocks := {
        int(m.group(1))
        for k in state
        if (m := re.match(rf"layers\.{len(depths)}\.blocks\.(\d+)\.", k))
    }:
        depths.append(max(blocks) + 1)
    table = state.get("layers.0.blocks.0.attn.relative_position_bias_table")
    window = (math.isqrt(table.shape[0]) + 1) // 2 if table is not None else None
    width, patch = int(stem.shape[0]), int(stem.shape[-1])
    variant = SWIN_VARIANTS.get((width, tuple(depths)))
    img_size = SWIN_IMG_SIZE.get(window)
    name = f"{variant}_patch{patch}_window{window}_{img_size}"
    args: dict[str, Any] = {
        "backbone": name if variant and img_size and timm.is_model(name) else None,
        "img_size": img_size or 224,
        "in_chans": int(stem.shape[1]),
        "_describe": f"Swin with width {width}, depths {tuple(depths)}, window {window}",
        "_reduction": patch * 2 ** max(len(depths) - 1, 0),
        "_patch": patch,
        "_window": window,
    }
    return args


def map_backbone(
    report: ImportReport, state: dict[str, torch.Tensor], source_prefix: str = ""
) -> tuple[dict[str, torch.Tensor], bool]:
    """Released (timm 0.5.4 / Microsoft) Swin or ViT keys → ours under ``backbone.``.

    ``state`` holds the backbone's keys without ``source_prefix`` (the file's name for the
    backbone, used in the report). Vestigial classifiers and recomputed Swin buffers are dropped;
    each dropped buffer must equal the model's, or the report says why it differs.

    Returns:
        ``(mapped tensors, old_layout)``: whether the file had timm 0.5.4's stage layout.
    """
    expected = report.model.state_dict()
    ours = dict(report.model.named_buffers())
    old_layout = "layers.0.downsample.reduction.weight" in state
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(VESTIGIAL):
            report.dropped.append(source_prefix + key)
            continue
        new = "backbone." + backbone_key(key, old_layout)
        if key.rsplit(".", 1)[-1] not in SWIN_BUFFERS or new in expected:
            mapped[new] = value
            continue
        # A recomputed buffer: not loaded, but it must equal ours, or the window/shift/input
        # size the file was trained with differs from the model's.
        report.dropped.append(source_prefix + key)
        mine = ours.get(new)
        if mine is None:
            report.mismatched.append(f"{new}: buffer in file, none in the model (window shift?)")
        elif mine.shape != value.shape:
            report.mismatched.append(
                f"{new}: file buffer {tuple(value.shape)} vs model {tuple(mine.shape)} "
                "(window or input size)"
            )
        elif not torch.equal(mine.to(value.dtype), value):
            report.mismatched.append(f"{new}: file buffer values differ from the model's")
    return mapped, old_layout


#: (width, depth) of a ViT → the timm name's variant part.
VIT_VARIANTS = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large"}


def infer_vit(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """ViT arguments read off its (unprefixed) tensors (PEAC⁻³'s layout is unverified)."""
    stem = state["patch_embed.proj.weight"]
    width, patch = int(stem.shape[0]), int(stem.shape[-1])
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    variant = VIT_VARIANTS.get((width, depth))
    name = f"vit_{variant}_patch{patch}_224"
    prefix = sum(k in state for k in ("cls_token", "dist_token"))
    pos = state.get("pos_embed")
    grid = math.isqrt(pos.shape[1] - prefix) if pos is not None and pos.dim() == 3 else None
    return {
        "backbone": name if variant and timm.is_model(name) else None,
        "img_size": grid * patch if grid else 224,
        "in_chans": int(stem.shape[1]),
        "_describe": f"ViT with width {width}, depth {depth}, patch {patch}",
        "_reduction": patch,
    }


def start_report(
    family: str,
    path: Path,
    args: dict[str, Any],
    model_args: dict[str, Any],
    builder: Callable[..., nn.Module],
    model_name: str,
    *,
    epoch: int | None,
    stripped: str | None,
    entry: str | None,
) -> ImportReport:
    """The set-up Ark and PEAC share once their arguments are read off the file: the caller's
    ``model_args`` win, an unknown backbone is refused (naming what was found), the model is
    built and the report started."""
    describe = args.pop("_describe")
    args.update(model_args)
    if args["backbone"] is None:
        raise CheckpointError(
            f"{path}: {describe} is not a backbone this importer knows; pass "
            "model_args={'backbone': <timm model name>}"
        )
    return ImportReport(
        family=family,
        source=path,
        model=builder(**args),
        model_name=model_name,
        model_args=args,
        source_epoch=epoch,
        stripped_prefix=stripped,
        source_entry=entry,
    )


def layout_note(old_layout: bool) -> dict:
    """The weights file's record of which timm Swin layout the release used."""
    return {"source_layout": "timm 0.5.4" if old_layout else "timm >= 0.6"}
