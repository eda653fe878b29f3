"""Render a synthetic dataset once into a float32 ``.npy`` memmap, reused by later runs.

A phantom radiograph costs a CT phantom and a projection per item (about 0.5 s at the default
``(64, 128, 128)`` CT, 0.2 s at ``(48, 64, 64)`` on one CPU core), far too slow to redo every
epoch. :func:`cache_images` renders the items of a :class:`~imaging.datasets.SyntheticChestDataset`
or of a synthetic source (:mod:`imaging.datasets.synthetic_multi`) in worker processes, writes
them to ``<cache_dir>/<name>_<split>_seed<seed>_n<n>_<H>x<W>_<hash>.npy`` and memory-maps that
file. The hash covers everything the pixels depend on (the dataset's image parameters and the
source code of the phantom generator and of the readers), so a changed generator never reuses a
stale file. The file is written under a temporary name and renamed into place (``os.replace``),
so an interrupted build leaves no partial cache, and a concurrent build by another process at
worst renders the same bytes twice. Labels are cheap and always recomputed, never cached.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from imaging.datasets.base import Sample
from imaging.datasets.synthetic import SyntheticChestDataset

#: environment variable naming the default cache folder (else ``~/.cache/anatomix/images``)
CACHE_ENV = "ANATOMIX_IMAGE_CACHE"
#: below this many items, render in this process (a pool costs more than it saves)
_POOL_MIN_ITEMS = 5


@dataclass
class CachedImages(Sequence):
    """A rendered dataset: a read-only image memmap plus its labels; also a map-style dataset.

    Attributes:
        images: float32 ``(N, H, W)`` in [0, 1], read-only memmap of :attr:`path`.
        targets: float32 ``(N, C)``; masks: float32 ``(N, C)``; truth: float32 ``(N, C)`` clean
            labels (``targets`` for datasets without label noise).
        ids: item ids; label_names: ``(C,)`` names; split: the dataset's split.
        path: the cache file.
        rendered: how many items this call rendered (0 when the file was reused).
    """

    images: np.ndarray
    targets: np.ndarray
    masks: np.ndarray
    truth: np.ndarray
    ids: tuple[str, ...]
    label_names: tuple[str, ...]
    split: str
    path: Path
    rendered: int

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Sample:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"CachedImages indices must be integers, not {type(i)}")
        meta = {"truth": self.truth[i].copy(), "split": self.split}
        return Sample(
            np.array(self.images[i]),
            self.targets[i].copy(),
            self.masks[i].copy(),
            self.ids[i],
            meta,
        )

    def __getstate__(self) -> dict:
        # a memmap pickles as a full copy: send the path to DataLoader workers instead
        return {**self.__dict__, "images": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.images = np.load(self.path, mmap_mode="r")


def default_cache_dir() -> Path:
    """``$ANATOMIX_IMAGE_CACHE``, else ``~/.cache/anatomix/images``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "anatomix" / "images"


@lru_cache(maxsize=1)
def _code_version() -> str:
    """Hash of the source files that determine the pixels (phantoms and synthetic readers)."""
    here = Path(__file__).resolve().parent
    files = sorted((here.parent / "phantoms").glob("*.py"))
    files += [here / "synthetic.py", here / "synthetic_multi.py"]
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def image_params(dataset) -> dict:
    """What the pixels of ``dataset`` depend on besides ``(name, seed, split, n)``.

    Raises:
        TypeError: the dataset is not a synthetic one this cache knows how to key.
    """
    if hasattr(dataset, "image_params"):
        return dataset.image_params()
    if isinstance(dataset, SyntheticChestDataset):
        shape = None if dataset.ct_shape is None else list(dataset.ct_shape)
        return {
            "class": type(dataset).__name__,
            "finding_rate": dataset.finding_rate,
            "size": list(dataset.size),
            "ct_shape": shape,
            "vary": dataset.vary,
        }
    raise TypeError(
        f"cache_images: cannot key {type(dataset).__name__}; give it an image_params() method"
    )


def cache_path(dataset, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`cache_images` keeps ``dataset``'s images."""
    key = {
        "name": dataset.name, "seed": dataset.seed, "split": dataset.split, "n": len(dataset),
        "params": image_params(dataset), "code": _code_version(),
    }  # fmt: skip
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    h, w = dataset.size
    stem = f"{dataset.name}_{dataset.split}_seed{dataset.seed}_n{len(dataset)}_{h}x{w}_{digest}"
    return Path(cache_dir or default_cache_dir()) / f"{stem}.npy"


def _render_one(dataset, i: int) -> np.ndarray:
    if hasattr(dataset, "render"):
        return dataset.render(i)
    return dataset[i].image


def _render_range(dataset, start: int, stop: int) -> np.ndarray:
    """Items ``start..stop-1`` as float32 ``(stop - start, H, W)`` (runs in a worker process)."""
    return np.stack([_render_one(dataset, i) for i in range(start, stop)]).astype(np.float32)


def _labels(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    if hasattr(dataset, "truth"):
        ids = tuple(dataset.item_id(i) for i in range(len(dataset)))
        return dataset.targets, dataset.masks, dataset.truth, ids
    lazy = copy.copy(dataset)
    lazy.load_images = False
    samples = [lazy[i] for i in range(len(lazy))]
    c = len(dataset.label_names)
    targets = np.stack([s.target for s in samples]) if samples else np.zeros((0, c), np.float32)
    masks = np.stack([s.mask for s in samples]) if samples else np.zeros((0, c), np.float32)
    return targets, masks, targets.copy(), tuple(s.id for s in samples)


def _fill(dataset, out: np.ndarray, workers: int, progress: bool, mp_context) -> None:
    from tqdm.auto import tqdm

    n = len(dataset)
    bar = tqdm(
        total=n, desc=f"render {dataset.name}/{dataset.split}", unit="img", disable=not progress
    )
    with bar:
        if workers <= 1 or n < _POOL_MIN_ITEMS:
            for i in range(n):
                out[i] = _render_one(dataset, i)
                bar.update(1)
            return
        step = max(1, min(16, -(-n // (4 * workers))))  # ~4 chunks per worker for balance
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp_context)
        try:
            jobs = {
                pool.submit(_render_range, dataset, s, min(s + step, n)): s
                for s in range(0, n, step)
            }
            for job in as_completed(jobs):
                block = job.result()
                out[jobs[job] : jobs[job] + len(block)] = block
                bar.update(len(block))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def cache_images(
    dataset,
    cache_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    mp_context=None,
) -> CachedImages:
    """Render ``dataset``'s images once into a ``.npy`` memmap and return them with the labels.

    Args:
        dataset: a :class:`~imaging.datasets.SyntheticChestDataset` or a synthetic source
            (``build_dataset("synth_nih", ...)``); ``load_images`` does not matter.
        cache_dir: folder of the cache files (None: :func:`default_cache_dir`).
        workers: render processes (None: ``os.cpu_count()``); at most ``os.cpu_count()``, and
            fewer than 5 items render in this process.
        progress: show a tqdm progress bar.
        mp_context: ``multiprocessing`` context for the pool (None: the platform default).

    Returns:
        :class:`CachedImages`; ``rendered`` tells whether the file was built (N) or reused (0).
    """
    path = cache_path(dataset, cache_dir)
    h, w = dataset.size
    shape = (len(dataset), int(h), int(w))
    targets, masks, truth, ids = _labels(dataset)
    rendered = 0
    images = _load(path, shape)
    if images is None:
        cpus = os.cpu_count() or 1
        workers = cpus if workers is None else max(1, min(int(workers), cpus))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        try:
            _fill(dataset, out, workers, progress, mp_context)
            out.flush()
            del out
            os.replace(tmp, path)
        except BaseException:
            del out
            tmp.unlink(missing_ok=True)
            raise
        rendered = shape[0]
        images = np.load(path, mmap_mode="r")
    return CachedImages(
        images,
        targets,
        masks,
        truth,
        ids,
        tuple(dataset.label_names),
        dataset.split,
        path,
        rendered,
    )


def _load(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached memmap at ``path`` if it is complete and has ``shape``, else None."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.float32 else None
