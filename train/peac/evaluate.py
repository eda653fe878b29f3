"""Score what PEAC learned: anatomical landmarks matched across patients, beside references.

PEAC's claim (Zhou et al., BMVC 2023, §4.3) is that its patch embeddings find the same anatomy
in another patient's film. The test here: pairs of films of *different* phantom patients, each
varied as patients differ (:func:`imaging.phantoms.vary_radiograph`) and cut at its own random
pixel offset (sub-cell shifts), both at the training scale (the film is rendered at the
preset's load size and a model-sized window is cut from it, exactly as training crops are; no
resize). Every landmark that lies inside both windows is mapped from A to B by the nearest
descriptor of its cell; a hit is a prediction within one cell of B's landmark in rows and
columns. Matchers scored on the same landmarks:

- ``position``: the same pixel in B (what knowing only the layout gives);
- ``raw_patch``: the cell's own pixels (16 × 16 for the tiny preset) as its descriptor;
- ``context``: the 3 × 3 cells around it, 2 × 2-average-pooled (a non-learned local context
  descriptor);
- a model: its token map (:meth:`models.peac.PEACModel.tokens`, what ``correspond`` uses).

Random init, trained student and trained teacher are all "a model".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imaging.phantoms import LANDMARKS, make_chest_ct, make_radiograph, vary_radiograph
from models.peac import PEACModel, preprocess

#: seeds of the test patients: far from any training item's seed stream
TEST_SEED = 90_000


@dataclass(frozen=True)
class FilmPair:
    """Two windows of different patients and the landmarks inside both.

    Attributes:
        a, b: ``(S, S)`` float32 films in [0, 1] (S = the model's input side).
        pts_a, pts_b: ``(K, 2)`` ``(row, col)`` of the same K landmarks in A and in B.
        names: the K landmark names.
    """

    a: np.ndarray
    b: np.ndarray
    pts_a: np.ndarray
    pts_b: np.ndarray
    names: tuple[str, ...]


def _film(seed: int, load_size: int, vary: bool, ct_shape) -> tuple[np.ndarray, np.ndarray]:
    """A phantom patient's film at the load size (varied) and its landmarks ``(L, 2)``."""
    film = make_radiograph(make_chest_ct(seed, shape=tuple(ct_shape)), size=(load_size,) * 2)
    if vary:
        film = vary_radiograph(film, np.random.default_rng([seed, 1]))
    pts = np.array([np.asarray(film.landmarks[n], float) for n in LANDMARKS])
    return np.asarray(film.pixels, np.float32), pts


def _pair(film_a, film_b, window: int, rng: np.random.Generator) -> FilmPair | None:
    """Each film cut at its own random pixel offset; None when no landmark is in both cuts."""
    cuts = []
    for pixels, pts in (film_a, film_b):
        r, c = (int(v) for v in rng.integers(0, pixels.shape[0] - window + 1, 2))
        cuts.append((np.ascontiguousarray(pixels[r : r + window, c : c + window]), pts - (r, c)))
    (a, pa), (b, pb) = cuts
    inside = np.all((pa >= 0) & (pa <= window - 1) & (pb >= 0) & (pb <= window - 1), axis=1)
    if not inside.any():
        return None
    names = tuple(n for n, ok in zip(LANDMARKS, inside, strict=True) if ok)
    return FilmPair(a, b, pa[inside], pb[inside], names)


def landmark_pairs(
    n_pairs: int,
    *,
    load_size: int,
    window: int,
    seed: int = TEST_SEED,
    vary: bool = True,
    ct_shape=(48, 64, 64),
) -> list[FilmPair]:
    """``n_pairs`` pairs of different patients, windows of ``window`` px cut at random pixel
    offsets from ``load_size``-px films; only landmarks inside both windows are kept (a pair
    with none left is skipped, so fewer pairs may come back)."""
    rng = np.random.default_rng(seed)
    pairs = (
        _pair(
            _film(seed + 2 * k, load_size, vary, ct_shape),
            _film(seed + 2 * k + 1, load_size, vary, ct_shape),
            window,
            rng,
        )
        for k in range(n_pairs)
    )
    return [p for p in pairs if p is not None]


def shifted_pairs(
    n_pairs: int,
    *,
    load_size: int,
    window: int,
    seed: int = TEST_SEED + 50_000,
    ct_shape=(48, 64, 64),
) -> list[FilmPair]:
    """Within-patient pairs: one varied film cut twice at windows a random pixel shift apart
    (any shift, so mostly sub-cell offsets against the token grid); landmarks inside both."""
    rng = np.random.default_rng(seed)
    films = (_film(seed + k, load_size, True, ct_shape) for k in range(n_pairs))
    pairs = (_pair(f, f, window, rng) for f in films)
    return [p for p in pairs if p is not None]


def save_pairs(path: str | Path, pairs: list[FilmPair]) -> None:
    """Write test pairs to one ``.npz`` (no pickle): rendering them takes ~1 s each."""
    arrays = {}
    for k, p in enumerate(pairs):
        arrays |= {f"a{k}": p.a, f"b{k}": p.b, f"pa{k}": p.pts_a, f"pb{k}": p.pts_b}
        arrays[f"n{k}"] = np.array(p.names)
    np.savez(path, count=np.array(len(pairs)), **arrays)


def load_pairs(path: str | Path) -> list[FilmPair]:
    with np.load(path, allow_pickle=False) as f:
        return [
            FilmPair(f[f"a{k}"], f[f"b{k}"], f[f"pa{k}"], f[f"pb{k}"], tuple(f[f"n{k}"].tolist()))
            for k in range(int(f["count"]))
        ]


# ------------------------------------------------------------------------------ descriptors
#: film (S, S) → cell descriptors (g, g, D); the matching is the same for every matcher
Describe = Callable[[np.ndarray], torch.Tensor]


def raw_patch(cell: int) -> Describe:
    """Each cell's own pixels, centred (cosine of the centred patch = its correlation)."""

    def describe(film: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(film)
        g = x.shape[0] // cell
        p = x[: g * cell, : g * cell].reshape(g, cell, g, cell).permute(0, 2, 1, 3)
        p = p.reshape(g, g, cell * cell)
        return p - p.mean(-1, keepdim=True)

    return describe


def context(cell: int, pool: int = 2) -> Describe:
    """The 3 × 3 cells around each cell (zero beyond the film), ``pool``-averaged, centred."""

    def describe(film: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(film)[None, None]
        g = x.shape[-1] // cell
        x = F.pad(x[..., : g * cell, : g * cell], (cell, cell, cell, cell))
        x = F.avg_pool2d(x, pool)  # (1, 1, (g + 2) c / pool, ...)
        c = cell // pool
        win = F.unfold(x, kernel_size=3 * c, stride=c)  # (1, 9 c², g²)
        d = win[0].T.reshape(g, g, -1)
        return d - d.mean(-1, keepdim=True)

    return describe


def model_tokens(model: PEACModel) -> Describe:
    """The model's token map at its input size (``correspond``'s preprocessing)."""
    model = model.eval()

    @torch.no_grad()
    def describe(film: np.ndarray) -> torch.Tensor:
        x, _ = preprocess(film, model.img_size, in_chans=model.in_chans)
        return model.tokens(x)[0].float()

    return describe


def match_points(describe: Describe, cell: int, pair: FilmPair) -> np.ndarray:
    """For each landmark of A: the centre of B's cell whose descriptor is nearest (cosine) to
    that of A's cell holding it. Windows are model-sized, so film pixels are model pixels."""
    da, db = describe(pair.a), describe(pair.b)
    g = da.shape[0]
    za = F.normalize(da.reshape(g * g, -1), dim=-1)
    zb = F.normalize(db.reshape(g * g, -1), dim=-1)
    cells = np.clip(np.floor(pair.pts_a / cell).astype(np.int64), 0, g - 1)
    flat = torch.from_numpy(cells[:, 0] * g + cells[:, 1])
    best = (za[flat] @ zb.T).argmax(dim=1).numpy()
    return (np.stack([best // g, best % g], axis=1) + 0.5) * cell - 0.5


def hit_rate(pairs: list[FilmPair], predict, cell: int) -> np.ndarray:
    """Per pair: the share of its landmarks predicted within one cell (rows and columns)."""
    rates = []
    for pair in pairs:
        pred = predict(pair)
        rates.append(float(np.all(np.abs(pred - pair.pts_b) <= cell, axis=1).mean()))
    return np.asarray(rates)


def references(pairs: list[FilmPair], cell: int) -> dict[str, np.ndarray]:
    """Per-pair hit rates of the non-learned matchers."""
    return {
        "position": hit_rate(pairs, lambda p: p.pts_a, cell),
        "raw_patch": hit_rate(pairs, lambda p: match_points(raw_patch(cell), cell, p), cell),
        "context": hit_rate(pairs, lambda p: match_points(context(cell), cell, p), cell),
    }


def model_hits(model: PEACModel, pairs: list[FilmPair]) -> np.ndarray:
    describe = model_tokens(model)
    return hit_rate(pairs, lambda p: match_points(describe, model.cell, p), model.cell)


def bootstrap_interval(values, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# ------------------------------------------------------------------------------ a run's models
def student_from_checkpoint(run_dir: str | Path) -> PEACModel:
    """The student of the checkpoint ``checkpoints/latest`` names, its checksums verified (the
    engine exports the teacher)."""
    from models.checkpoint import load_weights

    from ..checkpoints import verify_checksums

    pointer = Path(run_dir) / "checkpoints" / "latest"  # the newest *complete* checkpoint
    if not pointer.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint holds a student")
    ckpt = pointer.parent / pointer.read_text().strip()
    verify_checksums(ckpt)
    state, info = load_weights(ckpt / "model.safetensors")
    model = PEACModel(**info.model_args)
    own = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    model.load_state_dict(own, strict=True)
    return model.eval()


#: linear probe of a PEAC run: the 2D transfer preset on ``synth_nih`` (its own seed), frozen
#: mean-pooled tokens → logistic regression, test mean AUROC
PROBE_CONFIG = Path(__file__).resolve().parents[2] / "configs/ark/transfer_tiny.yaml"
PROBE_DATA = "dataset.reader={n: 200, size: [128, 128], ct_shape: [48, 64, 64], seed: 101}"


def probe_run(weights: str | Path, img_size: int, out: Path, cache: Path, split: str) -> float:
    """Linear-probe test mean AUROC of PEAC weights (``transfer --mode probe``, fixed data)."""
    from ..ark.transfer import TransferConfig, linear_probe
    from ..config import load_config

    cfg = load_config(
        TransferConfig,
        PROBE_CONFIG,
        [
            f"init=peac:{weights}", f"size={img_size}", "data.load_size=128",
            f"data.cache_dir={cache}", PROBE_DATA, "dataset.per_split={test: {n: 160}}",
            "loop.progress=false",
        ],
    )  # fmt: skip
    return float(linear_probe(cfg, out, split=split)["mean_auroc"])


def evaluate_peac_run(
    run_dir: str | Path, n_pairs: int = 40, split: str = "test", probe: bool = True
) -> dict:
    """Landmark matching of a run's teacher (and student, when a checkpoint holds one) beside
    the references, on ``n_pairs`` test pairs at the run's training scale, and the teacher's
    linear probe (:func:`probe_run`; ``probe=False`` skips its ~3 minutes of rendering);
    written to ``eval_<split>.json``."""
    from models.checkpoint import atomic_write_bytes, load_model

    from ..config import ConfigError, load_config
    from .config import PEACConfig

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir / 'config.yaml'} is missing: not a PEAC run directory")
    cfg = load_config(PEACConfig, run_dir / "config.yaml")
    teacher = load_model(run_dir / "model.safetensors")
    ct_shape = cfg.data.reader.get("ct_shape", (48, 64, 64))
    pairs = landmark_pairs(
        n_pairs, load_size=cfg.load_size, window=cfg.model.img_size, ct_shape=ct_shape
    )
    scores = references(pairs, cfg.cell)
    scores["teacher"] = model_hits(teacher, pairs)
    try:
        scores["student"] = model_hits(student_from_checkpoint(run_dir), pairs)
    except FileNotFoundError:
        pass
    result = {
        "split": split,
        "task": "cross-patient landmark matching, hit = within one cell",
        "pairs": len(pairs),
        "landmarks": int(sum(len(p.names) for p in pairs)),
        "hit_rate": {k: float(v.mean()) for k, v in scores.items()},
        "interval95": {k: bootstrap_interval(v) for k, v in scores.items()},
    }
    if probe:
        cache = Path(cfg.data.cache_dir or run_dir / "cache")
        result["probe_mean_auroc"] = probe_run(
            run_dir / "model.safetensors", cfg.model.img_size, run_dir / "probe", cache, split
        )
    atomic_write_bytes(run_dir / f"eval_{split}.json", json.dumps(result, indent=2).encode())
    return result
