"""PEAC evidence: landmarks matched across different patients, beside references, over seeds.

    python bench/peac_correspondence.py --config configs/peac/tiny_conv.yaml --seeds 0 1 2

For each seed: random init (the preset's architecture, that seed's initial weights), PEAC⁻¹
(``losses.local_weight=0``), PEAC and PEAC with the release's local MSE
(``losses.local_kind=mse``) are trained with ``loop.seed`` = seed, and the student and
the exported teacher are scored by :mod:`train.peac.evaluate` on the same test pairs: films of
*different* phantom patients, varied in scale, rotation, position and exposure, each cut at its
own random pixel offset, at the training scale; only landmarks inside both films count, for
every matcher. References on the same landmarks: position only (same pixel), the raw cell
patch, a 3 × 3-cell context descriptor. Intervals: mean ± t·sd/√n over seeds for trained arms;
a 95 % bootstrap over pairs for the (deterministic) references. Writes ``results.json``,
``diagnostics.png`` (the per-epoch numbers of :mod:`train.peac.diagnostics`) and ``hits.png``
under ``--out``. Not in CI.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.seeds import seed_interval  # noqa: E402
from models.checkpoint import load_model  # noqa: E402
from train.config import load_config  # noqa: E402
from train.engine import fit  # noqa: E402
from train.peac.config import PEACConfig  # noqa: E402
from train.peac.evaluate import (  # noqa: E402
    bootstrap_interval,
    landmark_pairs,
    load_pairs,
    match_points,
    model_hits,
    model_tokens,
    references,
    save_pairs,
    student_from_checkpoint,
)
from train.peac.method import PEACMethod  # noqa: E402

ARMS = {
    "random": None,
    "peac_inv": ["losses.local_weight=0"],  # PEAC⁻¹: no local loss
    "peac": [],
    "peac_mse": ["losses.local_kind=mse"],  # the release's local loss in the same preset
}


def config(path: Path, seed: int, cache: Path, extra) -> PEACConfig:
    return load_config(
        PEACConfig,
        path,
        [f"loop.seed={seed}", "loop.progress=false", f"data.cache_dir={cache}", *extra],
    )


def run_arm(cfg: PEACConfig, run: Path, trained: bool):
    """(student, teacher, seconds): random init gives the same model twice."""
    shutil.rmtree(run, ignore_errors=True)
    method = PEACMethod(cfg, run)
    start = time.time()
    if not trained:
        torch.manual_seed(cfg.loop.seed)
        pair, _, _ = method.build_model()
        teacher, _, _ = method.export_model(pair)
        return teacher.eval(), teacher.eval(), 0.0
    fit(method, run)
    seconds = time.time() - start
    return student_from_checkpoint(run), load_model(run / "model.safetensors").eval(), seconds


def diagnostics_plot(out: Path, runs: dict[str, list[Path]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("loss_global", "global loss"), ("loss_local", "local loss"),
        ("order_acc_unshuffled", "order acc, unshuffled"),
        ("order_acc_shuffled", "order acc, shuffled"),
        ("global_cos_between_images", "global cos between images"),
        ("token_spread", "token spread"),
        ("local_loss_correct", "local loss: correct (-), transposed (--), other (:)"),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    colours = {"peac_inv": "tab:orange", "peac": "tab:blue", "peac_mse": "tab:green"}
    for (key, title), ax in zip(keys, axes.flat, strict=False):
        for arm, paths in runs.items():
            for k, path in enumerate(paths):
                rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
                rows = [r for r in rows if "val_loss" in r]
                ep = [r["epoch"] for r in rows]
                lab = arm if k == 0 else None
                ax.plot(ep, [r.get(key) for r in rows], color=colours[arm], label=lab)
                if key == "local_loss_correct":
                    ax.plot(ep, [r.get("local_loss_transposed") for r in rows], "--",
                            color=colours[arm])  # fmt: skip
                    ax.plot(ep, [r.get("local_loss_other_patient") for r in rows], ":",
                            color=colours[arm])  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    axes.flat[0].legend()
    axes.flat[-1].axis("off")
    fig.tight_layout()
    fig.savefig(out / "diagnostics.png", dpi=90)


def correspondence_figure(model, pairs, path: Path, scale: int = 3) -> None:
    """One row per pair: A's landmarks (green), B's true landmarks (blue), the model's matches
    (red, joined by yellow lines)."""
    from PIL import Image, ImageDraw

    side = pairs[0].a.shape[0] * scale
    canvas = Image.new("RGB", (2 * side + 10, len(pairs) * (side + 10) - 10), "white")
    draw = ImageDraw.Draw(canvas)

    def dot(r, c, x0, y0, colour):
        x, y = x0 + c * scale, y0 + r * scale
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=colour, width=2)

    for row, pair in enumerate(pairs):
        y0 = row * (side + 10)
        for k, film in enumerate((pair.a, pair.b)):
            grey = (np.clip(film, 0, 1) * 255).astype(np.uint8)
            canvas.paste(Image.fromarray(grey).resize((side, side)), (k * (side + 10), y0))
        pred = match_points(model_tokens(model), model.cell, pair)
        for (ra, ca), (rb, cb), (rp, cp) in zip(pair.pts_a, pair.pts_b, pred, strict=True):
            dot(ra, ca, 0, y0, (0, 200, 0))
            dot(rb, cb, side + 10, y0, (0, 120, 255))
            dot(rp, cp, side + 10, y0, (255, 40, 40))
            draw.line([(ca * scale, y0 + ra * scale), (side + 10 + cp * scale, y0 + rp * scale)],
                      fill=(255, 200, 0), width=1)  # fmt: skip
    canvas.save(path)


def hits_plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["summary"])
    means = [results["summary"][n]["mean"] for n in names]
    lo = [m - results["summary"][n]["lo"] for n, m in zip(names, means, strict=True)]
    hi = [results["summary"][n]["hi"] - m for n, m in zip(names, means, strict=True)]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.bar(names, means, yerr=[lo, hi], capsize=4, color="tab:blue")
    ax.set_ylabel("landmarks within one cell")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "hits.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/peac/tiny_conv.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for every arm, e.g. loop.epochs=10")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/peac")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    probe_cfg = config(args.config, 0, cache, args.overrides)
    key = f"pairs_{args.pairs}_{probe_cfg.load_size}_{probe_cfg.model.img_size}.npz"
    pairs_file = cache / key
    if pairs_file.is_file():  # the test pairs take ~1 s each to render
        pairs = load_pairs(pairs_file)
    else:
        ct_shape = probe_cfg.data.reader.get("ct_shape", (48, 64, 64))
        pairs = landmark_pairs(
            args.pairs, load_size=probe_cfg.load_size, window=probe_cfg.model.img_size,
            ct_shape=ct_shape,
        )  # fmt: skip
        cache.mkdir(parents=True, exist_ok=True)
        save_pairs(pairs_file, pairs)
    cell = probe_cfg.cell
    refs = references(pairs, cell)
    results = {
        "config": str(args.config), "overrides": args.overrides, "seeds": args.seeds,
        "pairs": len(pairs), "landmarks": int(sum(len(p.names) for p in pairs)),
        "references": {k: float(v.mean()) for k, v in refs.items()}, "arms": {},
    }  # fmt: skip
    summary = {}
    for name, values in refs.items():
        lo, hi = bootstrap_interval(values)
        summary[name] = {"mean": float(values.mean()), "lo": lo, "hi": hi}
        print(f"{name}: {values.mean():.3f} [{lo:.3f}, {hi:.3f}]", flush=True)
    runs: dict[str, list[Path]] = {}
    for arm in args.arms:
        per_seed = {"student": [], "teacher": [], "seconds": []}
        for seed in args.seeds:
            extra = args.overrides + (ARMS[arm] or [])
            cfg = config(args.config, seed, cache, extra)
            run = args.out / f"{arm}_seed{seed}"
            student, teacher, seconds = run_arm(cfg, run, trained=ARMS[arm] is not None)
            if ARMS[arm] is not None:
                runs.setdefault(arm, []).append(run)
            s, t = model_hits(student, pairs).mean(), model_hits(teacher, pairs).mean()
            per_seed["student"].append(float(s))
            per_seed["teacher"].append(float(t))
            per_seed["seconds"].append(seconds)
            print(f"{arm} seed {seed}: student {s:.3f}, teacher {t:.3f} ({seconds:.0f} s)",
                  flush=True)  # fmt: skip
        results["arms"][arm] = per_seed
        for who in ("student", "teacher") if ARMS[arm] is not None else ("teacher",):
            mean, lo, hi = seed_interval(per_seed[who])
            label = arm if ARMS[arm] is None else f"{arm} {who}"
            summary[label] = {"mean": mean, "lo": lo, "hi": hi}
    results["summary"] = summary
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{len(pairs)} pairs, {results['landmarks']} landmarks inside both films; "
          f"seeds {args.seeds}\n\n| matcher | landmarks within one cell | 95 % interval |\n"
          "|---|---:|---|")  # fmt: skip
    for name, r in summary.items():
        print(f"| {name} | {r['mean']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] |")
    if "peac" in args.arms:  # the first seed's teacher on the first two test pairs
        teacher = load_model(args.out / f"peac_seed{args.seeds[0]}" / "model.safetensors")
        correspondence_figure(teacher, pairs[:2], args.out / "correspondence.png")
    try:
        hits_plot(args.out, results)
        if runs:
            diagnostics_plot(args.out, runs)
    except ImportError:
        print("matplotlib not installed: no plots")


if __name__ == "__main__":
    main()
