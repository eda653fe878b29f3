"""Models Genesis as a :class:`~train.method.Method`: restore the original cube from its
transformed version; loss = MSE(sigmoid output, original), as released."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kernels.genesis import transform_batch
from models.registry import build_model
from models.unet3d import GENESIS_UNET

from ..cards import genesis_card
from ..method import Method
from .config import GenesisConfig
from .data import load_cubes


class GenesisMethod(Method):
    def __init__(self, cfg: GenesisConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)

    def build_model(self):
        name = GENESIS_UNET.model_name
        if self.cfg.model.name not in (None, name):
            raise ValueError(
                f"model.name: Models Genesis pretraining trains the U-Net ({name!r}), "
                f"got {self.cfg.model.name!r}"
            )
        args = {"norm": self.cfg.model.norm}
        return build_model(name, **args), name, args

    def inference_card(self) -> dict:
        return genesis_card("restore", self.cfg.data.cube_size)

    def datasets(self):
        cache = Path(self.cfg.data.cache_dir) if self.cfg.data.cache_dir else self.run_dir / "cache"
        show = self.cfg.loop.progress
        return (
            load_cubes(self.cfg.data, "train", cache, show),
            load_cubes(self.cfg.data, "val", cache, show),
        )

    def loss(self, model, batch: torch.Tensor, generator: torch.Generator, ctx) -> torch.Tensor:
        # Parameters are drawn on the CPU generator and applied where the batch lives: the
        # Triton kernels on CUDA, the reference on CPU; the loader only reads clean cubes.
        x, y = transform_batch(batch, self.cfg.transform, generator)
        return F.mse_loss(model(x).float(), y)
