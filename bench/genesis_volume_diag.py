"""Re-score finished bench/genesis_finetune.py runs on whole volumes under other evaluation
choices: per-sample vs running batch-norm statistics, thresholds, false positives per true voxel.

    python bench/genesis_volume_diag.py bench/out/genesis_base

Prints one row per run and writes ``diag.json`` into the directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import load_model  # noqa: E402
from train.config import load_config  # noqa: E402
from train.finetune.config import FinetuneConfig  # noqa: E402
from train.finetune.evaluate import volume_probabilities, volume_scores  # noqa: E402
from train.finetune.tasks import build_task  # noqa: E402


def diagnose(run: Path) -> dict:
    """Test-volume Dice of ``run`` per normalisation mode and threshold, and false-positive
    voxels per true nodule voxel at 0.5."""
    cfg = load_config(FinetuneConfig, run / "config.yaml")
    task = build_task(cfg.task.name, **cfg.task.args)
    model = load_model(run / "model.safetensors").eval()
    row = {"run": run.name}
    for mode in ("per_sample", "running"):
        ev = dataclasses.replace(cfg.eval, batch_norm=mode)
        probs = volume_probabilities(model, task.volumes_test, task.cube_size, ev)
        for threshold in (0.5, 0.8, 0.95):
            row[f"{mode}@{threshold}"] = round(volume_scores(probs, threshold)["volume_dice"], 3)
        fp = [float(((p >= 0.5) & ~m).sum() / max(int(m.sum()), 1)) for p, m in probs]
        row[f"{mode} FP/true voxels"] = round(float(np.mean(fp)), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a bench/genesis_finetune.py --out directory")
    args = parser.parse_args()
    rows = []
    for run in sorted(args.out.glob("ft_*")):
        rows.append(diagnose(run))
        print(rows[-1], flush=True)
    (args.out / "diag.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
