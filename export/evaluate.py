"""``python -m export.evaluate``: score an exported segmentation model as the server runs it.

Examples::

    python -m export.evaluate exports/nodule_seg
    python -m export.evaluate exports/genesis_seg --task synthetic_nodule_seg \\
        --set n_test_volumes=8 --out runs/eval_export.json

Each held-out study goes through :func:`export.segmentation.segment_volume`, the code
``/v1/ct/segment`` runs: the manifest's preprocessing, sliding window (roi, overlap, blend),
threshold and the exported graph (with its batch-independent normalisation). The held-out
volumes are those of the task the model was fine-tuned on (recorded in the manifest's training
config; ``--task``/``--set`` for an export without one), as a scanner stores them
(:func:`train.finetune.tasks.held_out_series`), so the Dice reported here is the Dice of the
server's answers to the same studies sent as DICOM.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from imaging.atomic import atomic_write_bytes

from .manifest import ManifestError
from .runtime import load
from .segmentation import segment_volume


def evaluate_export(
    export_dir: str | Path,
    *,
    split: str = "test",
    task: str | None = None,
    task_args: dict | None = None,
    backend: str | None = None,
    precision: str | None = None,
    masks: list | None = None,
    progress: bool = False,
) -> dict:
    """Dice and IoU of an exported segmentation model on held-out phantom volumes.

    Args:
        export_dir: a segmentation export (``python -m export.run --task segment``).
        split: the task split whose volumes are scored.
        task / task_args: the task and its arguments; default the manifest's training config
            (``task_args`` override single arguments).
        backend / precision: as :func:`export.runtime.load`.
        masks: if given, each volume's predicted masks ``(L, D, H, W)`` are appended.
        progress: show a progress bar.

    Returns:
        ``{"export", "task", "split", "n", "volume_dice", "volume_iou", "per_volume",
        "inference", "backend"}``; ``per_volume`` has each study's Dice and IoU.

    Raises:
        ValueError: not a segmentation export, no task to score on, or a resampling export
            (its masks are not on the studies' grid).
    """
    from train.finetune.tasks import held_out_series
    from train.metrics import dice, iou

    rt = load(export_dir, backend=backend, precision=precision)
    m = rt.manifest
    if m.task != "segment":
        raise ValueError(f"{export_dir} is a {m.task!r} export; only segmentation is scored here")
    if m.preprocessing.spacing is not None:
        raise ValueError(
            f"{export_dir} resamples studies to {list(m.preprocessing.spacing)} mm: its masks are "
            "not on the studies' grid, which this scoring needs"
        )
    recorded = ((m.config or {}).get("task") or {}) if task is None else {}
    name = task or recorded.get("name")
    if not name:
        raise ValueError(
            f"{export_dir} records no training task (an official or bare-weights export): "
            "pass --task (e.g. synthetic_nodule_seg)"
        )
    args = dict(recorded.get("args") or {}) | dict(task_args or {})
    series = held_out_series(name, split, **args)
    if not series:
        raise ValueError(f"task {name!r} has no {split} volumes with these arguments")
    per_volume = []
    for volume, truth in tqdm(series, desc=f"scoring {split}", disable=not progress):
        pred, _ = segment_volume(volume, m, rt.predict)
        if masks is not None:
            masks.append(pred)
        per_volume.append(
            {"dice": float(dice(pred[:1], truth[None])), "iou": float(iou(pred[:1], truth[None]))}
        )
    return {
        "export": m.name,
        "task": name,
        "task_args": args,
        "split": split,
        "n": len(series),
        "volume_dice": float(np.mean([v["dice"] for v in per_volume])),
        "volume_iou": float(np.mean([v["iou"] for v in per_volume])),
        "per_volume": per_volume,
        "inference": dict(m.inference),
        "backend": rt.backend,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.evaluate",
        description="Score an exported segmentation model on held-out volumes exactly as the "
        "server segments them (Dice and IoU per study and on average).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1].split("\n\n", 2)[1],
    )
    p.add_argument("export_dir", type=Path, help="an export directory (manifest.json)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--task", help="task to score on (default: the one it was fine-tuned on)")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task argument (YAML value), e.g. --set n_test_volumes=8 (repeatable)",
    )
    p.add_argument("--backend", help="onnxruntime or tensorrt (default: the best available)")
    p.add_argument("--precision", help="ONNX precision: fp32 (default), fp16 or int8")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    from train.config import ConfigError, apply_overrides

    args = build_parser().parse_args(argv)
    try:
        result = evaluate_export(
            args.export_dir,
            split=args.split,
            task=args.task,
            task_args=apply_overrides({}, args.settings),
            backend=args.backend,
            precision=args.precision,
            progress=True,
        )
    except (ManifestError, ConfigError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
