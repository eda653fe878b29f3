"""Re-score finished bench/genesis_finetune.py runs on whole volumes under other evaluation
choices: per-sample vs running batch-norm statistics, thresholds, false positives per true voxel.

    python bench/genesis_volume_diag.py bench/out/genesis_base
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "/work/main")
from models.checkpoint import load_model
from models.unet3d import batch_independent
from train.config import load_config
from train.finetune.config import FinetuneConfig
from train.finetune.tasks import build_task
from train.inference import sliding_window_inference
from train.metrics import dice

out = Path(sys.argv[1])
rows = []
for run in sorted(out.glob("ft_*")):
    cfg = load_config(FinetuneConfig, run / "config.yaml")
    task = build_task(cfg.task.name, **cfg.task.args)
    model = load_model(run / "model.safetensors").eval()
    res = {"run": run.name}
    for mode in ("per_sample", "running"):
        net, _ = batch_independent(model, mode)
        probs_all = []
        for x, mask in task.volumes_test:
            with torch.no_grad():
                p = sliding_window_inference(
                    x[None],
                    task.cube_size,
                    lambda w, net=net: torch.sigmoid(net(w, return_logits=True)),
                    overlap=0.5,
                    blend="gaussian",
                )
            probs_all.append((p, mask))
        for th in (0.5, 0.8, 0.95):
            d = [float(dice(p >= th, m[None] >= 0.5).mean()) for p, m in probs_all]
            res[f"{mode}@{th}"] = round(float(np.mean(d)), 3)
        fp = [
            float(((p >= 0.5) & ~(m[None] >= 0.5)).float().sum() / max((m >= 0.5).sum(), 1))
            for p, m in probs_all
        ]
        res[f"{mode} FP/true voxels"] = round(float(np.mean(fp)), 1)
    print(res, flush=True)
    rows.append(res)
(out / "diag.json").write_text(json.dumps(rows, indent=1))
