"""LUNA16 (Setio et al., Med. Image Anal. 2017; arXiv 1612.08012), the grand-challenge release.

Layout::

    <root>/subset0 ... subset9/<seriesuid>.mhd (+ .raw)   CT volumes, MetaImage
    <root>/annotations.csv        seriesuid,coordX,coordY,coordZ,diameter_mm   (world mm)
    <root>/candidates.csv | candidates_V2.csv   seriesuid,coordX,coordY,coordZ,class

World coordinates are the MetaImage physical space (``Offset`` + index × ``ElementSpacing``).
Every LUNA16 scan has an identity ``TransformMatrix``, so a world point ``(x, y, z)`` maps to the
continuous voxel index ``(d, h, w) = ((z - oz) / sz, (y - oy) / sy, (x - ox) / sx)``; a scan with
another direction raises rather than being mapped wrongly. Splits follow Models Genesis by
default (subsets 0–4 train, 5–6 val, 7–9 test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from imaging.datasets.base import (
    DatasetFormatError,
    Entry,
    LabelledDataset,
    check_split,
    read_csv,
    read_volume_hu,
)
from imaging.datasets.labels import load_label_names

#: the subset → split assignment of Models Genesis (Zhou et al., MICCAI 2019)
GENESIS_SUBSETS: dict[str, tuple[int, ...]] = {
    "train": (0, 1, 2, 3, 4),
    "val": (5, 6),
    "test": (7, 8, 9),
}


def read_mhd_header(path: Path) -> dict[str, str]:
    """The ``key = value`` lines of a MetaImage header."""
    header = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
    return header


def mhd_geometry(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Origin ``(x, y, z)`` mm, spacing ``(x, y, z)`` mm and shape ``(D, H, W)`` of an .mhd file.

    Raises:
        DatasetFormatError: a key is missing, or the direction is not the identity.
    """
    h = read_mhd_header(path)
    try:
        origin = np.array(h.get("Offset", h.get("Origin", h.get("Position"))).split(), float)
        spacing = np.array(h["ElementSpacing"].split(), float)
        dims = [int(v) for v in h["DimSize"].split()]
    except (KeyError, AttributeError, ValueError) as e:
        raise DatasetFormatError(
            f"luna16: header {path.name} lacks Offset/ElementSpacing/DimSize"
        ) from e
    direction = np.array(h.get("TransformMatrix", "1 0 0 0 1 0 0 0 1").split(), float)
    if direction.size != 9 or not np.allclose(direction.reshape(3, 3), np.eye(3), atol=1e-6):
        raise DatasetFormatError(
            f"luna16: {path.name} has TransformMatrix {h.get('TransformMatrix')}; only the "
            "identity direction of the LUNA16 release is supported"
        )
    return origin, spacing, tuple(dims[::-1])


def world_to_voxel(xyz: Sequence[float], origin: np.ndarray, spacing: np.ndarray) -> tuple:
    """World ``(x, y, z)`` mm → continuous voxel index ``(d, h, w)`` (identity direction)."""
    ijk = (np.asarray(xyz, float) - origin) / spacing  # (x, y, z) index order
    return tuple(float(v) for v in ijk[::-1])


class Luna16Dataset(LabelledDataset):
    """LUNA16 CT volumes (HU, ``(D, H, W)``) with a "has nodule" target and nodule positions.

    Args:
        root: folder holding ``subset0``..``subset9`` and ``annotations.csv``.
        split: a key of ``subsets`` ("train", "val", "test" by default) or "all".
        load_images: False skips volume loading (geometry comes from the .mhd headers).
        subsets: split → subset numbers; defaults to :data:`GENESIS_SUBSETS`.
        candidates: "candidates.csv" or "candidates_V2.csv" to add ``meta["candidates"]``.
    """

    name = "luna16"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        load_images: bool = True,
        subsets: Mapping[str, Sequence[int]] | None = None,
        candidates: str | None = None,
    ) -> None:
        super().__init__(root, split, load_images)
        subsets = dict(GENESIS_SUBSETS if subsets is None else subsets)
        check_split(self.name, split, (*subsets, "all"))
        self.label_names = load_label_names("luna16")
        numbers = range(10) if split == "all" else subsets[split]

        nodules = self._points("annotations.csv", ["diameter_mm"])
        cands = self._points(candidates, ["class"]) if candidates else None

        for k in numbers:
            folder = self.root / f"subset{k}"
            files = sorted(folder.glob("*.mhd")) or sorted(folder.glob("*/*.mhd"))
            for mhd in files:
                uid = mhd.stem
                origin, spacing, shape = mhd_geometry(mhd)
                meta = {
                    "seriesuid": uid,
                    "subset": k,
                    "split": split,
                    "shape": shape,
                    "spacing": tuple(float(s) for s in spacing[::-1]),  # (d, h, w) mm
                    "origin": tuple(float(o) for o in origin),  # (x, y, z) mm
                    "nodules": [
                        {
                            "world": xyz,
                            "voxel": world_to_voxel(xyz, origin, spacing),
                            "diameter_mm": extra["diameter_mm"],
                        }
                        for xyz, extra in nodules.get(uid, [])
                    ],
                }
                if cands is not None:
                    meta["candidates"] = [
                        {
                            "world": xyz,
                            "voxel": world_to_voxel(xyz, origin, spacing),
                            "class": int(extra["class"]),
                        }
                        for xyz, extra in cands.get(uid, [])
                    ]
                target = np.array([1.0 if meta["nodules"] else 0.0], np.float32)
                self.entries.append(Entry(mhd, target, np.ones_like(target), uid, meta))
        if not self.entries:
            raise DatasetFormatError(
                f"{self.name}: no .mhd volumes in subset folders {list(numbers)} under {self.root}"
            )

    def _points(self, filename: str, extra: list[str]) -> dict[str, list]:
        """seriesuid → [((x, y, z), {extra column: value}), ...] of a coordinate CSV."""
        required = ["seriesuid", "coordX", "coordY", "coordZ", *extra]
        points: dict[str, list] = {}
        for row in read_csv(self.root / filename, required, what=self.name):
            xyz = tuple(float(row[c]) for c in ("coordX", "coordY", "coordZ"))
            values = {c: float(row[c]) for c in extra}
            points.setdefault(row["seriesuid"].strip(), []).append((xyz, values))
        return points

    def load_image(self, path: Path) -> np.ndarray:
        """The HU volume, float32 ``(D, H, W)``."""
        return np.asarray(read_volume_hu(path).voxels, dtype=np.float32)
