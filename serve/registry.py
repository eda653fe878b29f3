"""The models a server holds: every export under ``ANATOMIX_MODELS`` (default ``./exports``),
loaded by its manifest, each behind its own :class:`~serve.batching.Batcher`.

Endpoints ask for a model by role (``cxr_classify``, ``embed``, ``correspond``, ``ct_segment``)
or by id (the export's manifest name); which roles an export fills its manifest says
(``serves``), so nothing about a model family is known here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.manifest import MANIFEST_NAME, Manifest, ManifestError
from export.runtime import Runtime, load

from .batching import Batcher
from .errors import RequestError

log = logging.getLogger("anatomix.serve")

#: a model call cheaper than this per image (ms) is "light": see :func:`_load`
LIGHT_MODEL_MS = 25.0  # the tiny demo: ~3 ms; Swin-B at 224 px: ~250 ms
#: modalities each input kind accepts unless the client overrides the check
MODALITIES = {"radiograph": ("CR", "DX", "DR", "RG", "OT"), "ct": ("CT",)}


@dataclass
class LoadedModel:
    """An export ready to serve."""

    id: str
    manifest: Manifest
    runtime: Runtime
    batcher: Batcher

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Batched through the shared batcher (results do not depend on batch-mates)."""
        return self.batcher(x)

    def describe(self) -> dict:
        d = self.manifest.to_dict()
        d.pop("config", None)  # the training config is for reproduction, not for clients
        return {"id": self.id, "backend": self.runtime.backend} | d


def _call_ms(rt: Runtime) -> float | None:
    """Milliseconds of a batch-1 call (best of three after one that allocates), or None for an
    input with dynamic non-batch axes (a CT volume: no single size to time)."""
    dims = rt.manifest.inputs[0].shape[1:]
    if not all(isinstance(n, int) for n in dims):
        return None
    x = np.zeros((1, *dims), np.float32)
    rt.predict(x)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        rt.predict(x)
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def _load(d: Path, settings) -> Runtime:
    """An export's runtime for this server.

    ONNX Runtime's idle threads sleep unless ``ANATOMIX_ORT_SPINNING=1``. With
    ``ANATOMIX_THREADS`` unset, a light model on the CPU (one image under
    :data:`LIGHT_MODEL_MS`, e.g. the tiny demo's ~3 ms) gets one intra-op thread: its requests
    are decode-bound (a 7 MB film costs ~15 ms of decoding), a second model thread has nothing
    to speed up, and its wake-ups take CPU from the decoding processes (bench/RESULTS.md,
    "Serving core, second part"). Heavier models keep ONNX Runtime's default, all cores.
    """
    kw = {"backend": settings.runtime, "spinning": settings.ort_spinning}
    rt = load(d, threads=settings.threads, **kw)
    if settings.threads is not None or rt.backend != "ort-cpu":
        return rt
    ms = _call_ms(rt)
    if ms is not None and ms < LIGHT_MODEL_MS:
        log.info("%s: %.1f ms per image, a light model: one ONNX Runtime thread", d.name, ms)
        rt = load(d, threads=1, **kw)
    return rt


class ModelRegistry:
    """Exports found under a directory."""

    def __init__(self, models: list[LoadedModel], root: Path, problems: dict[str, str]):
        self.models, self.root, self.problems = models, root, problems

    @classmethod
    def from_settings(cls, settings) -> ModelRegistry:
        """Load every ``*/manifest.json`` under ``settings.models`` with its runtime backend,
        threads and batching; broken exports are reported, skipped."""
        root = Path(settings.models)
        models, problems = [], {}
        dirs = sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}")) if root.is_dir() else []
        for d in dirs:
            try:
                rt = _load(d, settings)
            except (ManifestError, ValueError, OSError) as exc:
                problems[d.name] = str(exc)
                log.error("export %s not loaded: %s", d.name, exc)
                continue
            max_batch = min(settings.max_batch or rt.max_batch, rt.max_batch)
            batcher = Batcher(rt.predict, max_batch, settings.max_latency_ms)
            models.append(LoadedModel(rt.manifest.name or d.name, rt.manifest, rt, batcher))
            log.info("loaded %s (%s/%s) on %s", d.name, rt.manifest.family, rt.manifest.task,
                     rt.backend)  # fmt: skip
        return cls(models, root, problems)

    def not_ready(self) -> str | None:
        """Why this registry cannot serve (None when at least one model is loaded). Names no
        server path: ``/readyz`` answers unauthenticated clients."""
        if self.models:
            return None
        if self.problems:
            return (f"no model is loaded: all {len(self.problems)} export(s) under "
                    "ANATOMIX_MODELS failed to load (the server log names each)")  # fmt: skip
        return "no model is loaded: ANATOMIX_MODELS holds no export (*/manifest.json)"

    def get(self, role: str, model_id: str | None = None) -> LoadedModel:
        """The model for ``role`` (or the one named ``model_id``, if it can serve the role).

        Which roles an export fills, and how much it is preferred for each, its manifest says
        (``serves``, written at export from the family descriptor); ties go to the id."""
        fits = [m for m in self.models if role in m.manifest.serves]
        fits.sort(key=lambda m: (m.manifest.serves[role], m.id))
        if model_id is not None:
            named = [m for m in self.models if m.id == model_id]
            if not named:
                raise RequestError(404, "unknown_model", f"no model {model_id!r} is loaded")
            if named[0] not in fits:
                raise RequestError(
                    422, "wrong_model", f"model {model_id!r} cannot serve {role.replace('_', ' ')}"
                )
            return named[0]
        if not fits:
            raise RequestError(
                503, "no_model",
                f"no loaded model serves {role.replace('_', ' ')}; export one into {self.root}",
            )  # fmt: skip
        return fits[0]
