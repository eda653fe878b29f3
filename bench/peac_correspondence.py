"""PEAC evidence: landmark correspondence across different patients, and linear probing.

    python bench/peac_correspondence.py --out bench/out/peac --seeds 0 1 --epochs 20 --pairs 40

Not in CI (minutes of CPU). Three arms share the tiny preset's network (``configs/peac/tiny.yaml``:
ViT-Tiny/16 at 112 px, a 7 × 7 grid of 16-px cells), one per training seed:

* ``random init``: the engine's initial weights for that seed, no training;
* ``PEAC⁻¹``: the tiny preset with ``losses.local_weight=0`` (no local consistency loss);
* ``PEAC``: the full tiny preset.

Each trained arm is ``train.engine.fit(PEACMethod(cfg), run_dir)`` on the preset's synthetic
films; the exported teacher (``model.safetensors``) is what is evaluated.

**Correspondence across patients.** Each test patient (phantom seeds drawn away from every
training/validation item of the preset) is rendered at the preset's load size (160 px, the scale
training saw) and cut to one 112-px model window at its own random offset (0..48 px per axis, the
range of the training crops), so the same landmark sits at different pixels of A and B and
"same pixel" is not an answer. For a pair of *different* patients every phantom landmark (carina,
apices, costophrenic angles, heart borders, diaphragm domes, aortic arch, hila, cardiac apex) that
lies inside both windows is mapped A → B with ``models.peac.correspond(model, a, b).query``
(nearest B token by cosine similarity; the answer is that cell's centre). Hit criterion:
``|row_pred - row_true| <= cell`` **and** ``|col_pred - col_true| <= cell`` with ``cell`` the
model cell in original pixels (16 px here: the window is not resized), i.e. the predicted cell
is the true landmark's cell or one of its 8 neighbours; ``same cell`` (``<= cell / 2``) is also
reported. Baselines: ``same pixel`` (B's prediction = A's pixel coordinates) and ``chance`` (a
uniformly random B cell, computed exactly).

**Linear probe.** ``train.ark.transfer.linear_probe`` (frozen embeddings → L2 logistic
regression) on ``synth_nih`` with its own seed, test-split mean AUROC: ``scratch`` (a fresh
``ArkModel`` of the same backbone, ``init=scratch``, timm's default pooling = ViT class token),
and the three arms through ``init=peac:<run dir>`` (mean-pooled token map).

Writes ``results.json``, ``correspondence.png`` (PIL) and ``hits.png`` (matplotlib, skipped when
it is not installed) under ``--out`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imaging.datasets.synthetic import SyntheticChestDataset  # noqa: E402
from imaging.phantoms import LANDMARKS, make_chest_ct, make_radiograph  # noqa: E402
from models.checkpoint import load_model, save_weights  # noqa: E402
from models.peac import correspond  # noqa: E402
from train.ark.transfer import TransferConfig, linear_probe  # noqa: E402
from train.config import load_config  # noqa: E402
from train.engine import fit  # noqa: E402
from train.peac.config import PEACConfig  # noqa: E402
from train.peac.method import PEACMethod  # noqa: E402

PRESET = ROOT / "configs/peac/tiny.yaml"
CT_SHAPE = (48, 64, 64)
ARMS = {"random init": None, "PEAC⁻¹": ["losses.local_weight=0"], "PEAC": []}


# ------------------------------------------------------------------------------ training


def peac_config(args, seed: int, extra=()) -> PEACConfig:
    return load_config(
        PEACConfig,
        PRESET,
        [
            f"loop.epochs={args.epochs}",
            f"loop.seed={seed}",
            f"data.reader.n={args.train_n}",
            "loop.progress=false",
            f"data.cache_dir={args.out / 'cache'}",
            *extra,
        ],
    )


def train_arm(args, seed: int, arm: str, run: Path) -> dict:
    """Train (or, for random init, just build and export) one arm into ``run``."""
    extra = ARMS[arm]
    cfg = peac_config(args, seed, extra or ())
    method = PEACMethod(cfg, run)
    shutil.rmtree(run, ignore_errors=True)
    start = time.time()
    if extra is None:  # the weights fit() would start from, exported like a trained teacher
        torch.manual_seed(seed)
        pair, _, _ = method.build_model()
        model, name, model_args = method.export_model(pair)
        run.mkdir(parents=True)
        save_weights(model, run / "model.safetensors", model_name=name, model_args=model_args)
        return {"train_s": time.time() - start}
    fit(method, run)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in log if "val_loss" in r]
    return {"train_s": time.time() - start, "val_loss_first": val[0], "val_loss_last": val[-1]}


# ------------------------------------------------------------------------------ films


class Window:
    """A model-sized window of a film, with the film's landmarks moved into its pixels."""

    def __init__(self, film, offset: tuple[int, int], size: int) -> None:
        r, c = offset
        self.seed, self.offset, self.size = film.seed, (r, c), size
        self.pixels = np.asarray(film.pixels, np.float32)[r : r + size, c : c + size]
        self.landmarks = {k: np.asarray(v, float) - (r, c) for k, v in film.landmarks.items()}

    def inside(self, name: str) -> bool:
        p = self.landmarks[name]
        return bool(np.all((p >= -0.5) & (p < self.size - 0.5)))


def training_seeds(cfg: PEACConfig) -> set[int]:
    """Phantom seeds of every train/val item of the preset (the test patients avoid them)."""
    seeds = set()
    for split, n in (("train", cfg.data.reader["n"]), ("val", cfg.data.per_split["val"]["n"])):
        ds = SyntheticChestDataset(split=split, n=n, seed=cfg.data.reader.get("seed", 0))
        seeds |= {ds.item_seed(i) for i in range(n)}
    return seeds


def make_pairs(n_pairs: int, film: int, size: int, avoid: set[int], seed: int = 2026):
    """``n_pairs`` pairs of windows of distinct, unseen patients at independent random offsets."""
    rng = np.random.default_rng(seed)
    patients: list[int] = []
    while len(patients) < 2 * n_pairs:
        s = int(rng.integers(0, 2**31))
        if s not in avoid and s not in patients:
            patients.append(s)
    windows = []
    for s in patients:
        ct = make_chest_ct(s, shape=CT_SHAPE)
        f = make_radiograph(ct, size=(film, film))
        windows.append(Window(f, tuple(int(v) for v in rng.integers(0, film - size + 1, 2)), size))
    return [(windows[2 * k], windows[2 * k + 1]) for k in range(n_pairs)]


# ------------------------------------------------------------------------------ scoring


def _hits(pred: np.ndarray, true: np.ndarray, tol: float) -> np.ndarray:
    return np.all(np.abs(pred - true) <= tol, axis=-1)


def chance_hit(true: np.ndarray, grid: int, cell: float) -> np.ndarray:
    """Probability that a uniformly random cell's centre is a hit, per ``(N, 2)`` true point."""
    centres = (np.arange(grid) + 0.5) * cell - 0.5
    ok = np.abs(centres[None, None, :] - true[:, :, None]) <= cell  # N, 2, g
    return ok[:, 0].sum(1) * ok[:, 1].sum(1) / grid**2


def score(pairs, predict, cell: float) -> dict:
    """Hit fractions of ``predict(a, b, points_a) -> points_b``, landmarks inside both windows."""
    per_pair, per_pair_strict = [], []
    per_lm = {n: [] for n in LANDMARKS}
    for a, b in pairs:
        names = [n for n in LANDMARKS if a.inside(n) and b.inside(n)]
        if not names:
            continue
        pts_a = np.array([a.landmarks[n] for n in names])
        true = np.array([b.landmarks[n] for n in names])
        pred = predict(a, b, pts_a)
        hit = _hits(pred, true, cell)
        per_pair.append(float(hit.mean()))
        per_pair_strict.append(float(_hits(pred, true, cell / 2).mean()))
        for n, h in zip(names, hit, strict=True):
            per_lm[n].append(float(h))
    return {
        "hit_mean": float(np.mean(per_pair)),
        "hit_std_over_pairs": float(np.std(per_pair)),
        "same_cell_mean": float(np.mean(per_pair_strict)),
        "per_landmark": {n: float(np.mean(v)) if v else None for n, v in per_lm.items()},
        "per_landmark_n": {n: len(v) for n, v in per_lm.items()},
        "per_pair": per_pair,
    }


def model_predictor(model):
    def predict(a, b, pts_a):
        return correspond(model, a.pixels, b.pixels).query(pts_a)[0]

    return predict


def chance_score(pairs, grid: int, cell: float) -> dict:
    per_pair = []
    for a, b in pairs:
        names = [n for n in LANDMARKS if a.inside(n) and b.inside(n)]
        if names:
            true = np.array([b.landmarks[n] for n in names])
            per_pair.append(float(chance_hit(true, grid, cell).mean()))
    return {"hit_mean": float(np.mean(per_pair)), "hit_std_over_pairs": float(np.std(per_pair))}


# ------------------------------------------------------------------------------ probing


def probe(args, init: str, out: Path, seed: int) -> dict:
    overrides = [
        f"init={init}",
        f"size={args.img_size}",
        f"data.load_size={args.probe_load}",
        f"data.cache_dir={args.out / 'cache'}",
        f"dataset.reader={{n: {args.probe_train_n}, size: [{args.probe_load}, {args.probe_load}],"
        f" ct_shape: [48, 64, 64], seed: {args.probe_seed}}}",
        f"dataset.per_split={{test: {{n: {args.probe_test_n}}}}}",
        "loop.progress=false",
    ]
    if init == "scratch":
        overrides += [f"model.backbone={args.backbone}", "model.projector=none"]
    cfg = load_config(TransferConfig, ROOT / "configs/ark/transfer_tiny.yaml", overrides)
    torch.manual_seed(seed)  # the scratch network's weights
    r = linear_probe(cfg, out, split="test")
    return {"mean_auroc": float(r["mean_auroc"]), "auroc": r.get("auroc", {})}


# ------------------------------------------------------------------------------ pictures


def figure(model, pair, path: Path, scale: int = 4) -> None:
    """A | B side by side: A's landmarks (green), B's true landmarks (blue), PEAC's answers on B
    (red, joined to the truth by a yellow line); B's cell grid in grey."""
    from PIL import Image, ImageDraw

    a, b = pair
    names = [n for n in LANDMARKS if a.inside(n)]
    pred = model_predictor(model)(a, b, np.array([a.landmarks[n] for n in names]))
    s, gap, head = a.size * scale, 12, 22
    canvas = Image.new("RGB", (2 * s + gap, s + head), "white")
    for k, w in enumerate((a, b)):
        grey = (np.clip(w.pixels, 0, 1) * 255).astype(np.uint8)
        canvas.paste(
            Image.fromarray(grey).resize((s, s), Image.NEAREST).convert("RGB"),
            (k * (s + gap), head),
        )
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"A: patient {a.seed}", fill="black")
    draw.text(
        (s + gap + 4, 4), f"B: patient {b.seed}   green A  blue B true  red PEAC", fill="black"
    )
    x0, cell = s + gap, model.cell * scale
    for i in range(1, model.grid):
        draw.line([(x0 + i * cell, head), (x0 + i * cell, head + s)], fill=(90, 90, 90))
        draw.line([(x0, head + i * cell), (x0 + s, head + i * cell)], fill=(90, 90, 90))

    def xy(p, left):
        return left + (p[1] + 0.5) * scale, head + (p[0] + 0.5) * scale

    def dot(p, left, colour, r=6):
        x, y = xy(p, left)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=3)

    for n, p in zip(names, pred, strict=True):
        dot(a.landmarks[n], 0, (0, 210, 0))
        if b.inside(n):
            dot(b.landmarks[n], x0, (40, 140, 255))
        if np.all(np.isfinite(p)):
            dot(p, x0, (255, 40, 40), r=4)
            if b.inside(n):
                draw.line([xy(p, x0), xy(b.landmarks[n], x0)], fill=(255, 210, 0), width=2)
    canvas.save(path)


def bar_plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no bar plot")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(ARMS)
    summ = results["summary"]["correspondence"]
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    x = np.arange(len(arms))
    ax.bar(
        x - 0.2,
        [summ[a]["hit_mean"] for a in arms],
        0.4,
        yerr=[summ[a]["hit_std_over_pairs"] for a in arms],
        capsize=4,
        color=["0.6", "tab:orange", "tab:blue"],
        label="within one cell",
    )
    ax.bar(
        x + 0.2,
        [summ[a]["same_cell_mean"] for a in arms],
        0.4,
        color=["0.8", "moccasin", "lightsteelblue"],
        label="same cell",
    )
    for name, style in (("same pixel", "--"), ("chance", ":")):
        ax.axhline(
            results["baselines"][name]["hit_mean"],
            color="k",
            ls=style,
            lw=1,
            label=f"{name} baseline",
        )
    ax.set_xticks(x, arms)
    ax.set_ylabel("landmarks hit (different patients)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"PEAC tiny, {results['epochs']} epochs, seeds {results['seeds']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------ main


def _pm(v) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{np.mean(v):.3f}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench/out/peac")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (loop.seed)")
    p.add_argument("--epochs", type=int, default=20, help="PEAC / PEAC⁻¹ epochs per seed")
    p.add_argument("--train-n", type=int, default=256, help="training films (preset: 256)")
    p.add_argument("--pairs", type=int, default=40, help="patient pairs for correspondence")
    p.add_argument("--probe-train-n", type=int, default=200, help="synth_nih training films")
    p.add_argument("--probe-test-n", type=int, default=160, help="synth_nih test films")
    p.add_argument("--probe-load", type=int, default=128, help="synth_nih film size (px)")
    p.add_argument("--probe-seed", type=int, default=101, help="synth_nih dataset seed")
    p.add_argument("--skip-probe", action="store_true", help="correspondence only")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    cfg = peac_config(args, args.seeds[0])
    args.img_size, args.backbone = cfg.model.img_size, cfg.model.backbone
    film, cell, grid = cfg.load_size, float(cfg.cell), cfg.views.window
    pairs = make_pairs(args.pairs, film, args.img_size, training_seeds(cfg))
    print(f"{len(pairs)} pairs of unseen patients ({time.time() - t0:.0f} s)", flush=True)

    def same_pixel(a, b, pts):
        return pts

    results = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()} {torch.get_num_threads()} torch threads",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "pairs": len(pairs),
        "film_px": film,
        "window_px": args.img_size,
        "cell_px": cell,
        "criterion": "hit: |d_row| <= cell and |d_col| <= cell (cell = 16 px); "
        "same cell: <= cell / 2; landmarks inside both windows only",
        "baselines": {
            "same pixel": score(pairs, same_pixel, cell),
            "chance": chance_score(pairs, grid, cell),
        },
        "runs": {},
        "probe": {},
        "timings_s": {},
    }
    for seed in args.seeds:
        for k, arm in enumerate(ARMS):
            run = args.out / f"seed{seed}" / f"arm{k}"
            info = train_arm(args, seed, arm, run)
            model = load_model(run / "model.safetensors").eval()
            t = time.time()
            corr = score(pairs, model_predictor(model), cell)
            info["correspond_s"] = time.time() - t
            results["runs"][f"{arm}|{seed}"] = info | {"correspondence": corr}
            print(
                f"seed {seed} {arm}: hits {corr['hit_mean']:.3f} ± "
                f"{corr['hit_std_over_pairs']:.3f} (same cell {corr['same_cell_mean']:.3f}), "
                f"train {info['train_s']:.0f} s",
                flush=True,
            )
            if arm == "PEAC" and seed == args.seeds[0]:
                best = max(
                    range(len(pairs)),
                    key=lambda i: sum(
                        pairs[i][0].inside(n) and pairs[i][1].inside(n) for n in LANDMARKS
                    ),
                )
                figure(model, pairs[best], args.out / "correspondence.png")
            if not args.skip_probe:
                t = time.time()
                inits = [("scratch", "scratch", "probe_scratch")] if k == 0 else []
                inits.append((arm, f"peac:{run}", f"probe_arm{k}"))
                for label, init, where in inits:
                    r = probe(args, init, args.out / f"seed{seed}" / where, seed)
                    results["probe"].setdefault(label, {})[str(seed)] = r
                    print(f"  probe {label}: test mean AUROC {r['mean_auroc']:.3f}", flush=True)
                results["runs"][f"{arm}|{seed}"]["probe_s"] = time.time() - t

    # pooled over seeds: mean ± std over all (pair, seed) hit fractions
    summary = {}
    for arm in ARMS:
        rs = [results["runs"][f"{arm}|{s}"]["correspondence"] for s in args.seeds]
        pp = [v for r in rs for v in r["per_pair"]]
        summary[arm] = {
            "hit_mean": float(np.mean(pp)),
            "hit_std_over_pairs": float(np.std(pp)),
            "hit_per_seed": [r["hit_mean"] for r in rs],
            "same_cell_mean": float(np.mean([r["same_cell_mean"] for r in rs])),
            "per_landmark": {
                n: float(np.mean([r["per_landmark"][n] for r in rs]))
                if rs[0]["per_landmark"][n] is not None
                else None
                for n in LANDMARKS
            },
        }
    results["summary"] = {"correspondence": summary}
    results["timings_s"]["total"] = time.time() - t0
    (args.out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    bar_plot(results, args.out / "hits.png")

    b = results["baselines"]
    print(
        f"\n### Correspondence, {len(pairs)} pairs of different unseen patients; "
        f"hit = within one cell ({cell:.0f} px) in both axes\n"
    )
    print(
        "| arm | hit fraction (mean ± std over pairs × seeds) | per seed | same cell | "
        "train s/seed |\n|---|---|---|---|---|"
    )
    for arm in ARMS:
        s = summary[arm]
        secs = np.mean([results["runs"][f"{arm}|{x}"]["train_s"] for x in args.seeds])
        print(
            f"| {arm} | {s['hit_mean']:.3f} ± {s['hit_std_over_pairs']:.3f} | "
            f"{', '.join(f'{v:.3f}' for v in s['hit_per_seed'])} | "
            f"{s['same_cell_mean']:.3f} | {secs:.0f} |"
        )
    for name in ("same pixel", "chance"):
        print(
            f"| baseline: {name} | {b[name]['hit_mean']:.3f} ± "
            f"{b[name]['hit_std_over_pairs']:.3f} | | "
            f"{b[name].get('same_cell_mean', float('nan')):.3f} | |"
        )
    n_lm = results["runs"][f"PEAC|{args.seeds[0]}"]["correspondence"]["per_landmark_n"]
    print(
        "\n| landmark (pairs with it in both windows) | same pixel | "
        + " | ".join(ARMS)
        + " |\n|---|"
        + "---|" * (len(ARMS) + 1)
    )
    for n in LANDMARKS:
        if not n_lm[n]:
            continue
        vals = [summary[a]["per_landmark"][n] for a in ARMS]
        print(
            f"| {n} ({n_lm[n]}) | {b['same pixel']['per_landmark'][n]:.2f} | "
            + " | ".join(f"{v:.2f}" for v in vals)
            + " |"
        )
    if results["probe"]:
        print("\n### Linear probe, synth_nih test mean AUROC (mean ± std over seeds)\n")
        print("| init | mean AUROC | per seed |\n|---|---|---|")
        for label, per in results["probe"].items():
            v = [per[str(s)]["mean_auroc"] for s in args.seeds]
            print(f"| {label} | {_pm(v)} | {', '.join(f'{x:.3f}' for x in v)} |")
    print(f"\ntotal {results['timings_s']['total'] / 60:.1f} min; results in {args.out}")


if __name__ == "__main__":
    main()
