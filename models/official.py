"""Import officially released checkpoints into our models and our safetensors format.

One importer per method family in :data:`OFFICIAL_IMPORTERS`, behind :func:`import_official`.
Each reads the released file with ``weights_only=True`` only, maps its key names onto ours,
checks every key and tensor shape, and returns an :class:`ImportReport`.

Families:
    ``genesis``: Models Genesis ``Genesis_Chest_CT.pt`` (MrGiovanni/ModelsGenesis, Hugging Face
    ``MrGiovanni/ModelsGenesis``): ``{'epoch', 'state_dict', 'optimizer_state_dict'}`` with
    ``module.``-prefixed (DataParallel) keys → :class:`models.unet3d.UNet3D`. A bare state dict
    and unprefixed keys are accepted too.
    ``ark``: Foundation Ark (jlianglab/Ark, weights by request form): the released teacher
    ``ark6_teacher_ep200_swinb_projector1376_mlp.pth.tar`` (a bare state dict) or a full
    training checkpoint ``{'epoch', 'lossMIN', 'state_dict', 'teacher', 'optimizer',
    'scheduler'}`` (``teacher`` is taken) → :class:`models.ark.ArkModel`. Its Swin keys use
    timm 0.5.4 names and are mapped to the installed timm (see :func:`_ark_backbone_key`).
    ``peac``: PEAC (jlianglab/PEAC, Google Drive links in its README): a training checkpoint
    ``{'student', 'teacher', 'optimizer', 'epoch'}`` (``teacher`` by default, ``entry="student"``
    for the other) with ``module.``-prefixed keys, or a bare state dict →
    :class:`models.peac.PEACModel`. ``swin_model.*`` (Microsoft Swin = timm 0.5.4 names) becomes
    ``backbone.*`` through the Ark mapping; ``mlp.*``, ``mlp_local.*``, ``head.weight``,
    ``decoder.0.*`` keep their names; the tied order-head ``bias`` is ``head.bias``. The ViT-B
    release's layout is unverified: any ``<prefix>patch_embed.proj.weight`` names the backbone.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
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


def _unwrap(
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
    path: Path,
    *,
    out: Path | None,
    strict: bool,
    model_args: dict[str, Any],
    entry: str | None = None,
) -> ImportReport:
    state, epoch, _ = _unwrap(load_torch_file(path), path, requested=entry)
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


# --------------------------------------------------------------------------------------------
# Foundation Ark

#: (stem width, depths) of a Swin → the timm name's variant part.
_SWIN_VARIANTS = {
    (96, (2, 2, 6, 2)): "swin_tiny",
    (96, (2, 2, 18, 2)): "swin_small",
    (128, (2, 2, 18, 2)): "swin_base",
    (192, (2, 2, 18, 2)): "swin_large",
}
#: Swin window size → the input size that timm's model names pair with it.
_SWIN_IMG_SIZE = {7: 224, 12: 384}
#: Buffers Swin recomputes from its configuration (timm 0.5.4 saved them; timm ≥ 0.6 does not).
_SWIN_BUFFERS = ("relative_position_index", "attn_mask")
#: Classifiers of the plain timm model that Ark never uses (its heads are ``omni_heads``).
_VESTIGIAL = ("head.", "head_dist.")


def _ark_backbone_key(key: str, old_layout: bool) -> str:
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


def _infer_swin(state: dict[str, torch.Tensor], path: Path, family: str) -> dict[str, Any]:
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
    variant = _SWIN_VARIANTS.get((width, tuple(depths)))
    img_size = _SWIN_IMG_SIZE.get(window)
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


def _infer_ark_args(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """ArkModel arguments read off the tensors: Swin variant, projector kind, head widths."""
    args = _infer_swin(state, path, "an Ark")
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


def _map_backbone(
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
        if key.startswith(_VESTIGIAL):
            report.dropped.append(source_prefix + key)
            continue
        new = "backbone." + _ark_backbone_key(key, old_layout)
        if key.rsplit(".", 1)[-1] not in _SWIN_BUFFERS or new in expected:
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


def _import_ark(
    path: Path,
    *,
    out: Path | None,
    strict: bool,
    model_args: dict[str, Any],
    entry: str | None = None,
) -> ImportReport:
    state, epoch, entry = _unwrap(
        load_torch_file(path), path, entries=("teacher", "state_dict", "model"), requested=entry
    )
    state, stripped = _strip_prefix(state, "module.")
    args = _infer_ark_args(state, path)
    describe = args.pop("_describe")
    args.update(model_args)
    if args["backbone"] is None:
        raise CheckpointError(
            f"{path}: {describe} is not a Swin this importer knows; pass "
            "model_args={'backbone': <timm model name>}"
        )
    report = ImportReport(
        family="ark",
        source=path,
        model=build_model("ark", **args),
        model_name="ark",
        model_args=args,
        source_epoch=epoch,
        stripped_prefix=stripped,
        source_entry=entry,
    )
    heads = ("projector.", "omni_heads.")
    mapped, old_layout = _map_backbone(
        report, {k: v for k, v in state.items() if not k.startswith(heads)}
    )
    mapped.update((k, v) for k, v in state.items() if k.startswith(heads))
    source = "official Foundation Ark release (jlianglab/Ark)"
    return _load_and_save(report, mapped, strict, out, "ark", source, old_layout)


# --------------------------------------------------------------------------------------------
# PEAC

#: (width, depth) of a ViT → the timm name's variant part.
_VIT_VARIANTS = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large"}
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


def _infer_vit(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """ViT arguments read off its (unprefixed) tensors (PEAC⁻³'s layout is unverified)."""
    stem = state["patch_embed.proj.weight"]
    width, patch = int(stem.shape[0]), int(stem.shape[-1])
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    variant = _VIT_VARIANTS.get((width, depth))
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


def _infer_peac_args(
    backbone: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], path: Path
) -> dict[str, Any]:
    """PEACModel arguments: backbone from its tensors, input size from the order head (g² cells)
    or, for Swin, the first stage's attention mask; expander widths from the MLP weights."""
    if "layers.0.blocks.0.attn.relative_position_bias_table" in backbone:
        args = _infer_swin(backbone, path, "a PEAC")
        patch, window = args.pop("_patch"), args.pop("_window")
        mask = backbone.get("layers.0.blocks.1.attn_mask")  # (windows, w², w²) at stage 0
        if mask is not None and window and mask.dim() == 3:
            args["img_size"] = math.isqrt(mask.shape[0]) * window * patch
        else:
            args["img_size"] = _PEAC_SWIN_IMG_SIZE
    elif "blocks.0.attn.qkv.weight" in backbone:
        args = _infer_vit(backbone, path)
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


def _import_peac(
    path: Path,
    *,
    out: Path | None,
    strict: bool,
    model_args: dict[str, Any],
    entry: str | None = None,
) -> ImportReport:
    state, epoch, entry = _unwrap(
        load_torch_file(path),
        path,
        entries=("teacher", "student", "state_dict", "model"),
        requested=entry,
    )
    state, stripped = _strip_prefix(state, "module.")
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
    args = _infer_peac_args(backbone, parts, path)
    describe = args.pop("_describe")
    args.update(model_args)
    if args["backbone"] is None:
        raise CheckpointError(
            f"{path}: {describe} is not a backbone this importer knows; pass "
            "model_args={'backbone': <timm model name>}"
        )
    report = ImportReport(
        family="peac",
        source=path,
        model=build_model("peac", **args),
        model_name="peac",
        model_args=args,
        source_epoch=epoch,
        stripped_prefix=stripped,
        source_entry=entry,
    )
    mapped, old_layout = _map_backbone(report, backbone, prefix)
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
    return _load_and_save(report, mapped, strict, out, "peac", source, old_layout)


#: family name → importer ``(path, *, out, strict, model_args, entry) -> ImportReport``.
OFFICIAL_IMPORTERS: dict[str, Callable[..., ImportReport]] = {
    "genesis": _import_genesis,
    "ark": _import_ark,
    "peac": _import_peac,
}


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
        family: a key of :data:`OFFICIAL_IMPORTERS` (``"genesis"``, ``"ark"``, ``"peac"``).
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
        entry=entry,
    )


def _load_and_save(report, mapped, strict, out, name, source, old_layout) -> ImportReport:
    """Load the checked tensors of a Swin-based import into ``report.model``; save when asked."""
    usable = _match(report, mapped, strict=strict)
    report.model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if out is not None:
        meta = {
            "source": source,
            "source_file": Path(report.source).name,
            "source_entry": report.source_entry,
            "source_epoch": report.source_epoch,
            "source_layout": "timm 0.5.4" if old_layout else "timm >= 0.6",
            "import_dropped": report.dropped,
            "import_missing": report.missing,
            "import_mismatched": report.mismatched,
        }
        report.out = save_weights(
            report.model, out, model_name=name, model_args=report.model_args, metadata=meta
        )
    return report
