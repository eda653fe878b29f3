"""A CT volume → masks with an exported segmentation model: the one path the server
(``/v1/ct/segment``, ``/v1/ct/segment.dcm``) and ``python -m export.evaluate`` both run, so the
Dice ``export.evaluate`` reports is the Dice of the server's answers. Imports no torch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from imaging.image import Volume
from imaging.preprocess import prepare_volume
from imaging.sliding import WindowSpec, sliding_window

from .manifest import Manifest

#: windows per model call: small, so the server's radiograph requests wait at most one call
WINDOWS_PER_CALL = 2


def window_spec(manifest: Manifest, shape: tuple[int, ...]) -> WindowSpec:
    """The manifest's sliding window; a model without a recorded roi runs on the whole
    ``shape``."""
    return WindowSpec.from_inference(manifest.inference, shape)


def segment_volume(
    volume: Volume,
    manifest: Manifest,
    predict: Callable[[np.ndarray], dict[str, np.ndarray]],
    *,
    stage: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> tuple[np.ndarray, float]:
    """Preprocess ``volume`` as the manifest says, stitch the model's probabilities over
    sliding windows and threshold them.

    Args:
        volume: a ``(D, H, W)`` HU volume.
        manifest: the export's manifest (preprocessing, ``inference`` section, outputs).
        predict: a runtime's ``predict`` (``(B, C, *roi)`` → ``{output name: array}``).
        stage: optional ``stage(name)`` context manager timing ``"preprocess"`` and ``"infer"``.

    Returns:
        ``(masks (L, D, H, W) bool, threshold)``; masks are on the model's grid (the volume's
        own unless the manifest resamples).
    """
    stage = stage or (lambda name: contextlib.nullcontext())
    with stage("preprocess"):
        x = prepare_volume(volume, manifest.preprocessing)  # (1, X, Y, Z)
    out_name = manifest.outputs[0].name
    with stage("infer"):
        probs = sliding_window(
            x,
            window_spec(manifest, x.shape[1:]),
            lambda windows: predict(windows)[out_name],
            batch=WINDOWS_PER_CALL,
        )
    threshold = float(manifest.inference.get("threshold", 0.5))
    return (probs >= threshold).transpose(0, 3, 2, 1), threshold  # (L, X, Y, Z) → (L, D, H, W)
