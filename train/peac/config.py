"""Typed config of PEAC pretraining (``configs/peac/*.yaml``).

PEAC: Zhou et al., "Learning Anatomically Consistent Embedding for Chest Radiography", BMVC 2023,
arXiv:2312.00335 (official code jlianglab/PEAC). Defaults are the published values of the
single-node script (docs/METHODS.md §3); the ``tiny`` preset shrinks them for a CPU. PEAC⁻¹ (the
"downgraded" model without the local loss, ``global_popar_swin.py``) is ``losses.local_weight=0``
(``configs/peac/tiny_no_local.yaml``, or ``--set losses.local_weight=0`` on any preset).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kernels.genesis2d import Genesis2DConfig
from models.peac import PEAC_MEAN, PEAC_STD

from ..config import ConfigError
from ..settings import LoopConfig, OptimConfig
from .views import grid_load_size


@dataclass
class PEACDataConfig:
    """The unlabelled images (labels are read by the readers but ignored).

    Attributes:
        name: an ``imaging.datasets.build_dataset`` reader: ``chestxray14`` (the paper), or a
            synthetic one (``synthetic_chest``, ``synth_nih``, ...) rendered once into a cache.
        root: the dataset folder (real readers).
        train_split / val_split: split names of the reader. ChestX-ray14 as released: the
            official ``train_val_list.txt`` (reader split ``train``) for training and
            ``test_list.txt`` (``test``) for validation.
        reader: extra reader keyword arguments (synthetic: ``n``, ``size``, ``ct_shape``).
        per_split: reader arguments for one split only, e.g. ``{val: {n: 32}}``.
        cache_dir: synthetic renders (default ``<run_dir>/cache``).
        workers: threads decoding real images for one batch.
        val_limit: validate on this many evenly spaced items of the val split (None: all, as
            released).
    """

    name: str = "chestxray14"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "test"
    reader: dict = field(default_factory=dict)
    per_split: dict = field(default_factory=dict)
    cache_dir: str | None = None
    workers: int = 4
    val_limit: int | None = None


@dataclass
class PEACModelConfig:
    """``models.peac.PEACModel`` arguments (docs/METHODS.md §3.2): Swin-B at 448 → 14 x 14."""

    backbone: str = "swin_base_patch4_window7_224"
    img_size: int = 448
    global_dims: tuple[int, ...] = (8192, 8192, 8192)  # "1024-8192-8192-8192" expander
    local_dims: tuple[int, ...] = (512, 512, 512)  # "1024-512-512-512", per token


@dataclass
class PEACViewsConfig:
    """Grid views (docs/METHODS.md §3.3): crops of ``window`` cells at offsets 0..``max_offset``.

    ``window`` is the backbone's token grid (14 for Swin-B at 448 and ViT-B/16 at 224); the cell
    size is ``model.img_size // window`` (32 px, or 16 px for ViT-B/16 at 224).
    """

    window: int = 14
    max_offset: int = 4
    mean: float = PEAC_MEAN
    std: float = PEAC_STD


@dataclass
class PopArConfig:
    """The POPAR branch of crop 1, chosen per sample (docs/METHODS.md §3.3 item 5).

    With probability ``p_shuffle`` the cells are shuffled (order target = the permutation);
    otherwise the Genesis-2D appearance distortion is applied (order target = identity). The
    ``genesis2d`` defaults are PEAC's: 40 shuffle blocks always, Bézier p 0.9 with 500 samples,
    painting p 0.9 with in-painting 0.2 / out-painting 0.8.

    ``order_on_unshuffled``: the release scores the order head on every sample; on unshuffled
    crops its target is the identity, which a backbone that can tell a token's place in the
    crop (ViT position embeddings, or a CNN's zero padding) answers from position alone and
    thereby learns position codes (issue #18). False scores order on shuffled crops only.
    """

    p_shuffle: float = 0.5
    order_on_unshuffled: bool = True
    genesis2d: Genesis2DConfig = field(default_factory=Genesis2DConfig)


@dataclass
class PEACLossConfig:
    """``L = order_weight·CE + restore_weight·MSE + global_weight·L_global + local_weight·L_local``.

    ``local_weight = 0`` gives PEAC⁻¹. ``bug_compat`` reproduces the release's row/column
    transposition of the overlap masks (docs/METHODS.md §3.3 item 4); False is the correct matching.
    ``local_kind``: ``"mse"`` is PEAC's local loss; ``"infonce"`` asks each matched token to
    pick its cell among all cells of the same image's other view (``local_temperature``), an
    option for short runs where the MSE collapses (issue #18; not in the paper).
    """

    order_weight: float = 1.0
    restore_weight: float = 1.0
    global_weight: float = 1.0e5
    local_weight: float = 1.0
    bug_compat: bool = False
    local_kind: str = "mse"
    local_temperature: float = 0.2


@dataclass
class PEACSchedule:
    """EMA teacher momentum, a cosine from start to end over all training *iterations*."""

    momentum_start: float = 0.999
    momentum_end: float = 1.0


def _paper_loop() -> LoopConfig:
    return LoopConfig(epochs=400, batch_size=8, patience=None)


def _paper_optim() -> OptimConfig:
    return OptimConfig(
        name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, scheduler="cosine", warmup_epochs=5
    )


@dataclass
class PEACConfig:
    """PEAC pretraining: data, model, views, POPAR branch, losses, EMA schedule, loop, optimiser."""

    data: PEACDataConfig = field(default_factory=PEACDataConfig)
    model: PEACModelConfig = field(default_factory=PEACModelConfig)
    views: PEACViewsConfig = field(default_factory=PEACViewsConfig)
    popar: PopArConfig = field(default_factory=PopArConfig)
    losses: PEACLossConfig = field(default_factory=PEACLossConfig)
    schedule: PEACSchedule = field(default_factory=PEACSchedule)
    loop: LoopConfig = field(default_factory=_paper_loop)
    optim: OptimConfig = field(default_factory=_paper_optim)

    def __post_init__(self) -> None:
        size, window = self.model.img_size, self.views.window
        if window < 1 or size % window:
            raise ConfigError(
                f"model.img_size {size} must be a multiple of views.window {window} "
                "(the backbone's tokens per side)"
            )
        if not 0 <= self.views.max_offset < window:
            raise ConfigError(f"views.max_offset must lie in 0..{window - 1} for crops to overlap")
        if self.losses.local_kind not in ("mse", "infonce"):
            raise ConfigError(
                f"losses.local_kind must be 'mse' or 'infonce', got {self.losses.local_kind!r}"
            )
        if not 0.0 <= self.popar.p_shuffle <= 1.0:
            raise ConfigError(f"popar.p_shuffle must lie in [0, 1], got {self.popar.p_shuffle}")

    @property
    def cell(self) -> int:
        """Pixels per cell (= per token): 32 for Swin-B at 448, 16 for ViT-B/16 at 224."""
        return self.model.img_size // self.views.window

    @property
    def load_size(self) -> int:
        """Side of the square loaded image: 608 for PEAC, 304 for ViT-B/16 at 224."""
        return grid_load_size(self.cell, self.views.window, self.views.max_offset)
