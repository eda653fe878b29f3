"""What every dataset reader shares: the :class:`Sample` record, the map-style base class, CSV
parsing with actionable errors, image loading/scaling, and deterministic per-item randomness.

Readers are torch-free (``imaging`` is the bottom layer) but map-style, so a
``torch.utils.data.DataLoader`` can wrap them directly.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imaging.errors import ImagingError
from imaging.voi import min_max_unit, to_unit


class DatasetFormatError(ImagingError, ValueError):
    """A dataset folder does not match its published layout (missing file, column or value)."""

    code = "dataset_format"


@dataclass
class Sample:
    """One item of a dataset.

    Attributes:
        image: float32 ``(H, W)`` radiograph in [0, 1], higher is denser; ``(D, H, W)`` HU volume
            for CT readers; ``None`` when the reader was built with ``load_images=False``.
        target: float32 ``(C,)`` multi-label target (soft values allowed, e.g. LSR).
        mask: float32 ``(C,)``: 1 where the label is known, 0 where missing/ignored; losses
            multiply by it.
        id: image id, or its path relative to the dataset root.
        meta: patient/study ids where the format has them, view, split, boxes, ...
    """

    image: np.ndarray | None
    target: np.ndarray
    mask: np.ndarray
    id: str
    meta: dict = field(default_factory=dict)


@dataclass
class Entry:
    """One parsed index row: everything about an item except its pixels."""

    path: Path
    target: np.ndarray
    mask: np.ndarray
    id: str
    meta: dict = field(default_factory=dict)


class LabelledDataset(Sequence):
    """Map-style base: subclasses fill ``self.entries`` at construction; pixels load lazily.

    Subclasses set ``name`` and ``label_names`` and may override :meth:`load_image`.
    """

    name: str = ""
    label_names: tuple[str, ...] = ()

    def __init__(self, root: str | Path, split: str, load_images: bool) -> None:
        self.root = Path(root)
        self.split = split
        self.load_images = load_images
        self.entries: list[Entry] = []
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.name}: dataset root {self.root} is not a directory")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Sample:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(i)}")
        entry = self.entries[i]
        image = None
        if self.load_images:
            if not entry.path.is_file():
                raise DatasetFormatError(
                    f"{self.name}: the image file of item {i} is missing under {self.root} "
                    "(dataset.path(i) gives the expected location)"
                )
            image = self.load_image(entry.path)
        return Sample(image, entry.target.copy(), entry.mask.copy(), entry.id, dict(entry.meta))

    def path(self, i: int) -> Path:
        """Where item ``i``'s image is expected on disk."""
        return self.entries[i].path

    @property
    def targets(self) -> np.ndarray:
        """float32 ``(N, C)`` targets of all items (for class weights and stratification)."""
        return _stack([e.target for e in self.entries], len(self.label_names))

    @property
    def masks(self) -> np.ndarray:
        """float32 ``(N, C)`` known-label masks of all items."""
        return _stack([e.mask for e in self.entries], len(self.label_names))

    def load_image(self, path: Path) -> np.ndarray:
        """Read one image; the default dispatches on the file suffix."""
        if path.suffix.lower() in (".dcm", ".dicom"):
            return read_dicom_radiograph(path)
        return read_raster(path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
        )


def _stack(rows: list[np.ndarray], c: int) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, c), np.float32)


def check_split(name: str, split: str, allowed: Iterable[str]) -> None:
    """Raise a ValueError naming the valid splits when ``split`` is not one of them."""
    allowed = tuple(allowed)
    if split not in allowed:
        raise ValueError(f"{name}: unknown split {split!r}; valid: {', '.join(allowed)}")


def find_file(directory: Path, *names: str, what: str = "") -> Path:
    """The first of ``names`` (each also tried with ``.gz``) that exists in ``directory``."""
    for n in names:
        for candidate in (directory / n, directory / f"{n}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetFormatError(
        f"{what or 'dataset'}: {' or '.join(names)} (optionally .gz) not found in {directory}"
    )


def read_csv(
    path: Path, required: Iterable[str] = (), *, what: str = "", rename: dict | None = None
) -> list[dict[str, str]]:
    """Rows of a (optionally gzip-compressed) CSV as dicts, after checking required columns.

    ``rename`` maps alternative header spellings to canonical names before the check.

    Raises:
        DatasetFormatError: the file is missing or lacks one of ``required``.
    """
    label = what or path.name
    if not path.is_file():
        raise DatasetFormatError(f"{label}: index file {path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [(rename or {}).get(h.strip(), h.strip()) for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetFormatError(
                f"{label}: {path.name} lacks column(s) {missing}; found {header}"
            )
        return list(reader)


def read_raster(path: Path) -> np.ndarray:
    """PNG/JPEG → float32 ``(H, W)`` in [0, 1], dividing by the maximum of the stored dtype."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale (Pillow may decode it as 32-bit "I"); PNG holds at most 16 bits.
            return (np.asarray(im, dtype=np.float64) / 65535.0).astype(np.float32)
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.float32) / 255.0


def scale_to_unit(
    pixels: np.ndarray, center: float | None = None, width: float | None = None
) -> np.ndarray:
    """Map pixels to [0, 1]: by a plain linear window ``(p − (center − width/2)) / width``,
    clipped, if given, else min–max. For rasters and arrays; DICOM images go through the DICOM
    VOI transform instead (:func:`read_dicom_radiograph`, :func:`imaging.voi.to_unit`)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if center is not None and width is not None and width > 0:
        lo = center - width / 2.0
        return np.clip((pixels - lo) / width, 0.0, 1.0).astype(np.float32)
    return min_max_unit(pixels)


def read_dicom_radiograph(path: Path) -> np.ndarray:
    """DICOM radiograph → float32 ``(H, W)`` in [0, 1], higher is denser: the first frame through
    the file's VOI LUT, window (with its VOI LUT Function) or min–max, exactly as serving's
    ``imaging.preprocess.radiograph_to_unit`` (:func:`imaging.voi.to_unit`)."""
    from imaging.dicom import read_image

    return to_unit(read_image(path))


def read_volume_hu(path: Path):
    """A CT volume file (.mhd/.nii) → :class:`imaging.image.Volume` in HU, ``(D, H, W)``."""
    from imaging.series import read_volume

    return read_volume(path)


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts``, identical across processes (unlike the salted ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def stable_uniform(low: float, high: float, *parts: object) -> float:
    """A draw from U(low, high) that depends only on ``parts`` (per-image deterministic noise)."""
    return float(np.random.default_rng(stable_seed(*parts)).uniform(low, high))


def hash_split(key: str, seed: int, fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> str:
    """Assign ``key`` to "train"/"val"/"test" by a seeded hash: stable, no index file needed."""
    u = (stable_seed("split", seed, key) % 2**53) / 2**53
    edges = np.cumsum(fractions) / float(sum(fractions))
    return ("train", "val", "test")[int(np.searchsorted(edges, u, side="right").clip(0, 2))]


def parse_float(text: str | None) -> float | None:
    """``float(text)``, or None for a blank cell."""
    text = (text or "").strip()
    return float(text) if text else None


def collate_samples(samples: Sequence[Sample]) -> dict:
    """Stack samples into a batch of NumPy arrays (a DataLoader ``collate_fn``, torch-free).

    Returns ``{"image": (B, ...) or None, "target": (B, C), "mask": (B, C), "id": [...],
    "meta": [...]}``; images must share a shape (resize first) unless all are None.
    """
    images = [s.image for s in samples]
    if all(im is None for im in images):
        batch_images = None
    else:
        shapes = {None if im is None else im.shape for im in images}
        if len(shapes) != 1:
            raise ValueError(f"cannot stack images of shapes {sorted(map(str, shapes))}")
        batch_images = np.stack(images)
    return {
        "image": batch_images,
        "target": np.stack([s.target for s in samples]),
        "mask": np.stack([s.mask for s in samples]),
        "id": [s.id for s in samples],
        "meta": [s.meta for s in samples],
    }
