"""The small Models Genesis run that the engine and fault tests share (a helper module, not a
test module): its overrides, its CLI command, and weight comparisons."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from models.checkpoint import load_weights
from train.config import load_config
from train.genesis.config import GenesisConfig

ROOT = Path(__file__).resolve().parents[2]
# A run small enough for CI: 2 phantoms → 8 cubes of 16³, 3 steps per epoch.
SMALL = [
    "data.synthetic_train=2",
    "data.synthetic_val=1",
    "data.phantom_shape=[24, 32, 32]",
    "data.phantom_spacing=[10.0, 10.0, 10.0]",
    "data.cube_size=[16, 16, 16]",
    "data.cubes_per_volume=4",
    "data.border_xy=2",
    "data.border_z=1",
    "data.dense_max=1.0",
    "transform.shuffle_blocks=50",
    "loop.epochs=2",
    "loop.batch_size=2",
    "loop.steps_per_epoch=3",
    "loop.checkpoint_every=1",
    "loop.log_every=1",
    "loop.progress=false",
    "optim.lr=0.01",
]


def small_config(tmp_path, *extra) -> GenesisConfig:
    return load_config(
        GenesisConfig,
        ROOT / "configs/genesis/tiny.yaml",
        SMALL + [f"data.cache_dir={tmp_path / 'cache'}", *extra],
    )


def latest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    name = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_weights(run_dir / "checkpoints" / name / "model.safetensors")[0]


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def cli(run_dir, cache, *extra):
    """``python -m train.run pretrain`` of the small run, as an argument list."""
    cmd = [
        sys.executable,
        "-m",
        "train.run",
        "pretrain",
        "--method",
        "genesis",
        "--config",
        str(ROOT / "configs/genesis/tiny.yaml"),
        "--run-dir",
        str(run_dir),
    ]
    for item in SMALL + [f"data.cache_dir={cache}", *extra]:
        cmd += ["--set", item]
    return cmd
