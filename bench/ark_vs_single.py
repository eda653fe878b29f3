"""Ark (all datasets, own heads, EMA teacher) against single-dataset training, same step budget.

    python bench/ark_vs_single.py [--seeds 0 1 2] [--rounds 4] [--out bench/out/ark]

Both arms use the tiny preset's synthetic datasets, backbone and sizes. Ark trains ``rounds``
rounds over all datasets (one epoch each per round) and is scored with its teacher; each
single-dataset model trains from scratch on its own dataset for ``rounds * n_datasets`` epochs
(the same number of optimiser steps as Ark spends in total, so each single model gets *more*
steps on its own data than Ark does). Held-out test mean AUROC per dataset, per seed; writes
``results.json`` and ``ark_vs_single.png`` under ``--out``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.ark.config import ArkConfig  # noqa: E402
from train.ark.evaluate import evaluate_ark_run  # noqa: E402
from train.ark.method import ArkMethod  # noqa: E402
from train.ark.transfer import TransferConfig, TransferMethod, evaluate_transfer_run  # noqa: E402
from train.config import load_config  # noqa: E402
from train.engine import fit  # noqa: E402


def run_ark(seed: int, rounds: int, out: Path, cache: Path) -> dict:
    cfg = load_config(
        ArkConfig,
        ROOT / "configs/ark/tiny.yaml",
        [f"loop.seed={seed}", f"loop.epochs={rounds}", "loop.progress=false",
         f"data.cache_dir={cache}"],
    )  # fmt: skip
    run = out / f"ark-seed{seed}"
    shutil.rmtree(run, ignore_errors=True)
    fit(ArkMethod(cfg, run), run)
    result = evaluate_ark_run(run, "test")
    return {name: r["mean_auroc"] for name, r in result["datasets"].items()}


def run_single(seed: int, rounds: int, out: Path, cache: Path) -> dict:
    ark = load_config(ArkConfig, ROOT / "configs/ark/tiny.yaml")
    scores = {}
    for ds in ark.data.datasets:
        cfg = TransferConfig(dataset=ds, init="scratch", size=ark.views.size, ten_crop=False)
        cfg.data.load_size, cfg.data.cache_dir = ark.data.load_size, str(cache)
        cfg.model = ark.model
        cfg.loop = ark.loop
        cfg.loop.seed, cfg.loop.progress = seed, False
        cfg.loop.epochs = rounds * len(ark.data.datasets)
        cfg.optim = ark.optim
        run = out / f"single-{ds.head_name}-seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        fit(TransferMethod(cfg, run), run)
        result = evaluate_transfer_run(run, cfg, "test")
        scores[ds.head_name] = result["mean_auroc"]
    return scores


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(results["ark"][0])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, (arm, label) in enumerate((("single", "single-dataset"), ("ark", "Ark (teacher)"))):
        vals = np.array([[r[n] for n in names] for r in results[arm]])
        ax.bar(x + (k - 0.5) * 0.38, vals.mean(0), 0.38, yerr=vals.std(0), label=label, capsize=3)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, names)
    ax.set_ylabel("test mean AUROC")
    ax.set_ylim(0.4, 1.0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/ark")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    results = {"ark": [], "single": [], "seeds": args.seeds, "rounds": args.rounds}
    for seed in args.seeds:
        results["ark"].append(run_ark(seed, args.rounds, args.out, cache))
        results["single"].append(run_single(seed, args.rounds, args.out, cache))
        print(f"seed {seed}: ark {results['ark'][-1]} single {results['single'][-1]}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    names = sorted(results["ark"][0])
    print("\n| dataset | single-dataset | Ark (teacher) |\n|---|---|---|")
    for n in names:
        s = np.array([r[n] for r in results["single"]])
        a = np.array([r[n] for r in results["ark"]])
        print(f"| {n} | {s.mean():.3f} ± {s.std():.3f} | {a.mean():.3f} ± {a.std():.3f} |")
    try:
        plot(results, args.out / "ark_vs_single.png")
        print(f"plot: {args.out / 'ark_vs_single.png'}")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
