"""The input guard: checks that a request's images are the kind of input the model was made for.

Each finding is a warning ``{"code", "detail", "file"}`` in the answer (per result for
radiographs, a top-level list for CT, the ``X-Anatomix-Warnings`` header for ``segment.dcm``);
``ANATOMIX_REFUSE_WARNINGS`` turns chosen codes into a 422 whose ``error`` is the code. Details
hold codes and numbers only, never a DICOM element's value.

Codes and thresholds:

* ``unexpected_modality``: the Modality is not one the endpoint takes (only reachable with
  ``allow_any_modality=true``, which otherwise refuses).
* ``lateral_view``: ViewPosition is a lateral one (LL, RL, LATERAL, LAT, LLD, RLD); without a
  frontal/lateral ViewPosition, the image's ``centre_contrast`` (:mod:`imaging.distribution`)
  below :data:`FRONTAL_MIN_CONTRAST` and within ±:data:`LATERAL_MAX_CONTRAST`: no bright
  mediastinal column between two darker lung fields.
* ``unknown_view``: no usable ViewPosition, oblique ones included, and the image check is
  inconclusive (a centre contrast between the bands above, or strongly negative).
* ``intensity_out_of_distribution``: a unit-image feature outside the export's recorded training
  statistics (manifest ``input_statistics``): ``|x - mean| > max(Z_MAX * std, floor)`` with
  :data:`Z_MAX` = 4 and the :data:`FLOORS` (phantom statistics are far narrower than real films;
  the floors keep real chest films in). ``centre_contrast`` is flagged on the low side only (an
  inverted or non-chest image); skipped when the manifest records no statistics.
* ``small_input``: a radiograph whose shorter side is under half the model's input side
  (``crop``, else ``resize``); a CT volume smaller than the sliding-window ROI in some axis
  after resampling to the model's spacing.
* ``implausible_hu``: a CT whose values are not Hounsfield units: no air (1st percentile above
  :data:`HU_AIR_MAX`), a maximum above :data:`HU_MAX`, or raw unsigned-looking values (minimum
  ≥ 0 with a maximum above 1000).
* ``missing_spacing``: a CT without PixelSpacing (1 mm assumed by the reader).
* ``anisotropic_spacing``: a CT whose largest voxel side is more than :data:`MAX_ANISOTROPY`
  times its smallest.
"""

from __future__ import annotations

import numpy as np

from imaging.image import Image, Volume

CODES = (
    "unexpected_modality",
    "lateral_view",
    "unknown_view",
    "intensity_out_of_distribution",
    "small_input",
    "implausible_hu",
    "missing_spacing",
    "anisotropic_spacing",
)
FRONTAL_VIEWS = frozenset({"AP", "PA", "AP AXIAL", "PA AXIAL"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})
#: image-based view check on ``centre_contrast`` (phantom PA ≈ 0.15-0.18, lateral ≈ −0.06-0.07)
FRONTAL_MIN_CONTRAST = 0.10
LATERAL_MAX_CONTRAST = 0.08
Z_MAX = 4.0
FLOORS = {"mean": 0.6, "std": 0.2, "centre_contrast": 0.12}
LOW_SIDE_ONLY = frozenset({"centre_contrast"})
HU_AIR_MAX = -500.0
HU_MAX = 4000.0
MAX_ANISOTROPY = 5.0


def _warning(code: str, detail: str, file: str | None) -> dict:
    return {"code": code, "detail": detail, "file": file}


def radiograph_warnings(
    img: Image,
    feats: dict,
    hw: tuple[int, int],
    manifest,
    name: str,
    allowed: tuple[str, ...] = (),
) -> list[dict]:
    """Warnings for one decoded radiograph ``img`` sent to the model of ``manifest``: ``feats``
    are :func:`imaging.distribution.unit_features` of its ``[0, 1]`` image, ``hw`` that image's
    size; ``allowed``: the modalities the endpoint takes."""
    out = []
    modality = (img.modality or "").strip().upper()
    if allowed and modality not in allowed:
        out.append(_warning("unexpected_modality", "the image's modality is not a radiograph's "
                            f"({', '.join(allowed)}); it was run on request", name))  # fmt: skip
    view = str(img.meta.get("view_position", "") or "")
    contrast = feats["centre_contrast"]
    if view in LATERAL_VIEWS:
        out.append(_warning("lateral_view", "ViewPosition is a lateral view; the model reads "
                            "frontal chest films", name))  # fmt: skip
    elif view not in FRONTAL_VIEWS:
        if abs(contrast) <= LATERAL_MAX_CONTRAST:
            out.append(_warning("lateral_view", "no ViewPosition, and the image shows no bright "
                                f"central column (centre contrast {contrast:.3f}): it looks "
                                "lateral", name))  # fmt: skip
        elif contrast < FRONTAL_MIN_CONTRAST:
            detail = "no usable ViewPosition, and the image does not look frontal (centre "
            out.append(_warning("unknown_view", detail + f"contrast {contrast:.3f})", name))
    out += _distribution(feats, getattr(manifest, "input_statistics", None), name)
    side = manifest.preprocessing.crop or manifest.preprocessing.resize
    h, w = hw
    if side and min(h, w) < side / 2:
        out.append(_warning("small_input", f"the image is {h}x{w} pixels; the model reads "
                            f"{side}x{side} (at least {side // 2} on the shorter side "
                            "expected)", name))  # fmt: skip
    return out


def _distribution(feats: dict, stats: dict | None, name: str) -> list[dict]:
    if not stats or not isinstance(stats.get("features"), dict):
        return []
    far = []
    for key, rec in stats["features"].items():
        if key not in feats:
            continue
        diff = feats[key] - float(rec["mean"])
        tolerance = max(Z_MAX * float(rec["std"]), FLOORS.get(key, 0.0))
        if diff < -tolerance or (diff > tolerance and key not in LOW_SIDE_ONLY):
            far.append(f"{key} {feats[key]:.3f} (training {float(rec['mean']):.3f} "
                       f"± {tolerance:.3f})")  # fmt: skip
    if not far:
        return []
    return [_warning("intensity_out_of_distribution", "the image's intensities are far from "
                     f"the model's training inputs: {'; '.join(far)}", name)]  # fmt: skip


def volume_warnings(volume: Volume, manifest, name: str | None = None) -> list[dict]:
    """Warnings for a decoded CT ``volume`` (before resampling) sent to ``manifest``'s model."""
    out = []
    v = np.asarray(volume.voxels)
    finite = v[np.isfinite(v)] if not np.isfinite(v).all() else v
    if finite.size:
        sample = finite.ravel()[:: max(1, finite.size // 2_000_000)]
        p1, lo, hi = float(np.percentile(sample, 1)), float(finite.min()), float(finite.max())
        if p1 > HU_AIR_MAX or hi > HU_MAX or (lo >= 0 and hi > 1000):
            out.append(_warning("implausible_hu", "the values do not look like Hounsfield units "
                                f"(1st percentile {p1:.0f}, range {lo:.0f} to {hi:.0f}; air is "
                                "about -1000)", name))  # fmt: skip
    spacing = volume.spacing
    if spacing is None or not volume.meta.get("pixel_spacing_known", True):
        out.append(_warning("missing_spacing", "the series declares no pixel spacing; 1 mm "
                            "was assumed", name))  # fmt: skip
    if spacing is not None and min(spacing) > 0:
        ratio = max(spacing) / min(spacing)
        if ratio > MAX_ANISOTROPY:
            out.append(_warning("anisotropic_spacing", f"voxels are {ratio:.1f} times longer "
                                f"on one side than another (at most {MAX_ANISOTROPY:g})",
                                name))  # fmt: skip
    roi = manifest.inference.get("roi_size") if manifest.inference else None
    if roi and spacing is not None:
        target = manifest.preprocessing.spacing or spacing
        dhw = [round(n * s / t) for n, s, t in zip(v.shape, spacing, target, strict=True)]
        need = list(roi)[::-1]  # roi is (X, Y, Z) = (w, h, d)
        if any(n < r for n, r in zip(dhw, need, strict=True)):
            out.append(_warning("small_input", f"the volume is {dhw} voxels (d, h, w) at the "
                                f"model's spacing, smaller than its window {need}",
                                name))  # fmt: skip
    return out


def refuse(warnings: list[dict], refused: frozenset) -> None:
    """Raise a 422 for the first warning whose code is in ``refused``."""
    from .errors import RequestError

    for w in warnings:
        if w["code"] in refused:
            where = f"{w['file']}: " if w.get("file") else ""
            raise RequestError(422, w["code"], f"{where}{w['detail']} (refused by this "
                               "deployment's ANATOMIX_REFUSE_WARNINGS)")  # fmt: skip
