"""The anatomix REST service (BentoML): DICOM in, findings / masks / embeddings out.

``bentoml serve serve.service:AnatomixService`` (or ``make serve``). Models are the exports under
``ANATOMIX_MODELS`` (default ``./exports``), each described by its manifest; see
:mod:`serve.registry`. Every client mistake is a 4xx with ``{"error": code, "detail": text}``
(:mod:`serve.inputs`); optional API keys (``ANATOMIX_API_KEYS``, comma separated) guard ``/v1``
while the health and metrics endpoints stay open. Logs name requests, never patients.
"""

from __future__ import annotations

import hmac
import importlib.metadata
import io
import logging
import os
import re
import threading
from pathlib import Path

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imaging.preprocess import (
    crop_geometry,
    prepare_radiograph,
    prepare_volume,
    radiograph_to_unit,
)

from .inputs import (
    Limits,
    RequestError,
    Upload,
    check_modality,
    decode_image,
    decode_series,
    expand_uploads,
)
from .registry import MODALITIES, LoadedModel, ModelRegistry
from .sliding import sliding_window
from .timing import StageTimer

log = logging.getLogger("anatomix.serve")
OPEN_PATHS = ("/healthz", "/readyz", "/livez", "/metrics", "/docs", "/docs.json", "/")


def api_keys() -> list[bytes]:
    """Keys from ``ANATOMIX_API_KEYS`` (comma separated); empty = no authentication."""
    return [k.strip().encode() for k in os.environ.get("ANATOMIX_API_KEYS", "").split(",") if k]


class GuardMiddleware(BaseHTTPMiddleware):
    """API keys (constant-time comparison) and the declared upload size, before any parsing."""

    async def dispatch(self, request, call_next):
        path = request.url.path
        if path.startswith("/v1"):
            keys = api_keys()
            if keys:
                given = request.headers.get("x-api-key", "")
                auth = request.headers.get("authorization", "")
                if auth.lower().startswith("bearer "):
                    given = auth[7:].strip()
                # compare with every key, so the time taken says nothing about which was close
                ok = False
                for key in keys:
                    ok |= hmac.compare_digest(given.encode(), key)
                if not ok:
                    body = {"error": "unauthorized", "detail": "a valid API key is required "
                            "(header X-API-Key or Authorization: Bearer)"}  # fmt: skip
                    return JSONResponse(body, status_code=401)
            limit = Limits.from_env().max_upload_bytes
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit + (1 << 20):
                body = {"error": "upload_too_large",
                        "detail": f"the request is larger than {limit >> 20} MiB"}  # fmt: skip
                return JSONResponse(body, status_code=413)
        return await call_next(request)


def _uploads(files: list[Path], limits: Limits) -> list[Upload]:
    out = []
    for p in files:
        # BentoML stores an upload as tmp<8 random chars><the client's file name>
        name = re.sub(r"^tmp[a-z0-9_]{8}", "", Path(p).name)[-80:] or "upload"
        out.append(Upload(name, Path(p).read_bytes()))
    return expand_uploads(out, limits)


def _fail(ctx: bentoml.Context, exc: RequestError) -> dict:
    ctx.response.status_code = exc.status
    log.info("request refused: %s (%s)", exc.code, exc.status)
    return exc.body()


def _radiographs(model: LoadedModel, uploads, limits, any_modality: bool, timer: StageTimer):
    """Decode, check and preprocess radiographs for ``model`` → (batch, images)."""
    images, units = [], []
    with timer.stage("decode"):
        for u in uploads:
            img = decode_image(u, limits)
            check_modality(img, MODALITIES["radiograph"], u.name, any_modality)
            images.append((u.name, img))
            units.append(radiograph_to_unit(img))
    with timer.stage("preprocess"):
        return preprocessor(model)(units), images


def _run_radiographs(registry, role, files, limits, any_modality, model_id, timer, pair=False):
    """The shared body of the radiograph endpoints: pick the model, decode and preprocess the
    uploads (exactly two with ``pair``), run the model → ``(model, images, outputs)``.
    Raises :class:`RequestError`."""
    m = registry.get(role, model_id)
    with timer.stage("decode"):
        uploads = _uploads(files, limits)
    if pair and len(uploads) != 2:
        raise RequestError(400, "need_two_images", "send exactly two radiographs")
    x, images = _radiographs(m, uploads, limits, any_modality, timer)
    with timer.stage("infer"):
        out = m.predict(x)
    return m, images, out


def _answer(ctx: bentoml.Context, timer: StageTimer) -> None:
    ctx.response.headers["Server-Timing"] = timer.header()


_preprocessors: dict[str, object] = {}
_preprocessors_lock = threading.Lock()


def preprocessor(model: LoadedModel):
    """The model's preprocessing as ``list[(H, W) in [0, 1]] -> (N, C, S, S)``: a DALI pipeline
    (GPU when there is one, CPU otherwise) built from the manifest, or imaging's NumPy reference
    with ``ANATOMIX_PREPROCESS=numpy`` or where DALI is not installed."""
    with _preprocessors_lock:  # concurrent first requests must not build two pipelines
        if model.id not in _preprocessors:
            _preprocessors[model.id] = _build_preprocessor(model)
        return _preprocessors[model.id]


def _build_preprocessor(model: LoadedModel):
    pre = model.manifest.preprocessing
    if os.environ.get("ANATOMIX_PREPROCESS", "dali") == "dali":
        try:
            from .preprocess import DaliPreprocessor

            return DaliPreprocessor(pre, max_batch=max(8, model.runtime.max_batch))
        except ImportError:
            log.warning("DALI is not installed: preprocessing with NumPy")

    def numpy_reference(items):
        return np.stack([prepare_radiograph(x, pre)[0] for x in items])

    return numpy_reference


def _parse_points(text: str | None) -> np.ndarray | None:
    """``"row,col;row,col"`` → ``(N, 2)``; None when not given."""
    if text is None or not text.strip():
        return None
    try:
        pts = [[float(v) for v in item.split(",")] for item in text.split(";") if item.strip()]
        arr = np.asarray(pts, dtype=np.float64)
    except ValueError:
        arr = np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] != 2 or not len(arr) or not np.isfinite(arr).all():
        raise RequestError(400, "bad_points", "points must look like 'row,col;row,col'")
    if len(arr) > 1000:
        raise RequestError(413, "too_many_points", "at most 1000 query points per request")
    return arr


def _ids(img) -> dict:
    return {"study_uid": img.study_uid, "series_uid": img.series_uid, "sop_uid": img.sop_uid}


_registry: ModelRegistry | None = None


def _extra_routes() -> Starlette:
    """Routes BentoML's typed APIs cannot express: ``GET /v1/models`` and the binary
    ``POST /v1/ct/segment.dcm``. Mounted under ``/v1``; the typed APIs take precedence."""

    async def segment_dcm(request):  # defined below the service class
        return await _segment_dcm(request)

    async def models(request):
        reg = _registry or ModelRegistry([], Path("."), {})
        return JSONResponse(
            {"models": [m.describe() for m in reg.models], "not_loaded": reg.problems}
        )

    return Starlette(
        routes=[
            Route("/models", models, methods=["GET"]),
            Route("/ct/segment.dcm", segment_dcm, methods=["POST"]),
        ]
    )


#: concurrent requests handled at once (BentoML runs sync APIs on 1 thread unless told otherwise,
#: which would leave the batcher nothing to batch); each decodes its own upload
API_THREADS = int(os.environ.get("ANATOMIX_API_THREADS", "8"))


@bentoml.asgi_app(_extra_routes(), path="/v1")
@bentoml.service(traffic={"timeout": 300}, threads=API_THREADS)
class AnatomixService:
    """DICOM in, predictions out (see the module docstring)."""

    def __init__(self) -> None:
        global _registry
        self.limits = Limits.from_env()
        self.registry = ModelRegistry.from_dir()
        _registry = self.registry
        log.info("anatomix: %d model(s) loaded from %s", len(self.registry.models),
                 self.registry.root)  # fmt: skip

    @bentoml.api(route="/v1/cxr/classify")
    def classify(
        self,
        files: list[Path],
        allow_any_modality: bool = False,
        model: str | None = None,
        ctx: bentoml.Context = None,
    ) -> dict:
        """Chest radiographs (DICOM files or a zip of them) → probability per finding."""
        timer = StageTimer()
        try:
            m, images, out = _run_radiographs(
                self.registry, "cxr_classify", files, self.limits, allow_any_modality, model, timer
            )
        except RequestError as exc:
            return _fail(ctx, exc)
        _answer(ctx, timer)
        results = []
        for i, (name, img) in enumerate(images):
            findings = {}
            for o in m.manifest.outputs:
                if o.meaning == "probabilities":
                    probs = out[o.name][i]
                    labels = o.labels or [str(k) for k in range(len(probs))]
                    findings[o.head or o.name] = {
                        lab: round(float(p), 6) for lab, p in zip(labels, probs, strict=True)
                    }
            results.append({"file": name, **_ids(img), "findings": findings})
        return {"model": m.id, "label_sets": list(results[0]["findings"]), "results": results}

    @bentoml.api(route="/v1/embed")
    def embed(
        self,
        files: list[Path],
        allow_any_modality: bool = False,
        model: str | None = None,
        ctx: bentoml.Context = None,
    ) -> dict:
        """Radiographs → one embedding vector each (for retrieval)."""
        timer = StageTimer()
        try:
            m, images, out = _run_radiographs(
                self.registry, "embed", files, self.limits, allow_any_modality, model, timer
            )
        except RequestError as exc:
            return _fail(ctx, exc)
        _answer(ctx, timer)
        emb = out["embedding"]
        return {
            "model": m.id,
            "dim": int(emb.shape[1]),
            "results": [
                {"file": name, **_ids(img), "embedding": [float(v) for v in emb[i]]}
                for i, (name, img) in enumerate(images)
            ],
        }

    @bentoml.api(route="/v1/cxr/correspond")
    def correspond(
        self,
        image_a: Path,
        image_b: Path,
        points: str | None = None,
        allow_any_modality: bool = False,
        model: str | None = None,
        ctx: bentoml.Context = None,
    ) -> dict:
        """Two radiographs → for each query point of A (``"row,col;row,col"`` in A's pixels; a
        5 × 5 grid over A's model crop by default), the corresponding point of B (the centre of
        the most similar PEAC token cell) and its cosine similarity."""
        timer = StageTimer()
        try:
            query = _parse_points(points)
            m, images, out = _run_radiographs(
                self.registry, "correspond", [image_a, image_b], self.limits,
                allow_any_modality, model, timer, pair=True,
            )  # fmt: skip
        except RequestError as exc:
            return _fail(ctx, exc)
        _answer(ctx, timer)
        tokens = out["tokens"]  # 2, g, g, C
        pre = m.manifest.preprocessing
        geo = [crop_geometry(img.pixels.shape[-2:], pre) for _, img in images]
        g = tokens.shape[1]
        cell = geo[0].size / g
        if query is None:
            ticks = (np.arange(5) + 0.5) * geo[0].size / 5 - 0.5
            grid = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
            query = geo[0].to_original(grid)
        z = tokens.reshape(2, g * g, -1).astype(np.float64)
        z /= np.linalg.norm(z, axis=-1, keepdims=True) + 1e-12
        sim = z[0] @ z[1].T
        cells = np.floor(geo[0].to_model(query) / cell)
        inside = np.all((cells >= 0) & (cells < g), axis=1)
        cells = np.clip(cells, 0, g - 1).astype(np.int64)
        flat = cells[:, 0] * g + cells[:, 1]
        best = sim[flat].argmax(axis=1)
        centre = (np.stack([best // g, best % g], axis=1) + 0.5) * cell - 0.5
        found = geo[1].to_original(centre)
        matches = []
        for i, p in enumerate(query):
            ok = bool(inside[i])
            matches.append({
                "a": [float(p[0]), float(p[1])],
                "b": [float(v) for v in found[i]] if ok else None,
                "similarity": float(sim[flat[i], best[i]]) if ok else None,
            })  # fmt: skip
        return {
            "model": m.id,
            "grid": int(g),
            "images": [{"file": name, **_ids(img)} for name, img in images],
            "matches": matches,
        }

    @bentoml.api(route="/v1/ct/segment")
    def segment(
        self,
        files: list[Path],
        allow_any_modality: bool = False,
        model: str | None = None,
        ctx: bentoml.Context = None,
    ) -> dict:
        """A CT series (DICOM slices or one zip) → per label: voxels, volume (mL), bounding box.
        ``POST /v1/ct/segment.dcm`` returns the masks as a DICOM SEG object instead."""
        timer = StageTimer()
        try:
            with timer.stage("decode"):
                uploads = _uploads(files, self.limits)
            m, volume, masks, labels, threshold = segment_series(
                self.registry, uploads, self.limits, allow_any_modality, model, timer
            )
        except RequestError as exc:
            return _fail(ctx, exc)
        _answer(ctx, timer)
        pre = m.manifest.preprocessing
        spacing = pre.spacing or volume.spacing  # (d, h, w) mm
        voxel_ml = float(np.prod(spacing)) / 1000.0
        result = {}
        for label, mask in zip(labels, masks, strict=True):
            n = int(mask.sum())
            box = None
            if n:
                idx = np.argwhere(mask)
                box = {"min": idx.min(0).tolist(), "max": idx.max(0).tolist()}
            result[label] = {"voxels": n, "volume_ml": round(n * voxel_ml, 3), "bbox_dhw": box}
        return {
            "model": m.id,
            "series_uid": volume.series_uid,
            "study_uid": volume.study_uid,
            "shape_dhw": list(volume.voxels.shape),
            "spacing_mm": [float(s) for s in spacing],
            "threshold": threshold,
            "labels": result,
        }


def segment_series(
    registry: ModelRegistry, uploads, limits, any_modality: bool, model_id, timer=None
):
    """Decode a series and segment it whole → ``(model, volume, masks (L, D, H, W) bool, labels,
    threshold)``; masks are on the model's grid (the series' own unless the manifest resamples)."""
    timer = timer or StageTimer()
    m = registry.get("ct_segment", model_id)
    with timer.stage("decode"):
        volume = decode_series(uploads, limits)
    if not any_modality and volume.modality and volume.modality != "CT":
        raise RequestError(
            422, "wrong_modality",
            f"modality {volume.modality} is not CT; send allow_any_modality=true to run it anyway",
        )  # fmt: skip
    pre = m.manifest.preprocessing
    with timer.stage("preprocess"):
        x = prepare_volume(volume, pre)  # (1, X, Y, Z)
    inf = m.manifest.inference
    out_name = m.manifest.outputs[0].name
    with timer.stage("infer"):
        probs = sliding_window(
            x, inf.get("roi_size", x.shape[1:]), lambda b: m.predict(b)[out_name],
            overlap=float(inf.get("overlap", 0.5)), batch=m.runtime.max_batch,
        )  # fmt: skip
    threshold = float(inf.get("threshold", 0.5))
    labels = m.manifest.outputs[0].labels or [f"class_{k}" for k in range(len(probs))]
    masks = (probs >= threshold).transpose(0, 3, 2, 1)  # (L, X, Y, Z) → (L, D, H, W)
    return m, volume, masks, labels, threshold


async def _segment_dcm(request):
    """``POST /v1/ct/segment.dcm``: like ``/v1/ct/segment``, answered with a DICOM SEG."""
    from starlette.concurrency import run_in_threadpool

    limits = Limits.from_env()
    try:
        form = await request.form(max_files=limits.max_files, max_fields=16)
    except Exception:  # noqa: BLE001 - malformed multipart is the client's error
        return JSONResponse({"error": "bad_form", "detail": "expected multipart/form-data with "
                             "one or more 'files' parts"}, status_code=400)  # fmt: skip
    try:
        files = [
            Upload(getattr(f, "filename", None) or "upload", await f.read())
            for f in form.getlist("files") if hasattr(f, "read")
        ]  # fmt: skip
        any_modality = str(form.get("allow_any_modality", "false")).lower() in ("1", "true", "yes")
        model_id = form.get("model") or None
        body = await run_in_threadpool(_seg_sync, files, limits, any_modality, model_id)
    except RequestError as exc:
        log.info("request refused: %s (%s)", exc.code, exc.status)
        return JSONResponse(exc.body(), status_code=exc.status)
    return Response(body, media_type="application/dicom",
                    headers={"Content-Disposition": 'attachment; filename="seg.dcm"'})  # fmt: skip


def _seg_sync(files, limits, any_modality, model_id) -> bytes:
    import pydicom

    from .seg import seg_bytes

    uploads = expand_uploads(files, limits)
    m, volume, masks, labels, _ = segment_series(_registry, uploads, limits, any_modality, model_id)
    if m.manifest.preprocessing.spacing is not None:
        raise RequestError(422, "seg_not_on_source_grid", "this model resamples the series; "
                           "its masks cannot be stored against the source slices")  # fmt: skip
    by_uid = {}
    try:
        for u in uploads:
            ds = pydicom.dcmread(io.BytesIO(u.data), force=True)
            by_uid[str(ds.SOPInstanceUID)] = ds
        sources = [by_uid[uid] for uid in volume.meta["sop_uids"]]
    except Exception:  # noqa: BLE001 - decoded above, so this is an unusual file layout
        raise RequestError(
            422, "seg_not_possible", "the series cannot be referenced slice by slice (each CT "
            "instance needs its own SOPInstanceUID and one frame)",
        ) from None  # fmt: skip
    try:
        version = importlib.metadata.version("anatomix")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    try:
        return seg_bytes(sources, masks, labels, model_id=m.id, version=version)
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom refuses the sources
        raise RequestError(
            422, "seg_not_possible", f"no DICOM SEG for this series: {exc}"
        ) from None


AnatomixService.add_asgi_middleware(GuardMiddleware)
