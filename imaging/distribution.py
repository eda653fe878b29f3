"""Intensity features of a radiograph's ``[0, 1]`` unit image, and their spread over the
phantom films the demo models are trained on (recorded at export, compared at serving by
:mod:`serve.guard`).

The features are computed on a 128 × 128 downsample after trimming uniform bright border strips
(collimator shutters: real films often have them, phantoms do not), then on a 64 × 64 grid:

* ``mean`` and ``std`` of the unit image;
* ``centre_contrast``: the mean of the central column band (spine and mediastinum, columns
  26-37 of 64, rows 16-47) minus the mean of the two lateral bands (the lung fields, columns
  8-21 and 42-55). A frontal chest film is clearly positive (phantoms ≈ 0.15-0.18, pydicom-data's
  RG1 0.17); an inverted film is as clearly negative (≈ −0.19); a lateral film is near 0, since
  its spine sits at one side. Mean and std cannot see inversion (an inverted phantom has the
  phantom's std and RG1's mean); this feature can.
"""

from __future__ import annotations

import numpy as np

FEATURES = ("mean", "std", "centre_contrast")
#: unit images at least this bright and this flat along a whole border line are collimation
_BORDER_BRIGHT, _BORDER_FLAT = 0.85, 0.05


def _trim_borders(s: np.ndarray) -> np.ndarray:
    r0, r1, c0, c1 = 0, s.shape[0], 0, s.shape[1]

    def uniform(v: np.ndarray) -> bool:
        return bool(v.mean() > _BORDER_BRIGHT and v.std() < _BORDER_FLAT)

    changed = True
    while changed and r1 - r0 > 16 and c1 - c0 > 16:
        changed = False
        for side in range(4):
            line = (s[r0, c0:c1], s[r1 - 1, c0:c1], s[r0:r1, c0], s[r0:r1, c1 - 1])[side]
            if uniform(line):
                r0, r1, c0, c1 = (
                    (r0 + 1, r1, c0, c1),
                    (r0, r1 - 1, c0, c1),
                    (r0, r1, c0 + 1, c1),
                    (r0, r1, c0, c1 - 1),
                )[side]
                changed = True
    return s[r0:r1, c0:c1]


def unit_features(unit: np.ndarray) -> dict[str, float]:
    """The features of a ``(H, W)`` unit image (higher = denser; see the module docstring)."""
    from .preprocess import resize_bilinear

    # NaN → 0 after the downsample, not before: one pass over 128² instead of a full-size film
    small = np.nan_to_num(resize_bilinear(unit, (128, 128)), nan=0.0, posinf=1.0, neginf=0.0)
    s = _trim_borders(small.astype(np.float64))
    s = resize_bilinear(s.astype(np.float32), (64, 64)).astype(np.float64)
    rows = s[16:48]
    sides = np.concatenate([rows[:, 8:22], rows[:, 42:56]], axis=1)
    return {
        "mean": float(s.mean()),
        "std": float(s.std()),
        "centre_contrast": float(rows[:, 26:38].mean() - sides.mean()),
    }


def phantom_statistics(n: int = 8, seed: int = 0) -> dict:
    """Mean and std of each feature over ``n`` phantom PA films (the demo models' training
    family), as a manifest's ``input_statistics``."""
    from .phantoms import make_chest_ct, make_radiograph

    rows = []
    for i in range(n):
        ct = make_chest_ct(20_000 + seed + i, shape=(40, 96, 96), findings=("nodule",))
        rows.append(unit_features(make_radiograph(ct, size=(160, 140)).pixels))
    return {
        "source": f"{n} synthetic phantom PA radiographs",
        "n": n,
        "features": {
            k: {
                "mean": round(float(np.mean([r[k] for r in rows])), 6),
                "std": round(float(np.std([r[k] for r in rows])), 6),
            }
            for k in FEATURES
        },
    }
