"""Which batch-independent normalisation to export Models Genesis with.

Dice of the tiny fine-tuned U-Net (``bench/out/export/runs/genesis_finetune_tiny``, made by
``python -m bench.export``) on its synthetic test cubes, exported ``per_sample`` and ``running``,
beside the released batch-statistics model in PyTorch at batch sizes 1, 4 and 14.

Run: ``python -m bench.export_batch_norm [--run-dir DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from export.bundle import ExportOptions, build_export
from export.runtime import load
from export.source import resolve_source
from train.config import load_config
from train.finetune.config import FinetuneConfig
from train.finetune.tasks import build_task
from train.metrics import dice

RUN = Path("bench/out/export/runs/genesis_finetune_tiny")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=RUN, help="a fine-tuned segmentation run")
    args = p.parse_args(argv)
    cfg = load_config(FinetuneConfig, args.run_dir / "config.yaml")
    task = build_task(cfg.task.name, **cfg.task.args)
    x, y = task.test.batch(list(range(len(task.test))))
    x, truth = x.numpy(), y.numpy() >= 0.5
    thr = cfg.eval.threshold
    source = resolve_source(args.run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("per_sample", "running"):
            out = Path(tmp) / mode
            opts = ExportOptions(batch_norm=mode, calibration_samples=3)
            build_export(source, out, opts, log=lambda _m: None)
            probs = load(out, backend="ort-cpu").predict(x)["probabilities"]
            print(f"exported {mode:<10}  dice {float(dice(probs >= thr, truth).mean()):.3f}")
    model = source.model.eval()
    with torch.no_grad():
        for bs in (1, 4, 14):
            parts = [model(torch.from_numpy(x[i : i + bs])) for i in range(0, len(x), bs)]
            probs = torch.sigmoid(torch.cat(parts)).numpy()
            score = float(dice(probs >= thr, truth).mean())
            print(f"torch batch statistics, batch {bs:<2}  dice {score:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
