"""Models Genesis 3D U-Net and its encoder-only classifier.

Paper: Zhou, Sodha, Rahman Siddiquee, Feng, Tajbakhsh, Gotway, Liang, "Models Genesis: Generic
Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019; extended in Medical Image Analysis
67:101840 (2021), arXiv:2004.07882. Original code: https://github.com/MrGiovanni/ModelsGenesis
(``pytorch/unet3d.py``, itself adapted from mattmacy/vnet.pytorch).

Written from the description in docs/METHODS.md §1.1, not copied. Module names are chosen so that
the ``state_dict`` keys equal those of the released ``Genesis_Chest_CT.pt`` once its ``module.``
(DataParallel) prefix is stripped::

    down_tr{64,128,256,512}.ops.{0,1}.conv1.{weight,bias}
    down_tr{64,128,256,512}.ops.{0,1}.bn1.{weight,bias,running_mean,running_var,num_batches_tracked}
    up_tr{256,128,64}.up_conv.{weight,bias}
    up_tr{256,128,64}.ops.{0,1}.{conv1,bn1}.…
    out_tr.final_conv.{weight,bias}

Tensors are ``(N, C, H, W, D)``: rows × cols × slices, depth *last*, as in the official code
(a 64×64×32 CT cube is ``(N, 1, 64, 64, 32)``). There are three 2× poolings, so H, W and D must
be multiples of 8.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from imaging.outputs import OutputSpec
from imaging.preprocess import genesis_ct

from .family import BATCH_NORM_MODES, ExportGraph, Family, GraphOptions, card_labels, register

NORMS = ("batch_stats", "standard")
ACTS = ("relu", "elu")
#: Encoder blocks, shared by :class:`UNet3D` and :class:`GenesisClassifier` (same key names).
ENCODER_BLOCKS = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
#: Total down-sampling factor of the encoder (three 2× max-pools; the last block does not pool).
DOWNSAMPLE = 8


class ContBatchNorm3d(nn.modules.batchnorm._BatchNorm):
    """BatchNorm3d that normalises with the *batch* statistics in train and eval mode alike.

    This is the released Models Genesis behaviour: its layer always calls ``F.batch_norm`` with
    ``training=True``. Outputs therefore depend on the other samples in the batch, also at test
    time; a faithful fine-tuning/evaluation must keep that. Running statistics are still tracked
    (in training mode only — the official layer also updated them in eval mode, which changes
    nothing it outputs but lets evaluation leak into the buffers) so the same weights can be
    used with ordinary :class:`torch.nn.BatchNorm3d` semantics (``norm="standard"``).

    Parameters and buffers are those of :class:`torch.nn.BatchNorm3d`.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected a 5D (N, C, H, W, D) input, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``(N, C, H, W, D)`` with per-channel mean/variance over N, H, W, D."""
        self._check_input_dim(input)
        update = self.training and self.track_running_stats
        factor = 0.0 if self.momentum is None else self.momentum
        if update and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in _BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            input,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            True,  # always batch statistics, as released
            factor,
            self.eps,
        )


class SampleNorm3d(nn.Module):
    """Per-sample, per-channel normalisation over (H, W, D) with the affine of a batch norm.

    Equals :class:`~models.unet3d.ContBatchNorm3d` applied to a batch of one sample, whatever the
    real batch holds: the answer a study gets when it is run alone.
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.weight = nn.Parameter(source.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(source.bias.detach().clone(), requires_grad=False)
        self.eps = float(source.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


def _running_norm(source: nn.modules.batchnorm._BatchNorm) -> nn.BatchNorm3d:
    bn = nn.BatchNorm3d(source.num_features, eps=source.eps, momentum=source.momentum)
    bn.load_state_dict(source.state_dict())
    return bn.eval()


def batch_independent(model: nn.Module, mode: str) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose batch-statistics norms no longer look at the rest of the batch.

    Models Genesis (as released) normalises with the statistics of the whole batch even at test
    time, so a study's prediction would change with whatever shares its batch in a server.

    Args:
        model: any module; only :class:`ContBatchNorm3d` layers are replaced.
        mode: ``"per_sample"`` (statistics of each sample alone — what the PyTorch model gives
            at batch size 1, closest to how it was trained) or ``"running"`` (the running mean
            and variance tracked during training: ordinary eval-mode batch norm).

    Returns:
        ``(copy, n_replaced)``.
    """
    if mode not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {mode!r}")
    model = copy.deepcopy(model)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ContBatchNorm3d):
                new = SampleNorm3d(child) if mode == "per_sample" else _running_norm(child)
                setattr(parent, name, new)
                replaced += 1
    return model.eval(), replaced


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch_stats":
        return ContBatchNorm3d(channels)
    if norm == "standard":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def _activation(act: str) -> nn.Module:
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "elu":
        return nn.ELU(inplace=True)
    raise ValueError(f"unknown act {act!r}; valid: {', '.join(ACTS)} (prelu is not supported)")


class LUConv(nn.Module):
    """Conv3d(k3, p1, bias) → batch norm → activation; ``(N, C_in, …) → (N, C_out, …)``."""

    def __init__(self, in_channels: int, out_channels: int, *, act: str, norm: str):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = _norm_layer(norm, out_channels)
        self.activation = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn1(self.conv1(x)))


class DownTransition(nn.Module):
    """Two LUConvs (``in → mid → out``), then an optional 2× max-pool.

    Returns ``(pooled, skip)`` where ``skip`` is the pre-pool feature ``(N, out, H, W, D)`` and
    ``pooled`` is ``(N, out, H/2, W/2, D/2)`` (or ``skip`` itself when ``pool=False``).
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        pool: bool,
        act: str,
        norm: str,
    ):
        super().__init__()
        self.ops = nn.Sequential(
            LUConv(in_channels, mid_channels, act=act, norm=norm),
            LUConv(mid_channels, out_channels, act=act, norm=norm),
        )
        self.pool = nn.MaxPool3d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.ops(x)
        return self.pool(skip), skip


class UpTransition(nn.Module):
    """ConvTranspose3d(k2, s2) upsampling, concatenation with the skip, then two LUConvs.

    ``(N, in, h, w, d)`` and skip ``(N, skip, 2h, 2w, 2d)`` → ``(N, out, 2h, 2w, 2d)``.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, *, act: str, norm: str
    ):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_channels, in_channels, kernel_size=2, stride=2)
        self.ops = nn.Sequential(
            LUConv(in_channels + skip_channels, out_channels, act=act, norm=norm),
            LUConv(out_channels, out_channels, act=act, norm=norm),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class OutputTransition(nn.Module):
    """1×1×1 convolution to ``n_class`` channels (the sigmoid is applied by :class:`UNet3D`)."""

    def __init__(self, in_channels: int, n_class: int):
        super().__init__()
        self.final_conv = nn.Conv3d(in_channels, n_class, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


class _GenesisEncoder(nn.Module):
    """The Models Genesis down path as top-level ``down_tr*`` attributes (official key names)."""

    def __init__(self, *, in_channels: int, act: str, norm: str):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        self.down_tr64 = DownTransition(in_channels, 32, 64, pool=True, act=act, norm=norm)
        self.down_tr128 = DownTransition(64, 64, 128, pool=True, act=act, norm=norm)
        self.down_tr256 = DownTransition(128, 128, 256, pool=True, act=act, norm=norm)
        self.down_tr512 = DownTransition(256, 256, 512, pool=False, act=act, norm=norm)
        self.in_channels = in_channels

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (N, {self.in_channels}, H, W, D), got {tuple(x.shape)}"
            )
        if any(int(s) % DOWNSAMPLE for s in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be divisible by {DOWNSAMPLE} in each "
                "dimension (three 2x poolings)"
            )

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(N, C, H, W, D)`` → bottleneck ``(N, 512, H/8, W/8, D/8)`` and skips 64/128/256 ch."""
        self._check_input(x)
        skips = []
        for name in ENCODER_BLOCKS[:-1]:
            x, skip = getattr(self, name)(x)
            skips.append(skip)
        bottleneck, _ = self.down_tr512(x)
        return bottleneck, skips

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder feature (official ``out512``).

        Args:
            x: ``(N, C_in, H, W, D)``, H, W, D divisible by 8.

        Returns:
            ``(N, 512, H/8, W/8, D/8)``.
        """
        return self._encode(x)[0]


class UNet3D(_GenesisEncoder):
    """Models Genesis 3D U-Net (``UNet3D(n_class=1, act='relu')`` of the official code).

    Args:
        n_class: output channels of the 1×1×1 head.
        in_channels: input channels (1 for CT, as released).
        act: hidden activation, ``"relu"`` (released) or ``"elu"``.
        norm: ``"batch_stats"`` (default, faithful :class:`ContBatchNorm3d`: batch statistics
            in eval mode too) or ``"standard"`` (:class:`torch.nn.BatchNorm3d`, running
            statistics in eval). Both have the same parameter/buffer names.
        out_activation: ``"sigmoid"`` (released; outputs in [0, 1]) or ``None`` (logits, e.g.
            for BCE-with-logits fine-tuning or export of a logit head).
    """

    def __init__(
        self,
        *,
        n_class: int = 1,
        in_channels: int = 1,
        act: str = "relu",
        norm: str = "batch_stats",
        out_activation: str | None = "sigmoid",
    ):
        super().__init__(in_channels=in_channels, act=act, norm=norm)
        if out_activation not in ("sigmoid", None):
            raise ValueError(f"out_activation must be 'sigmoid' or None, got {out_activation!r}")
        self.up_tr256 = UpTransition(512, 256, 256, act=act, norm=norm)
        self.up_tr128 = UpTransition(256, 128, 128, act=act, norm=norm)
        self.up_tr64 = UpTransition(128, 64, 64, act=act, norm=norm)
        self.out_tr = OutputTransition(64, n_class)
        self.out_activation = out_activation

    def forward(self, x: torch.Tensor, *, return_logits: bool = False) -> torch.Tensor:
        """Segment/restore a volume.

        Args:
            x: ``(N, C_in, H, W, D)``, H, W, D divisible by 8.
            return_logits: skip the output sigmoid (e.g. for ``BCEWithLogitsLoss``).

        Returns:
            ``(N, n_class, H, W, D)``; in [0, 1] unless logits were asked for or
            ``out_activation`` is None.
        """
        x, (skip64, skip128, skip256) = self._encode(x)
        x = self.up_tr256(x, skip256)
        x = self.up_tr128(x, skip128)
        x = self.up_tr64(x, skip64)
        logits = self.out_tr(x)
        if return_logits or self.out_activation is None:
            return logits
        return torch.sigmoid(logits)


@dataclass
class EncoderLoadResult:
    """Outcome of :meth:`GenesisClassifier.load_encoder_from`.

    Attributes:
        loaded: encoder keys copied.
        missing: encoder keys absent from the source (empty on success).
        unexpected: source keys that are neither encoder nor U-Net decoder keys.
        ignored: U-Net decoder keys (``up_tr*``, ``out_tr*``) deliberately skipped.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class GenesisClassifier(_GenesisEncoder):
    """Models Genesis encoder + classification head (the README's ``TargetNet``).

    Global average pool of the 512-channel bottleneck → Linear(512, 1024) → ReLU →
    Linear(1024, n_classes). Encoder keys equal those of :class:`UNet3D` (``down_tr*``), so a
    pretrained U-Net's weights load with :meth:`load_encoder_from`. Head layers are named
    ``dense_1``/``dense_2`` as in the official example.

    Args:
        n_classes: number of outputs (logits; apply sigmoid/softmax in the loss).
        in_channels: input channels.
        act: hidden activation of the encoder (``"relu"`` or ``"elu"``).
        norm: ``"batch_stats"`` (faithful) or ``"standard"``; see :class:`UNet3D`.
    """

    def __init__(
        self,
        *,
        n_classes: int = 1,
        in_channels: int = 1,
        act: str = "relu",
        norm: str = "batch_stats",
    ):
        super().__init__(in_channels=in_channels, act=act, norm=norm)
        self.dense_1 = nn.Linear(512, 1024)
        self.dense_2 = nn.Linear(1024, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W, D)`` → logits ``(N, n_classes)``."""
        pooled = self.forward_features(x).mean(dim=(2, 3, 4))  # (N, 512)
        return self.dense_2(F.relu(self.dense_1(pooled)))

    def load_encoder_from(
        self, source: Mapping[str, torch.Tensor] | nn.Module, *, strict: bool = True
    ) -> EncoderLoadResult:
        """Copy the ``down_tr*`` weights of a (pretrained) U-Net into this encoder.

        Args:
            source: a :class:`UNet3D` / classifier, or its state dict; a leading ``module.``
                (DataParallel) prefix on keys is stripped.
            strict: raise ``KeyError`` if any encoder key is missing or any key is unexpected.

        Returns:
            :class:`EncoderLoadResult`; the head is left untouched.

        Raises:
            KeyError: strict and keys are missing/unexpected.
            ValueError: a tensor's shape differs from this encoder's.
        """
        state = source.state_dict() if isinstance(source, nn.Module) else source
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = {k: v for k, v in self.state_dict().items() if k.startswith(ENCODER_BLOCKS)}
        result = EncoderLoadResult()
        for key in state:
            if key in own:
                result.loaded.append(key)
            elif key.startswith(("up_tr", "out_tr", "dense_")):
                result.ignored.append(key)
            else:
                result.unexpected.append(key)
        result.missing = sorted(set(own) - set(state))
        if strict and (result.missing or result.unexpected):
            raise KeyError(
                f"encoder weights do not match: missing {result.missing}, "
                f"unexpected {result.unexpected}"
            )
        bad = [
            f"{k}: source {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in result.loaded
            if tuple(state[k].shape) != tuple(own[k].shape)
        ]
        if bad:
            raise ValueError("encoder tensor shapes differ: " + "; ".join(bad))
        self.load_state_dict({k: state[k] for k in result.loaded}, strict=False)
        return result


# -------------------------------------------------------------------------------- family


class _ExportVolume(nn.Module):
    """The U-Net for export: logits → sigmoid probabilities in the graph."""

    def __init__(self, net: UNet3D):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image, return_logits=True))


class _ExportClass(nn.Module):
    def __init__(self, net: GenesisClassifier):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def _export_prelude(model, card: dict, options: GraphOptions):
    """Batch-independent copy, example roi and the notes both Genesis graphs record."""
    fixed, replaced = batch_independent(model, options.batch_norm)
    roi = tuple(int(s) for s in (options.roi_size or card.get("roi_size") or (64, 64, 32)))
    notes = {"batch_norm": options.batch_norm if replaced else "running (model trained with it)"}
    notes["batch_norm_layers_replaced"] = replaced
    return fixed, roi, notes


def _export_unet(model: UNet3D, task: str, card: dict, options: GraphOptions) -> ExportGraph:
    """``segment`` (mask probabilities, labelled from the card) or ``restore`` (the restored
    cube); spatial axes stay dynamic so the server can run any multiple of 8."""
    fixed, roi, notes = _export_prelude(model, card, options)
    n = fixed.out_tr.final_conv.out_channels
    shape = ["batch", n, "x", "y", "z"]
    if task == "segment":
        labels = card_labels(card, "main", n)
        out = OutputSpec("probabilities", "mask_probabilities", "sigmoid", shape, labels)
    else:
        out = OutputSpec("restored", "restored", "sigmoid", shape)
    return ExportGraph(
        _ExportVolume(fixed),
        task,
        ["batch", model.in_channels, "x", "y", "z"],
        (2, model.in_channels, *roi),
        [1, 1, DOWNSAMPLE, DOWNSAMPLE, DOWNSAMPLE],
        [out],
        dynamic_spatial=True,
        notes=notes,
    )


def _export_classifier(
    model: GenesisClassifier, task: str, card: dict, options: GraphOptions
) -> ExportGraph:
    """``classify``: sigmoid probabilities of a fixed-size cube."""
    fixed, roi, notes = _export_prelude(model, card, options)
    n = fixed.dense_2.out_features
    labels = card_labels(card, "main", n)
    return ExportGraph(
        _ExportClass(fixed),
        task,
        ["batch", model.in_channels, *roi],
        (2, model.in_channels, *roi),
        [1, 1, DOWNSAMPLE, DOWNSAMPLE, DOWNSAMPLE],
        [OutputSpec("probabilities", "probabilities", "sigmoid", ["batch", n], labels)],
        notes=notes,
    )


def _import_release(path, **kwargs):
    """The Models Genesis release importer (imported on use: it needs the checkpoint reader)."""
    from .official_genesis import import_genesis

    return import_genesis(path, **kwargs)


GENESIS_UNET = register(
    Family(
        family="genesis",
        model_name="unet3d",
        builder=UNet3D,
        tasks=("segment", "restore"),
        export=_export_unet,
        preprocessing=lambda model: genesis_ct(),
        roles={"segment": {"ct_segment": 0}},
        importer=_import_release,
    )
)
GENESIS_CLASSIFIER = register(
    Family(
        family="genesis",
        model_name="genesis_classifier",
        builder=GenesisClassifier,
        tasks=("classify",),
        export=_export_classifier,
        preprocessing=lambda model: genesis_ct(),
    )
)
