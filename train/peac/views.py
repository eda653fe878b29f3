"""PEAC's stable grid-based views: two crops cut from one shared grid of cells.

PEAC (Zhou et al., BMVC 2023, arXiv:2312.00335; jlianglab/PEAC) makes the correspondence between
its two views exact by construction (docs/METHODS.md §3.3, items 1-3). With ``cell`` the backbone's
total stride in pixels (32 for Swin-B at 448, 16 for ViT-B/16 at 224), ``window`` its tokens per
side (14) and ``max_offset`` the largest grid offset of a crop (4):

1. loading (once per image, :func:`grid_load_size` / :func:`square_image`): the shorter side is
   resized to ``(window + max_offset + 1) * cell`` pixels keeping the aspect ratio (PEAC:
   19 * 32 = 608; ViT-B/16 at 224: 19 * 16 = 304), then the centre square is cropped: a grid of
   19 x 19 cells;
2. per sample, on the device (:func:`grid_views`): a random pixel jitter ``0 .. cell - 1`` per
   axis keeps ``window + max_offset`` cells (18 x 18 = 576 px), so the grid moves against the
   anatomy while the cells stay aligned;
3. two ``window x window``-cell crops (14 x 14 cells = 448 px) at random cell offsets
   ``0 .. max_offset`` per axis. The offsets are returned as boxes ``(row0, col0)`` in cells of
   the shared grid, the layout :func:`kernels.grid.match_patches` takes. The crops overlap in at
   least ``(window - max_offset)^2`` cells (10 x 10), and overlapping cells are identical pixels,
   so token ``(r - row0_1, c - col0_1)`` of crop 1 and ``(r - row0_2, c - col0_2)`` of crop 2 see
   the same anatomy, without interpolation.

All randomness is drawn up front from an explicit CPU ``torch.Generator`` in a fixed order
(jitter, then the four offsets ``x1, y1, x2, y2``), so a step's views depend on the generator's
seed alone and a resumed run replays them exactly.

The published row/column transposition (docs/METHODS.md §3.3 item 4): the release's ``PatchCrop``
uses ``x`` as the *row* offset (first array axis), as here (``box[:, 0]``), but its ``get_index``
builds the overlap masks with rows from the ``y`` range and columns from the ``x`` range. The
k-th selected tokens of the two crops then lie on the same grid cell only when
``x1 - y1 == x2 - y2`` (about 13 % of draws); otherwise the local loss pairs tokens of different
anatomy. The views are the same either way; the matching is chosen by
``losses.bug_compat`` (passed to :func:`kernels.grid.match_patches`): ``False``, the default, is
the correct matching (rows from ``x``, columns from ``y``); ``True`` reproduces the release.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..views2d import resize_center_crop


def grid_load_size(cell: int, window: int, max_offset: int) -> int:
    """Side of the square loaded image: ``(window + max_offset + 1) * cell`` pixels."""
    if cell < 1 or window < 1 or max_offset < 0:
        raise ValueError(
            f"need cell >= 1, window >= 1, max_offset >= 0; got {cell}, {window}, {max_offset}"
        )
    return (window + max_offset + 1) * cell


def square_image(images: torch.Tensor, size: int) -> torch.Tensor:
    """KeepRatioResize + CenterCrop: shorter side → ``size`` (bilinear, antialiased), centre square.

    The release uses ``cv2.resize(INTER_AREA)`` on 8-bit images; an antialiased bilinear resize
    of float images is the torch equivalent used across this project (``train.views2d``).

    Args:
        images: (N, C, H, W) float in [0, 1] (uint8 is divided by 255).

    Returns:
        (N, C, size, size) float.
    """
    return resize_center_crop(images, size, size)


@dataclass(frozen=True)
class GridParams:
    """The random choices of one batch (CPU int64 tensors).

    Attributes:
        jitter: (B, 2) pixel offsets ``(row, col)`` of the grid, in ``0 .. cell - 1``.
        box1: (B, 2) ``(row0, col0)`` of crop 1 in cells of the jittered grid (PEAC's x1, y1),
            in ``0 .. max_offset``.
        box2: (B, 2) the same for crop 2 (x2, y2).
    """

    jitter: torch.Tensor
    box1: torch.Tensor
    box2: torch.Tensor


def sample_grid_params(
    n: int, generator: torch.Generator, cell: int, max_offset: int
) -> GridParams:
    """Draw the jitter, then the offsets ``x1, y1, x2, y2`` of ``n`` samples from ``generator``."""
    if generator.device.type != "cpu":
        raise ValueError("draw view parameters from a CPU torch.Generator (they move to the data)")
    jitter = torch.randint(0, cell, (n, 2), generator=generator)
    offsets = torch.randint(0, max_offset + 1, (n, 2, 2), generator=generator)
    return GridParams(jitter, offsets[:, 0].contiguous(), offsets[:, 1].contiguous())


def cut_window(
    images: torch.Tensor, jitter: torch.Tensor, box: torch.Tensor, cell: int, window: int
) -> torch.Tensor:
    """Crop ``window x window`` cells at ``box`` from each jittered grid.

    Args:
        images: (B, C, L, L) loaded images, any device.
        jitter: (B, 2) CPU int64 pixel jitter; box: (B, 2) CPU int64 cell offsets.

    Returns:
        (B, C, S, S), ``S = window * cell``: sample b is
        ``images[b, :, top : top + S, left : left + S]`` with
        ``(top, left) = jitter[b] + cell * box[b]``.
    """
    size = window * cell
    corners = (jitter + cell * box).tolist()  # CPU tensors: no device sync
    return torch.stack(
        [images[b, :, t : t + size, s : s + size] for b, (t, s) in enumerate(corners)]
    )


@dataclass(frozen=True)
class GridViews:
    """Two crops of a batch and where they sit in the shared grid.

    Attributes:
        crop1, crop2: (B, C, S, S) with ``S = window * cell``, dtype and device of the images.
        box1, box2: (B, 2) int64 ``(row0, col0)`` in cells (CPU), what ``match_patches`` takes.
        jitter: (B, 2) int64 pixel jitter of the grid (CPU).
    """

    crop1: torch.Tensor
    crop2: torch.Tensor
    box1: torch.Tensor
    box2: torch.Tensor
    jitter: torch.Tensor


def grid_views(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    cell: int,
    window: int,
    max_offset: int,
) -> GridViews:
    """PEAC's GridRandomCrop + PatchCrop of a batch of loaded images.

    Args:
        images: (B, C, L, L) float, ``L >= (window + max_offset + 1) * cell - 1`` (the
            :func:`grid_load_size` square), any device.
        generator: CPU generator; its state alone determines the views.
        cell: pixels per cell (the backbone's stride); window: cells per crop side;
            max_offset: largest cell offset of a crop.

    Returns:
        :class:`GridViews`.

    Raises:
        ValueError: the images are too small for the grid.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, L, L), got {tuple(images.shape)}")
    need = (window + max_offset + 1) * cell - 1  # largest jitter + offset + crop
    if min(images.shape[-2:]) < need:
        raise ValueError(
            f"images of {tuple(images.shape[-2:])} px are too small for a grid of "
            f"{window} + {max_offset} cells of {cell} px with jitter (need {need} px; load them "
            f"at grid_load_size = {grid_load_size(cell, window, max_offset)})"
        )
    p = sample_grid_params(images.shape[0], generator, cell, max_offset)
    return GridViews(
        crop1=cut_window(images, p.jitter, p.box1, cell, window),
        crop2=cut_window(images, p.jitter, p.box2, cell, window),
        box1=p.box1,
        box2=p.box2,
        jitter=p.jitter,
    )
