"""Command line of the training stage.

    python -m train.run pretrain --method genesis --config configs/genesis/tiny.yaml \\
        [--set optim.lr=0.1 ...] [--run-dir runs/genesis-tiny] [--resume]
    torchrun --nproc_per_node=2 -m train.run pretrain ...   # DistributedDataParallel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .engine import fit
from .genesis.config import GenesisConfig
from .genesis.method import GenesisMethod

#: method name → (config class, method class); Ark and PEAC join with their issues.
METHODS = {"genesis": (GenesisConfig, GenesisMethod)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.run", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining",
        description="Pretrain a model; resumable, DDP under torchrun.",
    )
    pre.add_argument("--method", choices=sorted(METHODS), required=True)
    pre.add_argument("--config", type=Path, help="YAML preset, e.g. configs/genesis/tiny.yaml")
    pre.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.1 (repeatable)",
    )
    pre.add_argument("--run-dir", type=Path, help="run directory (default runs/<method>-<preset>)")
    pre.add_argument(
        "--resume", action="store_true", help="continue from the run directory's latest checkpoint"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_cls, method_cls = METHODS[args.method]
    run_dir = args.run_dir or Path("runs") / (
        f"{args.method}-{args.config.stem if args.config else 'default'}"
    )
    try:
        if args.resume and args.config is None and (run_dir / "config.yaml").is_file():
            cfg = load_config(config_cls, run_dir / "config.yaml", args.overrides)
        else:
            cfg = load_config(config_cls, args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    progress = fit(method_cls(cfg, run_dir), run_dir, resume=args.resume)
    if progress.finished:
        print(
            f"done: {progress.global_step} steps, best val loss {progress.best_val:.5f}, "
            f"weights in {run_dir / 'model.safetensors'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
