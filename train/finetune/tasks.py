"""Fine-tuning targets (Models Genesis §1.5): a registry of tasks with train/val/test cube splits.

``build_task(name, **kw)`` returns a :class:`Task`; each split has ``len()`` and
``batch(indices) -> (x, y)`` with ``x`` float32 ``(B, 1, X, Y, Z)`` in [0, 1] and ``y`` a float32
mask ``(B, 1, X, Y, Z)`` (segmentation) or 0/1 label ``(B, 1)`` (classification). Cubes are in
``(x, y, z)`` order (rows × cols × depth), as in :mod:`train.data.cubes`.

Tasks:

- ``synthetic_nodule_seg`` / ``synthetic_nodule_cls``: nodule phantoms
  (:func:`imaging.phantoms.make_chest_ct`), CPU-sized stand-ins for NCS / NCC;
- ``lidc_arrays``: NCS, the Models Genesis LIDC-IDRI arrays ``{x,m}_{train,valid,test}_<tag>.npy``;
- ``luna16_candidates``: NCC, LUNA16 false-positive reduction cubes around ``candidates.csv``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from imaging.datasets.luna16 import GENESIS_SUBSETS, Luna16Dataset
from imaging.image import Volume
from imaging.phantoms import make_chest_ct
from train.data.cubes import cache_key
from train.finetune.task_data import (
    ArraySplit,
    luna_fill,
    luna_selection,
    phantom_split,
    write_npy_atomic,
)

#: first phantom seed of each split (disjoint ranges; ``seed`` shifts them by 100 000 · seed)
SPLIT_SEED_BASE = {"train": 20000, "val": 30000, "test": 40000}
MAX_VOLUMES_PER_SPLIT = 10000


@dataclass
class Task:
    """A fine-tuning target.

    Attributes:
        name: registry name.
        kind: "segmentation" or "classification".
        train / val / test: splits with ``__len__`` and ``batch(indices) -> (x, y)``.
        cube_size: ``(X, Y, Z)`` model input size.
        volumes_test: segmentation only, optional: whole test volumes ``(x (1, X, Y, Z),
            mask (1, X, Y, Z))`` float32 tensors for sliding-window evaluation.
        volumes_val: the same for the validation phantoms (choosing a whole-volume threshold).
        meta: free-form description (parameters, sources).
    """

    name: str
    kind: Literal["segmentation", "classification"]
    train: ArraySplit
    val: ArraySplit
    test: ArraySplit
    cube_size: tuple[int, int, int]
    volumes_test: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    volumes_val: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _phantom_seeds(split: str, n: int, seed: int) -> list[int]:
    if not 0 <= n <= MAX_VOLUMES_PER_SPLIT:
        raise ValueError(f"{split}: number of volumes must be in [0, {MAX_VOLUMES_PER_SPLIT}]")
    return [SPLIT_SEED_BASE[split] + 100_000 * seed + i for i in range(n)]


def _synthetic(kind: str, counts: dict, cube_size, jitter, seed: int, **kw) -> Task:
    size = tuple(int(s) for s in cube_size)
    default = tuple(s // 4 for s in size) if kind == "segmentation" else (1, 1, 1)
    jit = default if jitter is None else tuple(int(j) for j in jitter)
    splits = {}
    for split, n in counts.items():
        seeds = _phantom_seeds(split, n, seed)
        splits[split] = phantom_split(
            kind, seeds, seed, size, jit, keep_volumes=split in ("val", "test"), **kw
        )
    name = "synthetic_nodule_seg" if kind == "segmentation" else "synthetic_nodule_cls"
    test, volumes_test = splits["test"]
    volumes_val = splits["val"][1] if kind == "segmentation" else []
    params = {k: v for k, v in kw.items() if k.startswith(("phantom", "nodule"))}
    return Task(
        name,
        kind,
        splits["train"][0],
        splits["val"][0],
        test,
        size,
        volumes_test if kind == "segmentation" else [],
        {**params, "jitter": jit, "seed": seed},
        volumes_val,
    )


def synthetic_nodule_seg(
    n_train_volumes: int = 16,
    n_val_volumes: int = 4,
    n_test_volumes: int = 4,
    cube_size: Sequence[int] = (32, 32, 16),
    phantom_shape: Sequence[int] = (32, 64, 64),
    phantom_spacing: Sequence[float] = (5.0, 5.0, 5.0),
    nodule_diameter_mm: Sequence[float] = (10.0, 25.0),
    nodule_count: Sequence[int] = (1, 3),
    jitter: Sequence[int] | None = None,
    cubes_per_nodule: int = 2,
    random_cubes_per_volume: int = 2,
    background_cubes_per_volume: int = 0,
    seed: int = 0,
) -> Task:
    """Nodule segmentation on phantoms (NCS stand-in).

    Per phantom: ``cubes_per_nodule`` cubes around each nodule centre shifted by up to
    ``jitter`` voxels per axis (default ``cube_size // 4``), plus ``random_cubes_per_volume``
    cubes centred on random lung voxels and ``background_cubes_per_volume`` on random voxels
    anywhere in the volume; cubes are moved inside the volume. The target is the
    nodule mask cube. Phantom seeds: train ``20000 + i``, val ``30000 + i``, test ``40000 + i``
    (plus ``100000 · seed``); ``phantom_shape``/``phantom_spacing`` are ``(D, H, W)`` as for
    ``make_chest_ct``. Each split's ``meta`` holds the phantom ``seed`` and ``start`` (x, y, z)
    of every cube; ``volumes_test`` holds the whole test volumes and masks.
    """
    return _synthetic(
        "segmentation",
        {"train": n_train_volumes, "val": n_val_volumes, "test": n_test_volumes},
        cube_size,
        jitter,
        seed,
        phantom_shape=phantom_shape,
        phantom_spacing=phantom_spacing,
        nodule_diameter_mm=nodule_diameter_mm,
        nodule_count=nodule_count,
        cubes_per_nodule=cubes_per_nodule,
        random_cubes=random_cubes_per_volume,
        background_cubes=background_cubes_per_volume,
    )


def synthetic_nodule_cls(
    n_train_volumes: int = 16,
    n_val_volumes: int = 4,
    n_test_volumes: int = 4,
    cube_size: Sequence[int] = (32, 32, 16),
    phantom_shape: Sequence[int] = (32, 64, 64),
    phantom_spacing: Sequence[float] = (5.0, 5.0, 5.0),
    nodule_diameter_mm: Sequence[float] = (10.0, 25.0),
    nodule_count: Sequence[int] = (1, 3),
    jitter: Sequence[int] | None = None,
    cubes_per_nodule: int = 2,
    seed: int = 0,
) -> Task:
    """Nodule / no-nodule cube classification on phantoms (NCC stand-in), balanced per phantom.

    Positives (label 1) are centred on a nodule voxel within ``jitter`` (default 1) voxels of a
    nodule centre; negatives (label 0) are centred on lung voxels and hold no nodule voxel at all.
    Cubes may reach outside the volume (filled with 0). Seeds and ``meta`` as
    :func:`synthetic_nodule_seg`.
    """
    return _synthetic(
        "classification",
        {"train": n_train_volumes, "val": n_val_volumes, "test": n_test_volumes},
        cube_size,
        jitter,
        seed,
        phantom_shape=phantom_shape,
        phantom_spacing=phantom_spacing,
        nodule_diameter_mm=nodule_diameter_mm,
        nodule_count=nodule_count,
        cubes_per_nodule=cubes_per_nodule,
        random_cubes=0,
    )


LIDC_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def lidc_arrays(root: str | Path, size_tag: str = "64x64x32") -> Task:
    """LIDC-IDRI nodule segmentation (NCS) in the Models Genesis array format.

    ``root`` holds ``x_{train,valid,test}_<size_tag>.npy`` (cubes ``(N, X, Y, Z)`` or
    ``(N, 1, X, Y, Z)`` in [0, 1]; HU is detected by a minimum below -1 and normalised) and
    ``m_…`` binary masks of the same shape. Arrays are memory-mapped.

    Raises:
        FileNotFoundError: a file is missing (the message lists the expected names).
        ValueError: cube and mask shapes disagree.
    """
    root = Path(root)
    names = [f"{p}_{s}_{size_tag}.npy" for s in LIDC_SPLITS.values() for p in ("x", "m")]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"lidc_arrays: {root} lacks {missing}; expected files {names}")
    splits = {}
    for split, tag in LIDC_SPLITS.items():
        x = np.load(root / f"x_{tag}_{size_tag}.npy", mmap_mode="r")
        m = np.load(root / f"m_{tag}_{size_tag}.npy", mmap_mode="r")
        if x.shape[0] != m.shape[0] or x.shape[-3:] != m.shape[-3:]:
            raise ValueError(f"lidc_arrays: x_{tag} shape {x.shape} vs m_{tag} shape {m.shape}")
        hu = bool(len(x)) and float(np.min(x)) < -1.0
        splits[split] = ArraySplit(x, m, "segmentation", hu=hu)
    size = splits["train"].cube_size
    return Task(
        "lidc_arrays",
        "segmentation",
        splits["train"],
        splits["val"],
        splits["test"],
        size,
        meta={"root": str(root), "size_tag": size_tag},
    )


def luna16_candidates(
    root: str | Path,
    cube_size: Sequence[int] = (64, 64, 32),
    candidates: str | None = None,
    max_negatives_per_scan: int | None = None,
    subsets: Mapping[str, Sequence[int]] | None = None,
    cache_dir: str | Path | None = None,
    cache_dtype: str = "float32",
    seed: int = 0,
) -> Task:
    """LUNA16 false-positive reduction (NCC): a cube centred on every kept candidate.

    World ``(x, y, z)`` mm → voxel via the .mhd origin and spacing (identity direction, see
    :mod:`imaging.datasets.luna16`), rounded to the nearest voxel, which lands on cube index
    ``cube_size // 2``; label = the candidate's ``class``. Subsets 0–4 / 5–6 / 7–9 are
    train / val / test by default.

    Args:
        root: LUNA16 folder (``subset*/``, ``annotations.csv``, candidates CSV).
        cube_size: ``(X, Y, Z)``.
        candidates: CSV name; default ``candidates_V2.csv`` if present, else ``candidates.csv``.
        max_negatives_per_scan: keep at most this many negatives per scan (seeded draw).
        subsets: split → subset numbers.
        cache_dir: keep each split's cubes in a ``.npy`` memmap there (written once,
            atomically; the name hashes every parameter); ``None`` keeps them in memory.
        cache_dtype: dtype of the cached cubes (``"float16"`` halves the disk).
        seed: negative subsampling seed.
    """
    root = Path(root)
    size = tuple(int(s) for s in cube_size)
    if candidates is None:
        candidates = (
            "candidates_V2.csv" if (root / "candidates_V2.csv").is_file() else "candidates.csv"
        )
    subsets = dict(GENESIS_SUBSETS if subsets is None else subsets)
    splits = {}
    for split in ("train", "val", "test"):
        ds = Luna16Dataset(root, split, load_images=False, subsets=subsets, candidates=candidates)
        selection = luna_selection(ds, max_negatives_per_scan, seed)
        labels = np.array([c["class"] for _, cs in selection for c in cs], np.float32)
        shape = (len(labels), 1, *size)
        fill = luna_fill(selection, size)
        if cache_dir is None:
            x = np.zeros(shape, cache_dtype)
            fill(x)
        else:
            key = cache_key(
                str(root.resolve()),
                split,
                size,
                candidates,
                max_negatives_per_scan,
                sorted(subsets[split]),
                seed,
                cache_dtype,
                len(labels),
            )
            x = write_npy_atomic(
                Path(cache_dir) / f"luna16_{split}_{key}.npy", shape, cache_dtype, fill
            )
        uids = np.array([Path(p).stem for p, cs in selection for _ in cs])
        splits[split] = ArraySplit(x, labels, "classification", meta={"seriesuid": uids})
    return Task(
        "luna16_candidates",
        "classification",
        splits["train"],
        splits["val"],
        splits["test"],
        size,
        meta={"root": str(root), "candidates": candidates},
    )


TASKS: dict[str, Callable[..., Task]] = {
    "synthetic_nodule_seg": synthetic_nodule_seg,
    "synthetic_nodule_cls": synthetic_nodule_cls,
    "lidc_arrays": lidc_arrays,
    "luna16_candidates": luna16_candidates,
}


def build_task(name: str, **kw) -> Task:
    """Build the task ``name`` of :data:`TASKS` with keyword arguments ``kw``.

    Raises:
        KeyError: unknown name (the message lists the valid names).
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid names are {sorted(TASKS)}")
    return TASKS[name](**kw)


def held_out_series(name: str, split: str = "test", **kw) -> list[tuple[Volume, np.ndarray]]:
    """The phantoms of a split of the synthetic segmentation task as a scanner stores them.

    Same phantoms (seeds, shape, spacing, nodules) as ``build_task(name, **kw)``'s ``split``,
    written as a DICOM CT series and read back: HU in whole units (rescale slope 1), slices in
    the order a series reader gives them, so the same study sent to the server as DICOM decodes
    to exactly these voxels. Returns ``(volume, nodule mask
    (D, H, W) bool)`` per phantom; used to score exports (``python -m export.evaluate``).

    Raises:
        ValueError: a task without whole held-out volumes (only ``synthetic_nodule_seg`` has
            them), or an unknown split.
    """
    if name != "synthetic_nodule_seg":
        raise ValueError(
            f"task {name!r} has no whole held-out volumes to score an export on; "
            "synthetic_nodule_seg has"
        )
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEED_BASE)}, got {split!r}")
    params = inspect.signature(synthetic_nodule_seg).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise TypeError(f"synthetic_nodule_seg has no argument(s) {unknown}")
    args = {k: p.default for k, p in params.items()} | kw
    out = []
    for ps in _phantom_seeds(split, int(args[f"n_{split}_volumes"]), int(args["seed"])):
        p = make_chest_ct(
            ps,
            shape=tuple(args["phantom_shape"]),
            spacing=tuple(args["phantom_spacing"]),
            findings=("nodule",),
            nodule_diameter_mm=tuple(args["nodule_diameter_mm"]),
            nodule_count=tuple(args["nodule_count"]),
        )
        out.append(_as_stored(p.volume, np.asarray(p.masks["nodule"], bool)))
    return out


def _as_stored(volume: Volume, mask: np.ndarray) -> tuple[Volume, np.ndarray]:
    """``volume`` written as a CT series and read back (whole HU, slices in the reader's order:
    along the slice normal), and ``mask`` in that slice order."""
    import io

    from pydicom import dcmread

    from imaging.series import read_series
    from imaging.writers import ct_series_bytes

    files = ct_series_bytes(volume)
    read = read_series(files)
    written = [str(dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID) for f in files]
    order = [written.index(uid) for uid in read.meta["sop_uids"]]
    return read, mask[order]
