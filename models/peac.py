"""PEAC: a timm backbone's token map with POPAR order/restoration heads and two expanders.

Paper: Zhou, Luo, Pang, Ding, Gotway, Liang, "Learning Anatomically Consistent Embedding for Chest
Radiography", BMVC 2023, arXiv:2312.00335. Original code: https://github.com/jlianglab/PEAC
(``PEC_Model`` in ``global_local_popar_swin.py``). Written from the description in
docs/METHODS.md §3.2, not copied.

The backbone's final, normalised token map ``(B, g, g, C)`` (g = 14 and C = 1024 for Swin-B at
448 px; each token covers a ``cell`` = 32-px square of the input) feeds four parts whose names
are the release's (its Swin, ``swin_model``, is our ``backbone``; :mod:`models.official` maps it)::

    backbone.…            timm model, num_classes=0: Swin (NHWC map) or ViT (prefix tokens dropped)
    head.{weight,bias}    order head Linear(C → g²), applied to every token (POPAR: which input
                          cell does this token show?)
    decoder.0.…           Conv2d(C → cell²·in_chans, 1) + PixelShuffle(cell): restored image
    mlp.{0,1,3,4,6}.…     global expander on the mean token: C-8192-8192-8192, every hidden layer
                          Linear → LayerNorm → ReLU, the last Linear without bias
    mlp_local.…           local expander, the same structure (C-512-512-512), on every token

With ``perm`` (order distortion), input cell ``perm[b, j]`` is moved to cell ``j`` before the
backbone (:func:`kernels.patches.shuffle_patches`), so the order target of token ``j`` is
``perm[b, j]``.

:func:`correspond` matches the cells of two radiographs by the cosine similarity of their tokens
(the paper's cross-view/cross-patient correspondence: nearest patch embedding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imaging.outputs import OutputSpec
from imaging.preprocess import CropGeometry, center_crop_offsets, peac_cxr, shorter_side_size
from kernels.patches import shuffle_patches

from .ark import _create_backbone
from .family import ExportGraph, Family, GraphOptions, register

#: PEAC's intensity normalisation of [0, 1] images (``Normalize(mean 0.5056, std 0.252)`` in
#: jlianglab/PEAC ``utils/build_loader_global_local.py``; docs/METHODS.md §3.3 item 5).
PEAC_MEAN = 0.5056
PEAC_STD = 0.252


def expander(in_dim: int, dims: Sequence[int]) -> nn.Module:
    """PEAC's MLP: every hidden layer Linear → LayerNorm → ReLU; the last Linear has no bias.

    ``expander(1024, (8192, 8192, 8192))`` is the release's ``mlp`` ("1024-8192-8192-8192").
    Empty ``dims`` give the identity (the embedding is the token itself).
    """
    dims = [int(in_dim), *(int(d) for d in dims)]
    if len(dims) == 1:
        return nn.Identity()
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
    return nn.Sequential(*layers)


@dataclass
class PEACOutput:
    """What :meth:`PEACModel.forward` returns.

    Attributes:
        tokens: ``(B, g, g, C)`` token map after the backbone's final norm.
        order: ``(B, g², g²)`` logits: for token j, which input cell it shows; None without head.
        restored: ``(B, in_chans, H, W)`` the decoder's image; None without decoder.
        global_: ``(B, Dg)`` global embedding of the mean token (not L2-normalised).
        local: ``(B, g, g, Dl)`` local embedding of every token (not normalised).
    """

    tokens: torch.Tensor
    order: torch.Tensor | None
    restored: torch.Tensor | None
    global_: torch.Tensor
    local: torch.Tensor


class PEACModel(nn.Module):
    """Backbone token map → order head, restoration decoder, global and local expanders.

    Args:
        backbone: a timm model name: a Swin (PEAC: ``swin_base_patch4_window7_224``, used at
            448 px) or a ViT (``vit_base_patch16_224``, PEAC⁻³). Any timm model whose
            ``forward_features`` gives a token sequence or a feature map works.
        img_size: input height = width; a multiple of the backbone's reduction (32 for Swin,
            the patch size for ViT).
        in_chans: input channels (PEAC: 3, the grey film repeated).
        global_dims: widths of the global expander after C (PEAC: 8192, 8192, 8192).
        local_dims: widths of the local expander after C (PEAC: 512, 512, 512).
        order_head: build the order-prediction head.
        decoder: build the restoration decoder.
    """

    def __init__(
        self,
        backbone: str = "swin_base_patch4_window7_224",
        img_size: int = 448,
        in_chans: int = 3,
        global_dims: Sequence[int] = (8192, 8192, 8192),
        local_dims: Sequence[int] = (512, 512, 512),
        order_head: bool = True,
        decoder: bool = True,
    ) -> None:
        super().__init__()
        self.backbone_name = str(backbone)
        self.img_size = int(img_size)
        self.in_chans = int(in_chans)
        self.global_dims = [int(d) for d in global_dims]
        self.local_dims = [int(d) for d in local_dims]
        self.backbone = _create_backbone(self.backbone_name, self.img_size, self.in_chans)
        self.num_features = int(self.backbone.num_features)  # C
        reduction = int(self.backbone.feature_info[-1]["reduction"])
        if self.img_size % reduction:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of {backbone}'s reduction {reduction}"
            )
        self.grid = self.img_size // reduction  # g: tokens per side
        self.cell = reduction  # pixels per token cell
        self._prefix = int(getattr(self.backbone, "num_prefix_tokens", 0) or 0)
        self._nhwc = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC"
        c, g, p = self.num_features, self.grid, self.cell
        self.head = nn.Linear(c, g * g) if order_head else None
        self.decoder = (
            nn.Sequential(nn.Conv2d(c, p * p * self.in_chans, 1), nn.PixelShuffle(p))
            if decoder
            else None
        )
        self.mlp = expander(c, self.global_dims)
        self.mlp_local = expander(c, self.local_dims)
        self.global_dim = self.global_dims[-1] if self.global_dims else c
        self.local_dim = self.local_dims[-1] if self.local_dims else c

    @property
    def model_args(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild this model (JSON-serialisable)."""
        return {
            "backbone": self.backbone_name,
            "img_size": self.img_size,
            "in_chans": self.in_chans,
            "global_dims": list(self.global_dims),
            "local_dims": list(self.local_dims),
            "order_head": self.head is not None,
            "decoder": self.decoder is not None,
        }

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled token map: ``(B, in_chans, H, W)`` → ``(B, g, g, C)``, after the final norm."""
        f = self.backbone.forward_features(x)
        b, g = x.shape[0], self.grid
        if f.ndim == 3:  # ViT: (B, prefix + g², C)
            f = f[:, self._prefix :]
            if f.shape[1] != g * g:
                raise ValueError(f"expected {g * g} patch tokens, got {f.shape[1]}")
            return f.reshape(b, g, g, f.shape[-1])
        return f if self._nhwc else f.permute(0, 2, 3, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Mean-pooled tokens (linear probing, serving): ``(B, in_chans, H, W)`` → ``(B, C)``."""
        return self.tokens(x).mean(dim=(1, 2))

    def forward(self, x: torch.Tensor, perm: torch.Tensor | None = None) -> PEACOutput:
        """All of PEAC's outputs for one view.

        Args:
            x: ``(B, in_chans, img_size, img_size)`` normalised images.
            perm: optional ``(B, g²)`` int64 permutations; input cell ``perm[b, j]`` becomes
                cell ``j`` before the backbone (POPAR order distortion).

        Returns:
            :class:`PEACOutput` (order target of token j: ``perm[b, j]``; restoration target: the
            undistorted ``x``).
        """
        if perm is not None:
            x = shuffle_patches(x, perm, self.cell)
        t = self.tokens(x)  # B, g, g, C
        b, g = t.shape[0], self.grid
        order = self.head(t.reshape(b, g * g, -1)) if self.head is not None else None
        restored = (
            self.decoder(t.permute(0, 3, 1, 2).contiguous()) if self.decoder is not None else None
        )
        return PEACOutput(
            tokens=t,
            order=order,
            restored=restored,
            global_=self.mlp(t.mean(dim=(1, 2))),
            local=self.mlp_local(t),
        )


# --------------------------------------------------------------------------------------------
# anatomical correspondence


#: original pixels ↔ model input pixels; the one definition is imaging's (the server uses it too)
CropTransform = CropGeometry


def _as_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    t = t.detach().to(torch.float32).cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3) or min(t.shape[1:]) < 1:
        raise ValueError(f"image must be (H, W), (1, H, W) or (3, H, W), got {tuple(t.shape)}")
    return t


def preprocess(
    image: np.ndarray | torch.Tensor, img_size: int, *, in_chans: int = 3
) -> tuple[torch.Tensor, CropTransform]:
    """A [0, 1] radiograph → PEAC's model input, and the pixel transform that was applied.

    Shorter side → ``img_size`` keeping the aspect ratio (bilinear, antialiased; PEAC uses
    OpenCV's area resize), centre crop ``img_size``², grey repeated to 3 channels (a 3-channel
    image is kept; ``in_chans=1`` averages channels), then ``(x - PEAC_MEAN) / PEAC_STD``.

    Args:
        image: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` float in [0, 1] (higher = denser, as
            :mod:`imaging` returns radiographs).
        img_size: the model's input side.
        in_chans: channels of the result (1 or 3).

    Returns:
        ``(x (1, in_chans, img_size, img_size) float32, CropTransform)``.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    t = _as_chw(image)
    h, w = t.shape[1:]
    rh, rw = shorter_side_size(h, w, int(img_size))
    x = F.interpolate(t[None], size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
    top, left = center_crop_offsets((rh, rw), int(img_size), "floor")
    x = x[:, :, top : top + img_size, left : left + img_size]
    x = x.mean(dim=1, keepdim=True) if in_chans == 1 else x.expand(-1, 3, -1, -1)
    x = (x - PEAC_MEAN) / PEAC_STD
    return x.contiguous(), CropTransform((h, w), (rh, rw), (top, left), int(img_size))


@dataclass(frozen=True)
class Correspondence:
    """For every cell of image A, its most similar cell of image B.

    Attributes:
        index: ``(g, g)`` int64, flat (row-major) index of the best cell of B.
        similarity: ``(g, g)`` float32 cosine similarity of that match.
        sim_matrix: ``(g², g²)`` float32 cosine similarity of every A cell (rows) to every B cell.
        grid: g.
        cell: pixels per cell in the model input.
        transform_a / transform_b: original → model input pixel transforms of A and B.
    """

    index: np.ndarray
    similarity: np.ndarray
    sim_matrix: np.ndarray
    grid: int
    cell: int
    transform_a: CropTransform
    transform_b: CropTransform

    def query(self, points_a: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, ...]:
        """Map pixels of original image A to original image B.

        Args:
            points_a: ``(N, 2)`` (or one ``(2,)``) ``(row, col)`` pixels of original A.

        Returns:
            ``(points_b (N, 2) float64, similarity (N,) float64)``: the centre of the best B cell
            for the A cell holding each point, in original B pixels. Points outside A's crop (the
            margins of the longer side, or outside the image) give NaN for both.
        """
        p = np.asarray(points_a, dtype=np.float64).reshape(-1, 2)
        g, cell = self.grid, self.cell
        cells = np.floor(self.transform_a.to_model(p) / cell)
        inside = np.all((cells >= 0) & (cells < g), axis=1)
        cells = np.clip(np.nan_to_num(cells), 0, g - 1).astype(np.int64)
        best = self.index[cells[:, 0], cells[:, 1]]
        centre = (np.stack([best // g, best % g], axis=1) + 0.5) * cell - 0.5
        out = self.transform_b.to_original(centre)
        sim = self.similarity[cells[:, 0], cells[:, 1]].astype(np.float64)
        out[~inside] = np.nan
        sim[~inside] = np.nan
        return out, sim


@torch.no_grad()
def correspond(
    model: PEACModel,
    image_a: np.ndarray | torch.Tensor,
    image_b: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "cpu",
) -> Correspondence:
    """Anatomical correspondence: the nearest B token, by cosine similarity, of every A token.

    Both images go through :func:`preprocess` at ``model.img_size``; the model runs in eval mode
    on ``device`` (it is moved there; its train/eval mode is restored afterwards).

    Args:
        model: a :class:`PEACModel` (random-init works: every cell of an image then matches
            itself when compared with the same image).
        image_a / image_b: ``(H, W)`` or ``(1|3, H, W)`` float radiographs in [0, 1].
        device: where to run.

    Returns:
        :class:`Correspondence`; ``.query(points)`` maps original A pixels to original B pixels.
    """
    xa, ta = preprocess(image_a, model.img_size, in_chans=model.in_chans)
    xb, tb = preprocess(image_b, model.img_size, in_chans=model.in_chans)
    was_training = model.training
    model.to(device).eval()
    try:
        tokens = model.tokens(torch.cat([xa, xb]).to(device)).float()  # 2, g, g, C
    finally:
        model.train(was_training)
    g = model.grid
    z = F.normalize(tokens.reshape(2, g * g, -1), dim=-1)
    sim = (z[0] @ z[1].T).cpu()  # g², g²
    best, index = sim.max(dim=1)
    return Correspondence(
        index=index.reshape(g, g).numpy(),
        similarity=best.reshape(g, g).numpy(),
        sim_matrix=sim.numpy(),
        grid=g,
        cell=model.cell,
        transform_a=ta,
        transform_b=tb,
    )


# -------------------------------------------------------------------------------- family


class _ExportTokens(nn.Module):
    """PEAC for export: the mean-token embedding, and the token map when ``tokens``."""

    def __init__(self, net: PEACModel, tokens: bool):
        super().__init__()
        self.net, self.with_tokens = net, tokens

    def forward(self, image: torch.Tensor):
        t = self.net.tokens(image)
        emb = t.mean(dim=(1, 2))
        return (emb, t) if self.with_tokens else emb


def _export(model: PEACModel, task: str, card: dict, options: GraphOptions) -> ExportGraph:
    """``embed`` (the mean token) or ``correspond`` (also the ``(g, g, C)`` token map); the
    training heads and expanders are left out."""
    size, chans, g = int(model.img_size), int(model.in_chans), int(model.grid)
    dim = int(model.num_features)
    outputs = [OutputSpec("embedding", "embedding", "none", ["batch", dim])]
    if task == "correspond":
        outputs.append(OutputSpec("tokens", "token_map", "none", ["batch", g, g, dim]))
    return ExportGraph(
        _ExportTokens(model, task == "correspond"),
        task,
        ["batch", chans, size, size],
        (2, chans, size, size),
        [1, 1, 1, 1],
        outputs,
        notes={"grid": g, "cell": int(model.cell)},
    )


def _import_release(path, **kwargs):
    """The PEAC release importer (imported on use)."""
    from .official_peac import import_peac

    return import_peac(path, **kwargs)


PEAC = register(
    Family(
        family="peac",
        model_name="peac",
        builder=PEACModel,
        tasks=("correspond", "embed"),
        export=_export,
        preprocessing=lambda model: peac_cxr(int(model.img_size)),
        # after Ark's exports for embedding (their embedding is the classification one)
        roles={"correspond": {"correspond": 0, "embed": 3}, "embed": {"embed": 1}},
        importer=_import_release,
    )
)
