"""Pixels → model input, described once (JSON: checkpoints, manifests, serving), NumPy reference."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from imaging import voi
from imaging.image import Image, Volume
from imaging.resample import resample_to_spacing

KINDS = ("radiograph", "ct")
LAYOUTS = {"radiograph": "NCHW", "ct": "NCXYZ"}
RESIZE_MODES = ("square", "shorter_side")
CROP_OFFSETS = ("round", "floor")

# torchvision's ImageNet statistics, which Ark uses for every dataset (train/views2d.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PEAC's Normalize of [0, 1] images (jlianglab/PEAC utils/build_loader_global_local.py;
# PEAC_MEAN / PEAC_STD in models/peac.py).
PEAC_MEAN = 0.5056
PEAC_STD = 0.252
# Models Genesis' generator clips HU to [-1000, 1000] and scales to [0, 1]
# (MrGiovanni/ModelsGenesis infinite_generator_3D.py; train/data/cubes.py HU_MIN / HU_MAX).
GENESIS_HU = (-1000.0, 1000.0)


# -------------------------------------------------------------------------------- description


def _fail(name: str, problem: str) -> ValueError:
    return ValueError(f"Preprocessing.{name}: {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise _fail(name, f"must be a string, got {type(value).__name__}")
    if value not in allowed:
        raise _fail(name, f"must be one of {list(allowed)}, got {value!r}")
    return value


def _floats(name: str, value: Any, length: int | None = None) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise _fail(name, f"must be a list of numbers, got {type(value).__name__}")
    if not all(_is_number(v) for v in value):
        raise _fail(name, f"must hold numbers only, got {list(value)!r}")
    out = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in out):
        raise _fail(name, f"must be finite, got {list(out)}")
    if length is not None and len(out) != length:
        raise _fail(name, f"must have {length} values, got {len(out)}")
    return out


def _optional_floats(name: str, value: Any, length: int) -> tuple[float, ...] | None:
    return None if value is None else _floats(name, value, length)


def _optional_size(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise _fail(name, f"must be an integer or null, got {type(value).__name__}")
    if value < 1:
        raise _fail(name, f"must be positive, got {value}")
    return int(value)


@dataclass(frozen=True)
class Preprocessing:
    """Decoded pixels → model input, stated in full.

    Radiographs (``kind="radiograph"``, layout ``NCHW``): ``(H, W)`` in [0, 1] (higher = denser)
    → resize (``resize_mode`` ``"square"``: to ``resize × resize``, aspect not kept;
    ``"shorter_side"``: shorter side to ``resize``, see :func:`shorter_side_size`) → centre crop
    ``crop × crop`` (offset rule ``crop_offset``) → grey repeated to ``channels`` →
    ``(x - mean) / std`` per channel.

    CT (``kind="ct"``, layout ``NCXYZ``: rows × cols × slices, depth last): a ``(D, H, W)`` HU
    volume → resample to ``spacing`` (mm, ``(d, h, w)``; None keeps it) → clip to ``hu_clip`` and
    scale to [0, 1] (None: HU kept) → ``(x - mean) / std`` → ``voxels.transpose(2, 1, 0)``.

    Every field is required by :meth:`from_dict`; fields that do not apply to the kind must be
    null (``hu_clip``/``spacing`` for radiographs, ``resize``/``crop`` for CT).

    Attributes:
        kind: ``"radiograph"`` or ``"ct"``.
        layout: ``"NCHW"`` (radiograph) or ``"NCXYZ"`` (CT).
        hu_clip: CT: ``(lo, hi)`` HU window mapped linearly to [0, 1], or None.
        spacing: CT: target voxel size ``(d, h, w)`` in mm, or None.
        resize: radiograph: target side, or None for no resize.
        resize_mode: ``"square"`` or ``"shorter_side"``.
        crop: radiograph: side of the centre crop, or None.
        crop_offset: ``"round"`` (torchvision CenterCrop) or ``"floor"``.
        mean: per output channel, or one value for all.
        std: per output channel, or one value for all; positive.
        channels: 1 or 3 (CT: 1).
    """

    kind: str
    layout: str
    hu_clip: tuple[float, float] | None = None
    spacing: tuple[float, float, float] | None = None
    resize: int | None = None
    resize_mode: str = "square"
    crop: int | None = None
    crop_offset: str = "round"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: int = 1

    def __post_init__(self) -> None:
        for name, value in _validated(self).items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples), every field present."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Build from :meth:`to_dict`'s output (e.g. a manifest), checking it strictly.

        Raises:
            ValueError: naming the field, for unknown or missing keys, wrong types, bad
                enumeration values, non-positive sizes or std, or a mean/std length other than
                1 or ``channels``.
        """
        if not isinstance(d, dict):
            raise ValueError(f"Preprocessing: expected a dict, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise _fail(unknown[0], f"unknown key(s) {unknown}")
        missing = [n for n in names if n not in d]
        if missing:
            raise _fail(missing[0], f"missing required key(s) {missing}")
        return cls(**d)


def _validated(pp: Preprocessing) -> dict[str, Any]:
    """Checked and normalised field values (tuples of floats, ints) of ``pp``."""
    kind = _choice("kind", pp.kind, KINDS)
    layout = _choice("layout", pp.layout, tuple(LAYOUTS.values()))
    if layout != LAYOUTS[kind]:
        raise _fail("layout", f"must be {LAYOUTS[kind]!r} for kind {kind!r}, got {layout!r}")
    v: dict[str, Any] = {
        "hu_clip": _optional_floats("hu_clip", pp.hu_clip, 2),
        "spacing": _optional_floats("spacing", pp.spacing, 3),
        "resize": _optional_size("resize", pp.resize),
        "resize_mode": _choice("resize_mode", pp.resize_mode, RESIZE_MODES),
        "crop": _optional_size("crop", pp.crop),
        "crop_offset": _choice("crop_offset", pp.crop_offset, CROP_OFFSETS),
    }
    if not _is_int(pp.channels):
        raise _fail("channels", f"must be an integer, got {type(pp.channels).__name__}")
    if pp.channels not in (1, 3):
        raise _fail("channels", f"must be 1 or 3, got {pp.channels}")
    v["channels"] = int(pp.channels)
    v["mean"] = _floats("mean", pp.mean)
    v["std"] = _floats("std", pp.std)
    for name in ("mean", "std"):
        if len(v[name]) not in (1, v["channels"]):
            raise _fail(name, f"needs 1 or {v['channels']} (channels) values, got {len(v[name])}")
    if min(v["std"]) <= 0:
        raise _fail("std", f"must be positive, got {list(v['std'])}")
    _check_kind_fields(kind, v)
    return v


def _check_kind_fields(kind: str, v: dict[str, Any]) -> None:
    if kind == "ct":
        for name in ("resize", "crop"):
            if v[name] is not None:
                raise _fail(name, "must be null for kind 'ct'")
        if v["channels"] != 1:
            raise _fail("channels", "must be 1 for kind 'ct'")
        if v["hu_clip"] is not None and not v["hu_clip"][0] < v["hu_clip"][1]:
            raise _fail("hu_clip", f"needs lo < hi, got {list(v['hu_clip'])}")
        if v["spacing"] is not None and min(v["spacing"]) <= 0:
            raise _fail("spacing", f"must be positive, got {list(v['spacing'])}")
        return
    for name in ("hu_clip", "spacing"):
        if v[name] is not None:
            raise _fail(name, "must be null for kind 'radiograph'")
    if v["crop"] is None and (v["resize"] is None or v["resize_mode"] != "square"):
        raise _fail("crop", "is required unless resize is set with resize_mode 'square'")
    if v["crop"] is not None and v["resize"] is not None and v["crop"] > v["resize"]:
        raise _fail("crop", f"{v['crop']} is larger than resize {v['resize']}")


def genesis_ct() -> Preprocessing:
    """Models Genesis (Zhou et al., MedIA 2021): HU clipped to [-1000, 1000], scaled to [0, 1].

    Source: MrGiovanni/ModelsGenesis ``infinite_generator_3D.py`` (hu_min/hu_max); native spacing.
    """
    return Preprocessing(
        kind="ct",
        layout="NCXYZ",
        hu_clip=GENESIS_HU,
        spacing=None,
        mean=(0.0,),
        std=(1.0,),
        channels=1,
    )


def ark_cxr(size: int = 224) -> Preprocessing:
    """Ark (Ma et al., MICCAI 2023) evaluation: square resize, centre crop, ImageNet statistics.

    Source: jlianglab/Ark test transforms (``Resize((256, 256))``, ``CenterCrop(224)``,
    ImageNet ``Normalize``), scaled to ``size`` as train/ark/data.py ``eval_resize`` does.
    """
    return Preprocessing(
        kind="radiograph",
        layout="NCHW",
        resize=int(round(size * 256 / 224)),
        resize_mode="square",
        crop=size,
        crop_offset="round",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        channels=3,
    )


def peac_cxr(size: int = 224) -> Preprocessing:
    """PEAC (Zhou et al., 2023): shorter side to ``size``, centre crop, PEAC's grey statistics.

    Source: jlianglab/PEAC ``utils/build_loader_global_local.py`` (Normalize 0.5056 / 0.252);
    the resize and crop rule of models/peac.py ``preprocess``.
    """
    return Preprocessing(
        kind="radiograph",
        layout="NCHW",
        resize=size,
        resize_mode="shorter_side",
        crop=size,
        crop_offset="floor",
        mean=(PEAC_MEAN,),
        std=(PEAC_STD,),
        channels=3,
    )


# -------------------------------------------------------------------------------- resizing


@functools.lru_cache(maxsize=64)  # a server resizes the same few film sizes over and over
def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32 matrix of one axis of an antialiased bilinear resize.

    With ``s = n_in / n_out``, output pixel ``i`` is centred at ``c = (i + 0.5) · s`` input
    pixels (half-pixel centres). Its weights are a triangle of half-width ``max(s, 1)`` around
    ``c`` (widened by the downscale factor, as PIL and torch's ``antialias=True`` do; plain
    bilinear when upscaling) at the input pixel centres ``j + 0.5`` inside the image,
    normalised to sum to 1 (so edges replicate).

    The arithmetic is float32 on purpose: torch computes ``c`` in float32, whose rounding
    (~1e-4 of a pixel for 2000-pixel images) shows in the weights; matching it keeps this
    reference within 1e-5 of ``F.interpolate``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} → {n_out}")
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    inv_support = f32(1.0) / scale if scale >= 1 else f32(1.0)
    centre = scale * (np.arange(n_out, dtype=f32) + f32(0.5))
    taps = np.arange(n_in, dtype=f32)
    w = np.abs((taps[None, :] - centre[:, None] + f32(0.5)) * inv_support)
    w = np.clip(f32(1.0) - w, f32(0.0), None)
    w /= w.sum(axis=1, keepdims=True)
    w.setflags(write=False)  # cached and shared: read-only
    return w


def resize_bilinear(
    image: np.ndarray,
    out_hw: tuple[int, int],
    crop: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> np.ndarray:
    """Bilinear resize with half-pixel centres, antialiased when downscaling.

    Equals ``torch.nn.functional.interpolate(x, out_hw, mode="bilinear", align_corners=False,
    antialias=True)``. Separable: ``rows @ image @ cols.T`` with :func:`resize_weights`; each
    output row reads only its own band of input rows (~2 × the downscale factor), so a 2000-pixel
    film shrinks at the cost of reading it once, not of a dense ``(h, H) @ (H, W)`` product.

    Args:
        image: ``(H, W)`` or ``(C, H, W)`` float.
        out_hw: ``(h, w)`` of the resized image.
        crop: ``((top, left), (height, width))`` of the resized image to return: only those
            output pixels are computed (a centre crop after a resize costs nothing extra).

    Returns:
        ``(h, w)`` or ``(C, h, w)`` float32 (or the crop's size).
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (C, H, W), got {x.shape}")
    (H, W), (h, w) = x.shape[-2:], (int(out_hw[0]), int(out_hw[1]))
    (top, left), (ch, cw) = crop if crop is not None else ((0, 0), (h, w))
    if not (0 <= top and top + ch <= h and 0 <= left and left + cw <= w):
        raise ValueError(f"crop {crop} is outside the resized image {(h, w)}")
    if (h, w) == (H, W):
        return np.ascontiguousarray(x[..., top : top + ch, left : left + cw])
    rows = resize_weights(H, h)[top : top + ch]
    cols = resize_weights(W, w)[left : left + cw]
    planes = x if x.ndim == 3 else x[None]
    out = np.stack([
        _banded_rows(cols, np.ascontiguousarray(_banded_rows(rows, plane).T)).T
        for plane in planes
    ])  # fmt: skip
    return out if x.ndim == 3 else out[0]


def _banded_rows(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``weights @ x`` for resize weights: each row is zero outside one run of taps, so each
    output row is a product over that run only."""
    n_out, n_in = weights.shape
    if n_in <= 2 * n_out:  # upscaling or mild downscaling: the band is most of the row
        return weights @ x
    nonzero = weights != 0
    first = nonzero.argmax(axis=1)
    stop = n_in - nonzero[:, ::-1].argmax(axis=1)
    out = np.empty((n_out, x.shape[1]), np.float32)
    for i in range(n_out):
        a, b = first[i], stop[i]
        np.dot(weights[i, a:b], x[a:b], out=out[i])
    return out


def shorter_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """PEAC's resize target: shorter side → ``size``, longer side scaled and rounded half up.

    ``s = size / min(h, w)``; the longer side is ``max(size, floor(side · s + 0.5))`` (a square
    image gives ``(size, size)``). The rule of models/peac.py ``preprocess``.
    """
    s = size / min(h, w)
    rh = size if h <= w else max(size, math.floor(h * s + 0.5))
    rw = size if w < h else max(size, math.floor(w * s + 0.5))
    return int(rh), int(rw)


def center_crop_offsets(hw: tuple[int, int], size: int, mode: str = "round") -> tuple[int, int]:
    """``(top, left)`` of a centred ``size × size`` crop of an ``(H, W)`` image.

    Args:
        hw: ``(H, W)`` of the image being cropped.
        size: crop side; at most ``min(H, W)``.
        mode: ``"round"``: ``int(round((H - size) / 2))`` (Python's round, half to even; as
            torchvision ``CenterCrop``); ``"floor"``: ``(H - size) // 2``.
    """
    H, W = int(hw[0]), int(hw[1])
    if size > H or size > W:
        raise ValueError(f"crop {size} is larger than the image {(H, W)}")
    if mode == "round":
        return int(round((H - size) / 2.0)), int(round((W - size) / 2.0))
    if mode == "floor":
        return (H - size) // 2, (W - size) // 2
    raise ValueError(f"mode must be one of {list(CROP_OFFSETS)}, got {mode!r}")


@dataclass(frozen=True)
class CropGeometry:
    """Original image pixels ↔ model input pixels: resize to ``resized_hw``, then crop ``size``².

    Coordinates are continuous ``(row, col)`` with integer values at pixel centres, matching the
    half-pixel resampling of :func:`resize_bilinear`. The one definition: models/peac.py's
    ``CropTransform`` is this class.

    Attributes:
        original_hw: ``(H, W)`` of the original image.
        resized_hw: ``(h, w)`` after the resize (equal to ``original_hw`` without one).
        offset: ``(top, left)`` of the crop in the resized image.
        size: side of the square model input.
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset: tuple[int, int]
    size: int

    def _scale(self) -> np.ndarray:
        return np.array(self.resized_hw, np.float64) / np.array(self.original_hw, np.float64)

    def to_model(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` original ``(row, col)`` → model input ``(row, col)``, float64."""
        p = np.asarray(points, dtype=np.float64)
        return (p + 0.5) * self._scale() - 0.5 - np.array(self.offset, np.float64)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` model input ``(row, col)`` → original ``(row, col)``, float64."""
        p = np.asarray(points, dtype=np.float64)
        return (p + np.array(self.offset, np.float64) + 0.5) / self._scale() - 0.5


# -------------------------------------------------------------------------------- pipelines


def _normalise(x: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """``(x - mean) / std`` over the leading channel axis, float32."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    mean = np.asarray(pp.mean, np.float32).reshape(shape)
    std = np.asarray(pp.std, np.float32).reshape(shape)
    return ((x - mean) / std).astype(np.float32, copy=False)


def _resized_hw(hw: tuple[int, int], pp: Preprocessing) -> tuple[int, int]:
    if pp.resize is None:
        return hw
    if pp.resize_mode == "square":
        return pp.resize, pp.resize
    return shorter_side_size(hw[0], hw[1], pp.resize)


def _as_chw(pixels: np.ndarray, channels: int) -> np.ndarray:
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, channels) or min(x.shape[1:]) < 1:
        raise ValueError(f"pixels must be (H, W), (1, H, W) or ({channels}, H, W), got {x.shape}")
    return x


def crop_geometry(hw: tuple[int, int], pp: Preprocessing) -> CropGeometry:
    """The pixel mapping :func:`prepare_radiograph` applies to an ``(H, W)`` image (no pixels
    needed: serving maps query points while DALI does the pixel work)."""
    hw = (int(hw[0]), int(hw[1]))
    resized = _resized_hw(hw, pp)
    size = pp.crop if pp.crop is not None else resized[0]
    return CropGeometry(hw, resized, center_crop_offsets(resized, size, pp.crop_offset), size)


def prepare_radiograph(pixels: np.ndarray, pp: Preprocessing) -> tuple[np.ndarray, CropGeometry]:
    """A [0, 1] radiograph → the model input described by ``pp``, and the pixel mapping.

    Args:
        pixels: ``(H, W)`` float in [0, 1], higher = denser (see :func:`radiograph_to_unit`);
            ``(1, H, W)`` or ``(channels, H, W)`` are accepted too.
        pp: a ``kind="radiograph"`` description.

    Returns:
        ``(x (channels, S, S) float32, CropGeometry)`` with ``S = pp.crop or pp.resize``.
    """
    if pp.kind != "radiograph":
        raise ValueError(f"prepare_radiograph needs kind 'radiograph', got {pp.kind!r}")
    x = _as_chw(pixels, pp.channels)
    geo = crop_geometry((x.shape[1], x.shape[2]), pp)
    x = resize_bilinear(x, geo.resized_hw, crop=(geo.offset, (geo.size, geo.size)))
    if x.shape[0] != pp.channels:
        x = np.repeat(x, pp.channels, axis=0)
    return np.ascontiguousarray(_normalise(x, pp)), geo


def radiograph_to_unit(image: Image) -> np.ndarray:
    """A decoded radiograph → ``(H, W)`` float32 in [0, 1], higher = denser.

    The first frame of a multi-frame image through the file's DICOM VOI transform: its VOI LUT
    Sequence, else its first window with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID),
    else min–max; MONOCHROME1 comes out inverted (:func:`imaging.voi.to_unit`, which training's
    ``read_dicom_radiograph`` uses too).
    """
    return voi.to_unit(image)


def prepare_volume(volume: Volume, pp: Preprocessing) -> np.ndarray:
    """A ``(D, H, W)`` HU volume → the model input described by ``pp``.

    Resample to ``pp.spacing`` (linear, imaging.resample ``resample_to_spacing``) if set, clip
    to ``pp.hu_clip`` and scale to [0, 1] if set, ``(x - mean) / std``, then index
    ``(x, y, z) = voxels.transpose(2, 1, 0)`` (Models Genesis' rows × cols × depth).

    Returns:
        ``(1, X, Y, Z)`` float32, C-contiguous.
    """
    if pp.kind != "ct":
        raise ValueError(f"prepare_volume needs kind 'ct', got {pp.kind!r}")
    if pp.spacing is not None:
        volume = resample_to_spacing(volume, pp.spacing)
    v = np.asarray(volume.voxels, dtype=np.float32)
    if pp.hu_clip is not None:
        lo, hi = pp.hu_clip
        v = ((np.clip(v, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    x = _normalise(v.transpose(2, 1, 0)[None], pp)
    return np.ascontiguousarray(x)
