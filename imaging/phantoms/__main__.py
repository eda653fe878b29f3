"""Command line: draw a phantom and write PNG previews (and optionally DICOM files).

python -m imaging.phantoms --seed 3 --findings nodule effusion --out /tmp/phantom --dicom
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import FINDINGS, make_chest_ct, make_radiograph
from .render import ct_slice, montage, radiograph_image


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m imaging.phantoms",
        description="Generate a synthetic chest CT and its PA radiograph; write PNG previews.",
    )
    ap.add_argument("--seed", type=int, default=0, help="patient seed (default 0)")
    ap.add_argument("--out", type=Path, default=Path("phantom_out"), help="output directory")
    ap.add_argument(
        "--findings", nargs="*", default=[], choices=FINDINGS, metavar="NAME",
        help=f"findings to draw, any of: {' '.join(FINDINGS)}",
    )  # fmt: skip
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128), metavar=("D", "H", "W"))
    ap.add_argument(
        "--spacing", type=float, nargs=3, default=(2.5, 2.5, 2.5), metavar=("SD", "SH", "SW"),
        help="voxel size in mm (slice, row, column)",
    )  # fmt: skip
    ap.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("ROWS", "COLS"))
    ap.add_argument("--width", type=int, default=256, help="width of each PNG panel (pixels)")
    ap.add_argument("--dicom", action="store_true", help="also write a CT series and a DX file")
    ap.add_argument(
        "--docs", type=Path, metavar="DIR",
        help="instead write the docs/phantoms figures (two patients, with and without findings)",
    )  # fmt: skip
    return ap


def write_docs(out: Path, shape=(128, 256, 256), spacing=(2.5, 1.25, 1.25), width=200) -> list:
    """The README figures: films of two patients with/without findings, CT slices, landmarks."""
    out.mkdir(parents=True, exist_ok=True)
    cases = [(1, ()), (1, FINDINGS), (2, ()), (2, ("cardiomegaly", "effusion"))]
    cts = {(s, f): make_chest_ct(s, shape, spacing, f) for s, f in cases}
    films = {k: make_radiograph(ct, (256, 256)) for k, ct in cts.items()}
    caps = [f"seed {s}: " + (", ".join(f) if f else "normal") for s, f in cases]
    caps = [c.replace("nodule, effusion, cardiomegaly, pneumothorax", "all four") for c in caps]
    imgs = [radiograph_image(films[k], width, landmarks=False) for k in cases]
    paths = [out / "radiographs.png"]
    montage(imgs, caps).save(paths[-1], optimize=True)
    normal, sick = cts[cases[0]], cts[cases[1]]
    lm = normal.landmarks
    levels = [("apex", lm["lung_apex_right"][0] + 6), ("carina", lm["carina"][0])]
    levels.append(("heart", lm["heart_border_left"][0]))
    panels = [ct_slice(normal, "axial", int(round(d)), "lung", width) for _, d in levels]
    panels.append(ct_slice(normal, "axial", int(round(levels[-1][1])), "soft", width))
    caps = [f"{n} (lung window)" for n, _ in levels] + ["heart (soft-tissue window)"]
    paths.append(out / "ct_axial.png")
    montage(panels, caps).save(paths[-1], optimize=True)
    h = int(round(lm["carina"][1]))
    panels = [ct_slice(c, "coronal", h, "lung", width) for c in (normal, sick)]
    panels.append(ct_slice(sick, "axial", int(round(levels[-1][1])), "lung", width))
    paths.append(out / "ct_findings.png")
    montage(panels, ["coronal, normal", "coronal, all four", "axial, all four"]).save(
        paths[-1], optimize=True
    )
    paths.append(out / "landmarks.png")
    imgs = [radiograph_image(films[cases[0]], 300, outlines=False)]
    montage(imgs, ["landmarks (red) on the film"]).save(paths[-1], optimize=True)
    return paths


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.docs is not None:
        for p in write_docs(args.docs):
            print(p)
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ct = make_chest_ct(args.seed, tuple(args.shape), tuple(args.spacing), args.findings)
    rg = make_radiograph(ct, tuple(args.size))
    lm, w = ct.landmarks, args.width
    levels = {"apex": lm["lung_apex_right"][0] + 4, "carina": lm["carina"][0]}
    levels["heart"] = lm["heart_border_left"][0]
    written = []
    radiograph_image(rg, w).save(out / "radiograph.png")
    written.append(out / "radiograph.png")
    panels, captions = [], []
    for name, d in levels.items():
        panels.append(ct_slice(ct, "axial", int(round(d)), "lung", w))
        captions.append(f"axial {name} (lung window)")
    panels.append(ct_slice(ct, "axial", int(round(levels["heart"])), "soft", w))
    captions.append("axial heart (soft tissue)")
    montage(panels, captions).save(out / "axial.png")
    coronal = ct_slice(ct, "coronal", int(round(lm["carina"][1])), "lung", w)
    montage([coronal], ["coronal through carina"]).save(out / "coronal.png")
    written += [out / "axial.png", out / "coronal.png"]
    if args.dicom:
        from ..writers import write_ct_series, write_radiograph

        write_ct_series(ct.volume, out / "ct")
        write_radiograph(rg.pixels, out / "radiograph.dcm", spacing=rg.spacing)
        written += [out / "ct", out / "radiograph.dcm"]
    info = {
        "seed": ct.seed,
        "labels": ct.labels,
        "landmarks_voxel_dhw": {k: np.round(v, 2).tolist() for k, v in ct.landmarks.items()},
        "landmarks_film_rc": {k: np.round(v, 2).tolist() for k, v in rg.landmarks.items()},
        "params": {k: v for k, v in ct.params.items() if isinstance(v, (int, float, str, list))},
    }
    (out / "phantom.json").write_text(json.dumps(info, indent=1, default=float))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
