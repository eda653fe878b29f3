"""Command line of the training stage.

    python -m train.run pretrain --method genesis --config configs/genesis/tiny.yaml \\
        [--set optim.lr=0.1 ...] [--run-dir runs/genesis-tiny] [--resume]
    python -m train.run finetune --task synthetic_nodule_seg --init genesis:runs/genesis-tiny \\
        [--config configs/genesis/finetune_tiny.yaml] [--set ...] [--run-dir ...] [--resume]
    python -m train.run pretrain --method ark --config configs/ark/tiny.yaml
    python -m train.run pretrain --method peac --config configs/peac/tiny.yaml
    python -m train.run transfer --init ark:runs/ark-tiny --config configs/ark/transfer_tiny.yaml \
        [--mode finetune|probe]
    python -m train.run evaluate --run-dir runs/finetune-... [--split test] [--ten-crop]
        [--calibrate]
    torchrun --nproc_per_node=2 -m train.run pretrain ...   # DistributedDataParallel
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, load_config

# torch, timm and the methods are imported once the arguments are parsed: `--help` stays fast.


def methods() -> dict:
    """Pretraining method (named for the family it pretrains) → (config class, method class)."""
    from models.ark import ARK
    from models.peac import PEAC
    from models.unet3d import GENESIS_UNET

    from .ark.config import ArkConfig
    from .ark.method import ArkMethod
    from .genesis.config import GenesisConfig
    from .genesis.method import GenesisMethod
    from .peac.config import PEACConfig
    from .peac.method import PEACMethod

    return {
        GENESIS_UNET.family: (GenesisConfig, GenesisMethod),
        ARK.family: (ArkConfig, ArkMethod),
        PEAC.family: (PEACConfig, PEACMethod),
    }


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML preset, e.g. configs/genesis/tiny.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.1 (repeatable)",
    )
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<name>-<preset>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run directory's latest checkpoint (from step 0 if it has none "
        "yet, so a retried job can always pass it)",
    )


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
    pre.add_argument(
        "--method",
        required=True,
        help="the pretraining method, named for its model family (an unknown name lists them)",
    )
    _add_run_options(pre)
    fin = sub.add_parser(
        "finetune",
        help="fine-tune on a labelled 3D task",
        description="Fine-tune for 3D segmentation or classification.",
    )
    fin.add_argument("--task", help="task name (train.finetune.tasks.TASKS); default from config")
    fin.add_argument("--init", help="'scratch' or 'genesis:<run dir | .safetensors | .pt>'")
    _add_run_options(fin)
    tr = sub.add_parser(
        "transfer",
        help="fine-tune or linear-probe Ark weights on a new 2D task",
        description="Reuse pretrained Ark weights on a new chest X-ray task: fine-tune with a new "
        "head (resumable), or fit a linear probe on frozen embeddings.",
    )
    tr.add_argument("--init", help="'scratch' or 'ark:<run dir | .safetensors>'")
    tr.add_argument("--mode", choices=["finetune", "probe"], default="finetune")
    _add_run_options(tr)
    ev = sub.add_parser(
        "evaluate",
        help="score a fine-tuned run",
        description="Score a run's best weights on a split (fine-tuned 3D tasks: Dice/AUROC; "
        "Ark: per-dataset, per-class AUROC of the teacher; PEAC: cross-patient landmark "
        "matching of teacher and student beside position, raw-patch and context references; "
        "its linear probe: transfer --mode probe). To score an exported model exactly as the "
        "server runs it: python -m export.evaluate EXPORT_DIR.",
    )
    ev.add_argument("--run-dir", type=Path, required=True)
    ev.add_argument("--split", choices=["train", "val", "test"], default="test")
    ev.add_argument(
        "--ten-crop", action="store_true", help="2D models: average the ten-crop predictions"
    )
    ev.add_argument(
        "--pairs", type=int, default=40, help="PEAC: test film pairs of different patients"
    )
    ev.add_argument(
        "--no-probe", action="store_true", help="PEAC: skip the linear probe (~3 CPU minutes)"
    )
    ev.add_argument(
        "--calibrate",
        action="store_true",
        help="3D segmentation: first choose the whole-volume threshold with the best Dice on "
        "the validation volumes and write it into the run's best weights (the threshold an "
        "export of the run serves), then score",
    )
    return parser


def _load(config_cls, args, run_dir: Path, extra: list[str]):
    if args.resume and args.config is None and (run_dir / "config.yaml").is_file():
        return load_config(config_cls, run_dir / "config.yaml", extra + args.overrides)
    return load_config(config_cls, args.config, extra + args.overrides)


def _saved_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _refuse_pretraining(run_dir: Path, model_name: str, saved: dict) -> None:
    """Genesis pretraining has no labels to score: say what to run instead."""
    from models.peac import PEAC

    if "transform" not in saved or "task" in saved or model_name == PEAC.model_name:
        return
    how = f"python -m train.run finetune --init genesis:{run_dir}"
    raise ConfigError(
        f"{run_dir} is a Models Genesis pretraining run: evaluate scores labelled runs "
        f"(fine-tuned, transfer, Ark) and PEAC runs. Its validation loss per epoch is in "
        f"{run_dir / 'metrics.jsonl'}; to score what it learned, fine-tune it ({how}) and "
        "evaluate that run"
    )


def _evaluate(args) -> dict:
    """Dispatch on the model family recorded in the run's best weights."""
    from models.ark import ARK
    from models.checkpoint import load_weights
    from models.peac import PEAC

    weights = args.run_dir / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(
            f"{weights} does not exist: evaluate needs a run directory whose training has "
            "finished at least one epoch (its best weights are written then)"
        )
    _, info = load_weights(weights)
    saved = _saved_config(args.run_dir)
    _refuse_pretraining(args.run_dir, info.model_name, saved)
    if info.model_name == PEAC.model_name:
        from .peac.evaluate import evaluate_peac_run

        return evaluate_peac_run(
            args.run_dir, n_pairs=args.pairs, split=args.split, probe=not args.no_probe
        )
    if info.model_name == ARK.model_name and "schedule" not in saved:
        from .ark.transfer import TransferConfig, evaluate_transfer_run

        cfg = load_config(TransferConfig, args.run_dir / "config.yaml")
        cfg.ten_crop = cfg.ten_crop or args.ten_crop
        return evaluate_transfer_run(args.run_dir, cfg, args.split)
    if info.model_name == ARK.model_name:
        from .ark.evaluate import evaluate_ark_run

        return evaluate_ark_run(args.run_dir, args.split, ten_crop=args.ten_crop)
    from .finetune.evaluate import calibrate_threshold, evaluate_run

    if not args.calibrate:
        return evaluate_run(args.run_dir, args.split)
    try:
        calibration = calibrate_threshold(args.run_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return evaluate_run(args.run_dir, args.split) | {"calibration": calibration}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "pretrain" and args.method not in (known := methods()):
        parser.error(f"unknown method {args.method!r}; valid: {', '.join(sorted(known))}")
    if args.command == "evaluate":
        from models.checkpoint import CheckpointError

        try:
            print(json.dumps(_evaluate(args), indent=2))
        except (ConfigError, CheckpointError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    preset = args.config.stem if args.config else "default"
    try:
        if args.command == "pretrain":
            config_cls, method_cls = known[args.method]
            run_dir = args.run_dir or Path("runs") / f"{args.method}-{preset}"
            cfg = _load(config_cls, args, run_dir, [])
        elif args.command == "transfer":
            from .ark.transfer import TransferConfig, TransferMethod, linear_probe

            run_dir = args.run_dir or Path("runs") / f"transfer-{args.mode}-{preset}"
            extra = [f"init={args.init}"] if args.init else []
            cfg = _load(TransferConfig, args, run_dir, extra)
            if args.mode == "probe":
                print(json.dumps(linear_probe(cfg, run_dir), indent=2))
                return 0
            method_cls = TransferMethod
        else:
            from .finetune.config import FinetuneConfig
            from .finetune.method import FinetuneMethod

            method_cls = FinetuneMethod
            run_dir = args.run_dir or Path("runs") / f"finetune-{args.task or preset}"
            extra = [f"task.name={args.task}"] if args.task else []
            extra += [f"model.init={args.init}"] if args.init else []
            cfg = _load(FinetuneConfig, args, run_dir, extra)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from .engine import fit

    progress = fit(method_cls(cfg, run_dir), run_dir, resume=args.resume)
    if progress.finished:
        print(
            f"done: {progress.global_step} steps, best val loss {progress.best_val:.5f}, "
            f"weights in {run_dir / 'model.safetensors'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
