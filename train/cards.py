"""Inference cards: what a trained model needs at inference, recorded in ``model.safetensors``.

A card is a small JSON dict written into the weights file's metadata (key ``inference``) by the
engine at every best-model save: the task, the preprocessing description (the
:class:`imaging.preprocess.Preprocessing` the model was trained with), label names and output
activation per head, and, for 3D models, the cube size. ``export`` reads it, so an export never
has to import ``train`` or guess.
"""

from __future__ import annotations

from dataclasses import replace

from imaging.preprocess import Preprocessing, ark_cxr, genesis_ct, peac_cxr


def card(
    task: str,
    preprocessing: Preprocessing,
    *,
    labels: dict[str, list[str]] | None = None,
    activations: dict[str, str] | None = None,
    **extra,
) -> dict:
    """A JSON-serialisable inference card (see the module docstring)."""
    out = {"task": task, "preprocessing": preprocessing.to_dict()}
    if labels:
        out["labels"] = {k: [str(v) for v in names] for k, names in labels.items()}
    if activations:
        out["activations"] = dict(activations)
    return out | extra


def genesis_card(
    task: str,
    cube_size,
    *,
    labels=None,
    threshold: float | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    batch_norm: str | None = None,
) -> dict:
    """Models Genesis: HU clip [-1000, 1000] → [0, 1], cubes ``(X, Y, Z)`` of ``cube_size``;
    segmentation also records how evaluation stitched whole volumes (sliding-window overlap and
    blend, :mod:`imaging.sliding`) and normalised them (``batch_norm``), so an export serves
    volumes exactly as ``evaluate`` scored them."""
    extra = {"roi_size": [int(s) for s in cube_size]}
    optional = {"threshold": threshold, "overlap": overlap, "blend": blend}
    extra |= {k: v for k, v in optional.items() if v is not None}
    if batch_norm is not None:
        extra["batch_norm"] = batch_norm
    return card(task, genesis_ct(), labels=labels, **extra)


def ark_card(size: int, sources, *, stats=None) -> dict:
    """Ark / 2D transfer: one entry per head, named after its dataset; multi-class heads are
    scored with softmax, multi-label heads with sigmoid. ``stats`` ``(mean, std)`` replaces
    ImageNet's normalisation (a PEAC-initialised transfer keeps PEAC's)."""
    labels = {s.name: list(s.label_names) for s in sources}
    acts = {s.name: "softmax" if s.task == "multiclass" else "sigmoid" for s in sources}
    pre = ark_cxr(int(size))
    if stats is not None:
        pre = replace(pre, mean=tuple(stats[0]), std=tuple(stats[1]))
    return card("classify", pre, labels=labels, activations=acts)


def peac_card(img_size: int) -> dict:
    """PEAC: token map and embedding for correspondence and retrieval."""
    return card("correspond", peac_cxr(int(img_size)))
