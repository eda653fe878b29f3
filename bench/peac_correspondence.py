"""PEAC evidence: landmark correspondence across different patients, and linear probing.

    python bench/peac_correspondence.py [--epochs 3] [--pairs 40] [--out bench/out/peac]

Three arms share the tiny preset's architecture (ViT-Tiny/16 at 112 px, 7×7 cells of 16 px):
random init (no training), PEAC⁻¹ (``losses.local_weight=0``) and PEAC, trained on the synthetic
films of ``configs/peac/tiny.yaml``. For pairs of *different* phantom patients never seen in
training, each film cut at its own random offset, every landmark the phantom exports (carina,
apices, costophrenic angles, heart borders, diaphragm domes, ...) is mapped from film A to film B
with ``models.peac.correspond(...).query``; a hit is a prediction within one cell of B's true
landmark in both rows and columns (one cell = 16 model px = 16 · 160/112 ≈ 22.9 px of the
160-px film). Linear probing: frozen embeddings (mean-pooled tokens) → logistic regression on
``synth_nih`` (own seed), test mean AUROC. Writes ``results.json``, ``correspondence.png`` and
``hits.png`` under ``--out``. Not in CI.
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

from imaging.phantoms import LANDMARKS, make_chest_ct, make_radiograph  # noqa: E402
from models.checkpoint import load_model, save_weights  # noqa: E402
from models.peac import correspond  # noqa: E402
from train.ark.transfer import TransferConfig, linear_probe  # noqa: E402
from train.config import load_config  # noqa: E402
from train.engine import fit  # noqa: E402
from train.peac.config import PEACConfig  # noqa: E402
from train.peac.method import PEACMethod  # noqa: E402

FILM = 160  # px, the films of the tiny preset's load size
CT_SHAPE = (48, 64, 64)


def train_arm(name: str, epochs: int, out: Path, cache: Path, extra=()) -> Path:
    cfg = load_config(
        PEACConfig,
        ROOT / "configs/peac/tiny.yaml",
        [f"loop.epochs={epochs}", "loop.progress=false", f"data.cache_dir={cache}", *extra],
    )
    run = out / name
    shutil.rmtree(run, ignore_errors=True)
    method = PEACMethod(cfg, run)
    if epochs == 0:  # random init: the engine's initial weights, exported like a trained teacher
        torch.manual_seed(cfg.loop.seed)
        pair, _, _ = method.build_model()
        model, model_name, args = method.export_model(pair)
        run.mkdir(parents=True)
        save_weights(model, run / "model.safetensors", model_name=model_name, model_args=args)
    else:
        fit(method, run)
    return run / "model.safetensors"


class Film:
    """A film cut from a larger render at an offset, with its landmarks moved along."""

    def __init__(self, render, offset: tuple[int, int]) -> None:
        r, c = offset
        self.pixels = np.asarray(render.pixels)[r : r + FILM, c : c + FILM]
        self.landmarks = {k: np.asarray(v, float) - (r, c) for k, v in render.landmarks.items()}


def films(n_pairs: int, seed0: int = 90_000, margin: int = 32):
    """Pairs of films of *different* patients (seeds far from the training items), each cut at
    its own random offset (0..margin px per axis) from a (FILM + margin)-px render: the same
    landmark sits at different pixels in A and B, so mapping every cell to itself is no answer."""
    rng = np.random.default_rng(seed0)
    for k in range(n_pairs):
        pair = []
        for j in range(2):
            ct = make_chest_ct(seed0 + 2 * k + j, shape=CT_SHAPE)
            render = make_radiograph(ct, size=(FILM + margin, FILM + margin))
            pair.append(Film(render, tuple(int(v) for v in rng.integers(0, margin + 1, 2))))
        yield tuple(pair)


def identity_hits(pairs, cell: float) -> float:
    """The baseline of predicting the same pixel in B as in A."""
    rates = []
    for a, b in pairs:
        pa = np.array([a.landmarks[n] for n in LANDMARKS])
        pb = np.array([b.landmarks[n] for n in LANDMARKS])
        rates.append(float(np.all(np.abs(pa - pb) <= cell, axis=1).mean()))
    return float(np.mean(rates))


def correspondence_hits(model, pairs) -> dict:
    names = list(LANDMARKS)
    hits = {n: [] for n in names}
    per_pair = []
    for a, b in pairs:
        result = correspond(model, np.asarray(a.pixels), np.asarray(b.pixels))
        cell = model.cell * FILM / model.img_size  # one cell in film pixels
        pts_a = np.array([a.landmarks[n] for n in names], dtype=float)
        pred, _ = result.query(pts_a)
        true_b = np.array([b.landmarks[n] for n in names], dtype=float)
        ok = np.all(np.abs(pred - true_b) <= cell, axis=1)
        for n, h in zip(names, ok, strict=True):
            hits[n].append(bool(h))
        per_pair.append(float(ok.mean()))
    return {
        "hit_rate": float(np.mean(per_pair)),
        "hit_rate_std_over_pairs": float(np.std(per_pair)),
        "per_landmark": {n: float(np.mean(v)) for n, v in hits.items()},
    }


def probe(weights: Path, out: Path, cache: Path) -> float:
    cfg = load_config(
        TransferConfig,
        ROOT / "configs/ark/transfer_tiny.yaml",
        [
            f"init=peac:{weights}",
            "size=112",
            "data.load_size=128",
            f"data.cache_dir={cache}",
            "dataset.reader={n: 200, size: [128, 128], ct_shape: [48, 64, 64], seed: 101}",
            "dataset.per_split={test: {n: 160}}",
            "loop.progress=false",
        ],
    )
    return linear_probe(cfg, out, split="test")["mean_auroc"]


def figure(model, pair, path: Path) -> None:
    from PIL import Image, ImageDraw

    a, b = pair
    names = list(LANDMARKS)
    pred, _ = correspond(model, np.asarray(a.pixels), np.asarray(b.pixels)).query(
        np.array([a.landmarks[n] for n in names], dtype=float)
    )
    scale = 3
    canvas = Image.new("RGB", (2 * FILM * scale + 10, FILM * scale), "white")
    for k, film in enumerate((a, b)):
        grey = (np.clip(np.asarray(film.pixels), 0, 1) * 255).astype(np.uint8)
        img = Image.fromarray(grey).resize((FILM * scale, FILM * scale)).convert("RGB")
        canvas.paste(img, (k * (FILM * scale + 10), 0))
    draw = ImageDraw.Draw(canvas)
    off = FILM * scale + 10

    def dot(r, c, x0, colour):
        x, y = x0 + c * scale, r * scale
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=colour, width=2)

    for n, p in zip(names, pred, strict=True):
        ra, ca = a.landmarks[n]
        rb, cb = b.landmarks[n]
        dot(ra, ca, 0, (0, 200, 0))  # A's landmark
        dot(rb, cb, off, (0, 120, 255))  # B's true landmark
        if np.all(np.isfinite(p)):
            dot(p[0], p[1], off, (255, 40, 40))  # PEAC's prediction
            draw.line([(ca * scale, ra * scale), (off + p[1] * scale, p[0] * scale)],
                      fill=(255, 200, 0), width=1)  # fmt: skip
    canvas.save(path)


def bar_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results["arms"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    rates = [results["arms"][a]["correspondence"]["hit_rate"] for a in arms]
    errs = [results["arms"][a]["correspondence"]["hit_rate_std_over_pairs"] for a in arms]
    ax.bar(arms, rates, yerr=errs, capsize=4, color=["grey", "tab:orange", "tab:blue"])
    ax.set_ylabel("landmarks within one cell")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/peac")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    arms = {
        "random init": (0, []),
        "PEAC⁻¹": (args.epochs, ["losses.local_weight=0"]),
        "PEAC": (args.epochs, []),
    }
    pairs = list(films(args.pairs))
    results = {"epochs": args.epochs, "pairs": args.pairs, "arms": {},
               "identity_baseline": identity_hits(pairs, 16 * FILM / 112)}  # fmt: skip
    print(f"identity baseline (same pixel in B): {results['identity_baseline']:.3f}")
    for k, (name, (epochs, extra)) in enumerate(arms.items()):
        start = time.time()
        weights = train_arm(f"arm{k}", epochs, args.out, cache, extra)
        trained = time.time() - start
        model = load_model(weights).eval()
        corr = correspondence_hits(model, pairs)
        auroc = probe(weights, args.out / f"probe{k}", cache)
        results["arms"][name] = {"correspondence": corr, "probe_mean_auroc": auroc,
                                 "train_seconds": trained}  # fmt: skip
        print(f"{name}: hits {corr['hit_rate']:.3f}, probe AUROC {auroc:.3f}", flush=True)
        if name == "PEAC":
            figure(model, pairs[0], args.out / "correspondence.png")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| arm | landmarks within one cell | linear-probe test mean AUROC |\n|---|---|---|")
    for name, r in results["arms"].items():
        c = r["correspondence"]
        print(f"| {name} | {c['hit_rate']:.3f} ± {c['hit_rate_std_over_pairs']:.3f} | "
              f"{r['probe_mean_auroc']:.3f} |")  # fmt: skip
    print("\nper landmark:")
    for lm in LANDMARKS:
        print(lm, {a: round(r["correspondence"]["per_landmark"][lm], 2)
                   for a, r in results["arms"].items()})  # fmt: skip
    try:
        bar_plot(results, args.out / "hits.png")
    except ImportError:
        print("matplotlib not installed: no bar plot")


if __name__ == "__main__":
    main()
