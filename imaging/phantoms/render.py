"""PNG pictures of phantoms (Pillow only): windowed CT slices, radiographs with landmarks, montages.

For looking at the data, not for training: slices are resized to square physical pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from .ct import ChestPhantom
from .radiograph import Radiograph

#: (center, width) HU display windows
WINDOWS = {"lung": (-600.0, 1500.0), "soft": (40.0, 400.0), "bone": (400.0, 1800.0)}
#: outline colours of finding masks
COLORS = {
    "nodule": (255, 210, 0),
    "effusion": (0, 170, 255),
    "cardiomegaly": (255, 90, 200),
    "pneumothorax": (80, 255, 120),
}


def window(hu: np.ndarray, name: str = "lung") -> np.ndarray:
    """HU -> uint8 grey levels through the named window."""
    c, w = WINDOWS[name]
    return (np.clip((hu - (c - w / 2)) / w, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _to_rgb(grey: np.ndarray, masks: dict, outlines: bool) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if outlines:
        for name, m in masks.items():
            if name in COLORS:
                rgb[_outline(m)] = COLORS[name]
    return rgb


def _physical(img: PILImage.Image, row_mm: float, col_mm: float, width: int) -> PILImage.Image:
    h, w = img.size[1], img.size[0]
    height = max(1, round(width * (h * row_mm) / (w * col_mm)))
    return img.resize((width, height), PILImage.BILINEAR)


def ct_slice(
    ct: ChestPhantom,
    axis: str,
    index: int,
    win: str = "lung",
    width: int = 256,
    outlines: bool = True,
) -> PILImage.Image:
    """An axial (``index`` = slice ``d``) or coronal (``index`` = row ``h``) CT picture."""
    v = ct.volume.voxels
    sd, sh, sw = ct.volume.spacing
    if axis == "axial":
        grey, masks, rmm = window(v[index], win), {k: m[index] for k, m in ct.masks.items()}, sh
    elif axis == "coronal":
        grey, masks, rmm = (
            window(v[:, index], win),
            {k: m[:, index] for k, m in ct.masks.items()},
            sd,
        )
    else:
        raise ValueError(f"axis must be 'axial' or 'coronal', got {axis!r}")
    img = PILImage.fromarray(_to_rgb(grey, masks, outlines))
    return _physical(img, rmm, sw, width)


def radiograph_image(
    rg: Radiograph, width: int = 256, landmarks: bool = True, outlines: bool = True
) -> PILImage.Image:
    """The film (higher = whiter) with finding outlines and landmarks as red dots."""
    grey = (np.clip(rg.pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    img = PILImage.fromarray(_to_rgb(grey, rg.masks, outlines))
    img = _physical(img, rg.spacing[0], rg.spacing[1], width)
    if landmarks:
        sy = img.size[1] / rg.pixels.shape[0]
        sx = img.size[0] / rg.pixels.shape[1]
        draw = ImageDraw.Draw(img)
        for r, c in rg.landmarks.values():
            y, x = (r + 0.5) * sy - 0.5, (c + 0.5) * sx - 0.5
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=(255, 40, 40))
    return img


def montage(images, captions, pad: int = 4) -> PILImage.Image:
    """Images side by side on black, each with a caption above it."""
    cap_h = 14
    w = sum(i.size[0] for i in images) + pad * (len(images) + 1)
    h = max(i.size[1] for i in images) + cap_h + 2 * pad
    out = PILImage.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(out)
    x = pad
    for img, cap in zip(images, captions, strict=True):
        draw.text((x + 2, pad), cap, fill=(230, 230, 230))
        out.paste(img.convert("RGB"), (x, pad + cap_h))
        x += img.size[0] + pad
    return out
