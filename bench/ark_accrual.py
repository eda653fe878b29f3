"""Does Ark's accrual help? Ark vs one model per dataset vs one model on pooled labels (issue #18).

    python bench/ark_accrual.py [--seeds 0 1 2] [--config configs/ark/accrual.yaml]
                                [--out bench/out/ark_accrual]

Setting (``configs/ark/accrual.yaml``): three synthetic chest X-ray datasets over the same phantom
anatomy, each with its own partial, noisy label set and a small labeled training split. Arms, all
with the same backbone, optimiser and whole-film views (Ark's differ only by its affine jitter and
its student's photometric change):

* **Ark**: one backbone, one head per dataset, EMA teacher, datasets visited cyclically
  (``rounds`` rounds); scored with the teacher, as released.
* **per dataset**: one model per dataset from scratch on its own labels, ``3 * rounds`` epochs
  each (so each gets as many steps on its own data as Ark spends on all three: a generous
  baseline).
* **pooled**: one model, one head over the union of the labels (pooled by meaning,
  :mod:`train.ark.pooled`), ``rounds`` epochs over all items; absent labels masked.
* **raw pixels** (a reference, not an arm): logistic regression on the 16x16-downsampled
  film, per dataset.

Each dataset's test split is scored per label (AUROC) against its own noisy labels (what a user
can measure) and against the phantom truth (what was learned); figures are the mean over the
dataset's labels, then over datasets, per seed; intervals are 95 % t-intervals over seeds (a
seed changes initialisation, views and batches; the films are the same in every seed, so the
raw-pixel reference has no interval).
Writes ``results.json`` and ``ark_accrual.png`` under ``--out``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.seeds import fmt_interval, seed_interval  # noqa: E402
from train.ark.config import ArkConfig  # noqa: E402
from train.ark.data import build_sources  # noqa: E402
from train.ark.evaluate import evaluate_ark_run, score_source  # noqa: E402
from train.ark.method import ArkMethod  # noqa: E402
from train.ark.pooled import PooledMethod, evaluate_pooled_run, pooled_config  # noqa: E402
from train.ark.transfer import (  # noqa: E402
    TransferConfig,
    TransferMethod,
    evaluate_transfer_run,
    fit_logistic,
)
from train.config import load_config  # noqa: E402
from train.engine import fit  # noqa: E402

ARMS = ("per_dataset", "pooled", "ark")
LABELS = {"per_dataset": "one model per dataset", "pooled": "one model, pooled labels",
          "ark": "Ark (teacher)", "raw": "raw pixels (reference)"}  # fmt: skip


def summary(result: dict) -> dict:
    """``{dataset: {"labels": mean AUROC vs own labels, "truth": vs truth}}``."""
    return {
        name: {"labels": r["mean_auroc"], "truth": r["truth"]["mean_auroc"]}
        for name, r in result["datasets"].items()
    }


def ark_config(path: Path, seed: int, cache: Path, overrides=()) -> ArkConfig:
    return load_config(
        ArkConfig, path,
        [f"loop.seed={seed}", "loop.progress=false", f"data.cache_dir={cache}", *overrides],
    )  # fmt: skip


def transfer_config(ark: ArkConfig, epochs: int) -> TransferConfig:
    """The single-model recipe on Ark's backbone, sizes, loop and optimiser."""
    cfg = TransferConfig(init="scratch", size=ark.views.size, ten_crop=False)
    cfg.data.load_size, cfg.data.cache_dir = ark.data.load_size, ark.data.cache_dir
    cfg.model, cfg.optim = ark.model, ark.optim
    cfg.loop = type(ark.loop)(**vars(ark.loop))
    cfg.loop.epochs = epochs
    return cfg


def run_ark(ark: ArkConfig, out: Path) -> dict:
    run = out / f"ark-seed{ark.loop.seed}"
    shutil.rmtree(run, ignore_errors=True)
    fit(ArkMethod(ark, run), run)
    return summary(evaluate_ark_run(run, "test"))


def run_per_dataset(ark: ArkConfig, out: Path) -> dict:
    scores = {}
    for ds in ark.data.datasets:
        cfg = transfer_config(ark, ark.loop.epochs * len(ark.data.datasets))
        cfg.dataset = ds
        run = out / f"single-{ds.head_name}-seed{ark.loop.seed}"
        shutil.rmtree(run, ignore_errors=True)
        fit(TransferMethod(cfg, run), run)
        scores |= summary(evaluate_transfer_run(run, cfg, "test"))
    return scores


def run_pooled(ark: ArkConfig, out: Path) -> dict:
    cfg = pooled_config(ark.data.datasets, transfer_config(ark, ark.loop.epochs))
    run = out / f"pooled-seed{ark.loop.seed}"
    shutil.rmtree(run, ignore_errors=True)
    fit(PooledMethod(cfg, run), run)
    return summary(evaluate_pooled_run(run, cfg, "test"))


def raw_pixels(ark: ArkConfig) -> dict:
    """Logistic regression on 16x16 films (standardised), per dataset: what needs no learning."""
    sources = build_sources(ark.data, ark.data.cache_dir, splits=("train", "test"), show=False)

    def feats(src):
        x = torch.from_numpy(np.asarray(src.images, np.float32))[:, None]
        return F.adaptive_avg_pool2d(x, 16).flatten(1).numpy()

    scores = {}
    for train, test in zip(sources["train"], sources["test"], strict=True):
        xa, xb = feats(train), feats(test)
        mean, std = xa.mean(0), xa.std(0) + 1e-6
        w, b = fit_logistic((xa - mean) / std, train.target, train.mask, l2=1e-2)
        probs = (torch.from_numpy((xb - mean) / std).double() @ w.T + b).sigmoid().numpy()
        r = score_source(probs, test)
        scores[test.name] = {"labels": r["mean_auroc"], "truth": r["truth"]["mean_auroc"]}
    return scores


def table(results: dict, key: str) -> str:
    names = list(results["ark"][0])
    arms = [*ARMS, "raw"]
    rows = [f"| dataset | {' | '.join(LABELS[a] for a in arms)} |", "|---" * (len(arms) + 1) + "|"]
    for n in [*names, "mean"]:
        cells = []
        for a in arms:
            per_seed = [np.mean([r[k][key] for k in names]) if n == "mean" else r[n][key]
                        for r in results[a]]  # fmt: skip
            cells.append(fmt_interval(per_seed))
        rows.append(f"| {n} | {' | '.join(cells)} |")
    for a in ("per_dataset", "pooled"):
        diff = [np.mean([r[k][key] for k in names]) - np.mean([s[k][key] for k in names])
                for r, s in zip(results["ark"], results[a], strict=True)]  # fmt: skip
        rows.append(
            f"\nArk − {LABELS[a]} (mean over datasets, paired by seed): {fmt_interval(diff)}"
        )
    return "\n".join(rows)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["ark"][0])
    arms = [*ARMS, "raw"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key in zip(axes, ("truth", "labels"), strict=True):
        x = np.arange(len(names))
        width = 0.8 / len(arms)
        for k, a in enumerate(arms):
            vals = np.array([[r[n][key] for n in names] for r in results[a]])
            stats = [seed_interval(vals[:, j]) for j in range(len(names))]
            m = np.array([s[0] for s in stats])
            err = np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T
            ax.bar(x + (k - (len(arms) - 1) / 2) * width, m, width, label=LABELS[a],
                   yerr=None if np.isnan(err).any() else err, capsize=2)  # fmt: skip
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, names)
        ax.set_title(f"test mean AUROC vs {'phantom truth' if key == 'truth' else 'own labels'}")
        ax.set_ylim(0.4, 1.0)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/ark/accrual.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override a.b=value (all arms), repeatable")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/ark_accrual")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    results = {a: [] for a in (*ARMS, "raw")} | {"seeds": args.seeds,
                                                 "config": str(args.config),
                                                 "overrides": args.overrides}  # fmt: skip
    runners = {"per_dataset": run_per_dataset, "pooled": run_pooled, "ark": run_ark}
    for seed in args.seeds:
        ark = ark_config(args.config, seed, cache, args.overrides)
        for arm in ARMS:
            t0 = time.perf_counter()
            results[arm].append(runners[arm](ark, args.out))
            print(f"seed {seed} {arm:<11} {time.perf_counter() - t0:5.0f} s "
                  f"{json.dumps(results[arm][-1])}", flush=True)  # fmt: skip
        results["raw"].append(raw_pixels(ark))
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    for key, title in (("truth", "against the phantom truth"), ("labels", "against own labels")):
        print(f"\nTest mean AUROC {title} (95 % t-interval over seeds {args.seeds}):\n")
        print(table(results, key))
    try:
        plot(results, args.out / "ark_accrual.png")
        print(f"\nplot: {args.out / 'ark_accrual.png'}")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
