"""Command line: anatomical correspondence between two chest radiographs with a PEAC model.

python -m models.peac_correspond A.dcm B.png --weights peac.safetensors --out matches.png \\
    --points 120,200 300,180

Each point of A (``row,col`` in A's original pixels) is matched to the centre of the most similar
token cell of B (cosine similarity of PEAC token embeddings, :func:`models.peac.correspond`). The
figure shows A and B side by side with every pair drawn in its own colour; the matches are also
printed. Without ``--points``, a 5×5 grid of points over A's model crop is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: Raster formats read with Pillow; anything else is read as DICOM.
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Pair colours (RGB), reused cyclically.
COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)


class InputError(Exception):
    """An input file cannot be used; the message says which and why."""


def read_radiograph(path: Path) -> np.ndarray:
    """A radiograph file → float32 ``(H, W)`` in [0, 1], higher = denser.

    PNG/JPEG/TIFF/BMP through :func:`imaging.datasets.base.read_raster`; everything else as
    DICOM through :func:`imaging.dicom.read_image` (VOI window applied, MONOCHROME1 inverted,
    first frame of a multi-frame file).
    """
    from PIL import UnidentifiedImageError

    from imaging.datasets.base import read_dicom_radiograph, read_raster
    from imaging.errors import ImagingError

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if path.suffix.lower() in RASTER_SUFFIXES:
            pixels = read_raster(path)
        else:
            pixels = read_dicom_radiograph(path)
    except (ImagingError, UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: cannot read the image ({exc})") from None
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise InputError(f"{path}: expected a 2-D radiograph, got shape {pixels.shape}")
    return pixels


def parse_point(text: str) -> tuple[float, float]:
    """``"row,col"`` → ``(row, col)`` (argparse type)."""
    try:
        row, col = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected row,col (e.g. 120,200), got {text!r}") from None
    return row, col


def default_points(corr, n: int = 5) -> np.ndarray:
    """An ``n``×``n`` grid of points over A's model crop, in A's original pixels."""
    size = corr.transform_a.size
    ticks = (np.arange(n) + 0.5) * size / n - 0.5
    rows, cols = np.meshgrid(ticks, ticks, indexing="ij")
    return corr.transform_a.to_original(np.stack([rows.ravel(), cols.ravel()], axis=1))


def draw_matches(
    image_a: np.ndarray,
    image_b: np.ndarray,
    points_a: np.ndarray,
    points_b: np.ndarray,
    similarity: np.ndarray,
    height: int = 512,
):
    """Side-by-side figure (a PIL RGB image) of A and B, each scaled to ``height`` rows."""
    from PIL import Image, ImageDraw

    def panel(img: np.ndarray) -> tuple[Image.Image, float]:
        grey = Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
        scale = height / img.shape[0]
        size = (max(1, round(img.shape[1] * scale)), height)
        return grey.resize(size, Image.Resampling.BILINEAR).convert("RGB"), scale

    pa, sa = panel(image_a)
    pb, sb = panel(image_b)
    gap = 8
    fig = Image.new("RGB", (pa.width + gap + pb.width, height), (0, 0, 0))
    fig.paste(pa, (0, 0))
    fig.paste(pb, (pa.width + gap, 0))
    draw = ImageDraw.Draw(fig)
    r = max(3, height // 100)
    for i, (p, q, s) in enumerate(zip(points_a, points_b, similarity, strict=True)):
        colour = COLOURS[i % len(COLOURS)]
        # pixel centres (row, col) → PIL (x, y) of the scaled panels
        xa, ya = (p[1] + 0.5) * sa - 0.5, (p[0] + 0.5) * sa - 0.5
        draw.ellipse((xa - r, ya - r, xa + r, ya + r), outline=colour, width=2)
        if not np.all(np.isfinite(q)):
            continue
        xb = (q[1] + 0.5) * sb - 0.5 + pa.width + gap
        yb = (q[0] + 0.5) * sb - 0.5
        draw.ellipse((xb - r, yb - r, xb + r, yb + r), fill=colour)
        draw.line((xa, ya, xb, yb), fill=colour, width=1)
        draw.text((xb + r + 1, yb - r), f"{s:.2f}", fill=colour)
    return fig


def match_files(
    image_a: Path,
    image_b: Path,
    weights: Path,
    points=None,
    device: str = "cpu",
    height: int = 512,
):
    """Match ``points`` of radiograph A (pixels of its original size; default a 5x5 grid over its
    model crop) to radiograph B with the PEAC model in ``weights``.

    Returns:
        ``(figure, points_a, points_b, cosine)``: the side-by-side PIL figure, the points, their
        matches in B and each match's cosine similarity (NaN outside A's crop).

    Raises:
        InputError: an image that cannot be read, or weights that are not a PEAC model.
    """
    from .checkpoint import CheckpointError, load_model
    from .peac import PEACModel, correspond

    image_a, image_b = read_radiograph(image_a), read_radiograph(image_b)
    try:
        model = load_model(weights)
    except (CheckpointError, OSError, KeyError) as exc:
        raise InputError(f"{weights}: cannot load the model ({exc})") from None
    if not isinstance(model, PEACModel):
        raise InputError(f"{weights}: holds a {type(model).__name__}, not a PEAC model")
    corr = correspond(model, image_a, image_b, device=device)
    points_a = np.array(points, dtype=np.float64) if points else default_points(corr)
    points_b, sim = corr.query(points_a)
    fig = draw_matches(image_a, image_b, points_a, points_b, sim, height=height)
    return fig, points_a, points_b, sim


def main(argv: list[str] | None = None) -> int:
    """The command line around :func:`match_files`: write the figure and print the matches;
    exit status 1 on unusable inputs."""
    parser = argparse.ArgumentParser(
        prog="python -m models.peac_correspond",
        description="Match points of radiograph A to radiograph B with a PEAC model (nearest "
        "token embedding by cosine similarity) and draw the matches side by side.",
    )
    parser.add_argument("image_a", type=Path, help="radiograph A (DICOM, PNG or JPEG)")
    parser.add_argument("image_b", type=Path, help="radiograph B (DICOM, PNG or JPEG)")
    parser.add_argument(
        "--weights", type=Path, required=True, help="PEAC weights (.safetensors from anatomix)"
    )
    parser.add_argument("--out", type=Path, required=True, help="figure to write (.png)")
    parser.add_argument(
        "--points",
        type=parse_point,
        nargs="+",
        metavar="ROW,COL",
        help="pixels of A in its original size (default: a 5x5 grid over A's model crop)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--height", type=int, default=512, help="figure height in pixels")
    args = parser.parse_args(argv)
    try:
        fig, points_a, points_b, sim = match_files(
            args.image_a, args.image_b, args.weights, args.points, args.device, args.height
        )
    except InputError as exc:
        print(f"peac_correspond: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.save(args.out, format="PNG")
    print("A (row, col) -> B (row, col)  cosine")
    for p, q, s in zip(points_a, points_b, sim, strict=True):
        target = "outside A's crop" if not np.isfinite(s) else f"({q[0]:.1f}, {q[1]:.1f})  {s:.3f}"
        print(f"({p[0]:.1f}, {p[1]:.1f}) -> {target}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
