"""Does Models Genesis pretraining help? Fine-tune nodule segmentation from Genesis vs scratch.

CPU-sized and synthetic: pretrain a U-Net by restoration on phantom CT cubes, then fine-tune it
and a randomly initialised twin on a small labelled budget of phantom nodule cubes, for several
seeds, and compare test Dice (cubes, and full volumes by sliding window at 0.5 and at the
threshold each run chooses on its validation volumes) and the validation Dice curves. Prints a
table and the paired Genesis − scratch differences with 95 % t-intervals, writes
``genesis_finetune.png`` and ``genesis_finetune.json`` to ``--out``. Not run in CI (tens of
minutes).

    python bench/genesis_finetune.py --out bench/out/genesis_finetune [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.seeds import fmt_interval  # noqa: E402
from train.config import load_config  # noqa: E402
from train.engine import fit  # noqa: E402
from train.finetune.config import FinetuneConfig  # noqa: E402
from train.finetune.evaluate import calibrate_threshold, evaluate_run  # noqa: E402
from train.finetune.method import FinetuneMethod  # noqa: E402
from train.genesis.config import GenesisConfig  # noqa: E402
from train.genesis.method import GenesisMethod  # noqa: E402

CUBE = "[16, 16, 16]"


def pretrain(out: Path, steps_per_epoch: int, epochs: int) -> Path:
    run = out / "pretrain"
    cfg = load_config(
        GenesisConfig,
        ROOT / "configs/genesis/tiny.yaml",
        [
            "data.synthetic_train=8",
            "data.synthetic_val=2",
            f"data.cube_size={CUBE}",
            "data.phantom_shape=[32, 64, 64]",
            "data.cubes_per_volume=16",
            "data.dense_max=1.0",
            f"data.cache_dir={out / 'cache'}",
            f"loop.epochs={epochs}",
            f"loop.steps_per_epoch={steps_per_epoch}",
            "loop.batch_size=4",
            "loop.checkpoint_every=50",
            "loop.progress=false",
            "optim.lr=0.1",
            "optim.scheduler=none",
            "transform.shuffle_blocks=200",
        ],
    )
    if not (run / "model.safetensors").is_file():
        fit(GenesisMethod(cfg, run), run)
    return run


def finetune(out: Path, init: str, seed: int, epochs: int, steps: int, extra=()) -> dict:
    run = out / f"ft_{'genesis' if init != 'scratch' else 'scratch'}_{seed}"
    cfg = load_config(
        FinetuneConfig,
        ROOT / "configs/genesis/finetune_tiny.yaml",
        [
            f"task.args.cube_size={CUBE}",
            "task.args.n_train_volumes=2",
            "task.args.n_val_volumes=2",
            "task.args.n_test_volumes=3",
            f"task.args.seed={seed}",
            f"model.init={init}",
            f"loop.seed={seed}",
            f"loop.epochs={epochs}",
            f"loop.steps_per_epoch={steps}",
            "loop.batch_size=4",
            "loop.progress=false",
            "loop.checkpoint_every=1000",
            *extra,
        ],
    )
    start = time.perf_counter()
    fixed, calibrated = run / "eval_test_fixed.json", run / "calibration.json"
    if not fixed.is_file():
        fit(FinetuneMethod(cfg, run), run)
        evaluate_run(run, "test")  # at the config's threshold (0.5): the uncalibrated figure
        (run / "eval_test.json").replace(fixed)
    if not calibrated.is_file():
        # both arms get the same treatment: the threshold with the best validation-volume Dice
        calibration = calibrate_threshold(run)
        evaluate_run(run, "test")
        calibrated.write_text(json.dumps(calibration, indent=2))
    curve = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    at_fixed = json.loads(fixed.read_text())
    return {
        "init": "genesis" if init != "scratch" else "scratch",
        "seed": seed,
        "val_dice": [r.get("dice", 0.0) for r in curve if "val_loss" in r],
        "val_loss": [r["val_loss"] for r in curve if "val_loss" in r],
        **json.loads((run / "eval_test.json").read_text()),
        "volume_dice_fixed": at_fixed["volume_dice"],
        "threshold_fixed": at_fixed["threshold"],
        "calibration": json.loads(calibrated.read_text()),
        "seconds": time.perf_counter() - start,
    }


def plot(results: list[dict], path: Path) -> None:
    """Validation Dice per epoch, one line per run (Genesis blue, scratch orange)."""
    w, h, pad = 640, 360, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad, w - pad, h - pad], outline="black")
    epochs = max(len(r["val_dice"]) for r in results)
    for r in results:
        colour = (31, 119, 180) if r["init"] == "genesis" else (255, 127, 14)
        pts = [
            (pad + (w - 2 * pad) * i / max(epochs - 1, 1), h - pad - (h - 2 * pad) * v)
            for i, v in enumerate(r["val_dice"])
        ]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
    d.text(
        (pad, 10), "val Dice per epoch: Genesis (blue) vs scratch (orange); y 0..1", fill="black"
    )
    img.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/genesis_finetune")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--pretrain-steps", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="fine-tuning config override (both inits), e.g. "
                        "task.args.background_cubes_per_volume=8")  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pre = pretrain(args.out, args.pretrain_steps, args.pretrain_epochs)
    results = []
    for seed in args.seeds:
        for init in ("scratch", f"genesis:{pre}"):
            results.append(finetune(args.out, init, seed, args.epochs, args.steps, args.overrides))
    print(f"{'init':<8} {'seed':>4} {'cube Dice':>10} {'vol Dice@0.5':>13} {'threshold':>9} "
          f"{'vol Dice@thr':>12}  val Dice/epoch")  # fmt: skip
    for r in results:
        curve = " ".join(f"{v:.2f}" for v in r["val_dice"])
        print(
            f"{r['init']:<8} {r['seed']:>4} {r['dice']:>10.3f} {r['volume_dice_fixed']:>13.3f} "
            f"{r['threshold']:>9.2f} {r['volume_dice']:>12.3f}  {curve}"
        )
    print(f"\nmean and 95 % t-interval over seeds {args.seeds}; differences paired by seed")
    rows = {"dice": "test-cube Dice", "volume_dice_fixed": "volume Dice at 0.5",
            "volume_dice": "volume Dice at the validation-chosen threshold"}  # fmt: skip
    for key, label in rows.items():
        g = [r[key] for r in results if r["init"] == "genesis"]
        s = [r[key] for r in results if r["init"] == "scratch"]
        diff = [a - b for a, b in zip(g, s, strict=True)]
        print(
            f"{label}: genesis {fmt_interval(g)} vs scratch {fmt_interval(s)}; "
            f"difference {fmt_interval(diff)}, genesis better in "
            f"{sum(d > 0 for d in diff)}/{len(diff)} seeds"
        )
    plot(results, args.out / "genesis_finetune.png")
    (args.out / "genesis_finetune.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
