"""The anatomix HTTP API: plain Starlette routes, so the service owns its request boundary.

Every ``/v1`` request goes through one path (:func:`_handle`): API key → lane admission (503
``busy`` when full) → the body read as a stream under the limits (:mod:`serve.forms`) → decoding
in a killable, memory-capped process (:mod:`serve.decoder`) → the model → JSON. Client mistakes
are a 4xx ``{"error", "detail"}``; a request whose client went away stops its work; its budget
ends in a 504 ``timeout`` and the work really stops. ``/metrics`` uses route templates only.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from export.segmentation import segment_volume
from imaging.preprocess import crop_geometry, prepare_radiograph

from .errors import Cancelled, RequestError
from .forms import FormSpec, read_form
from .guard import radiograph_warnings, refuse, volume_warnings
from .lanes import Lane
from .privacy import checked_modality, checked_uid
from .registry import MODALITIES, LoadedModel
from .timing import StageTimer

log = logging.getLogger("anatomix.serve")

#: the ``allow_any_modality`` / ``model`` text fields every endpoint takes
COMMON_FIELDS = {"allow_any_modality": 16, "model": 256}
#: CT uploads may name the series to segment (a study zip holding several)
SERIES_FIELDS = {**COMMON_FIELDS, "series_uid": 80}


@dataclass
class Budget:
    """A request's deadline and cancellation, checked between the steps of its work."""

    deadline: float
    cancelled: threading.Event
    seconds: float

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        if self.left() <= 0:
            self.cancelled.set()  # anything still running for this request stops too
            raise RequestError(
                504, "timeout", f"the request took longer than its {self.seconds:.0f} s budget "
                "and was stopped",
            )  # fmt: skip


class State:
    """What the routes need; set once the BentoML service has loaded (see :mod:`serve.service`)."""

    def __init__(self, *, limits, keys, registry, decoders, lanes, budgets, metrics, spool, gate,
                 metrics_public: bool, preprocess: str = "auto",
                 refuse: frozenset = frozenset(), ct_selection: dict | None = None):  # fmt: skip
        self.limits, self.keys, self.registry = limits, keys, registry
        self.decoders: dict = decoders  # lane name → DecoderPool
        self.lanes: dict[str, Lane] = lanes
        self.budgets: dict[str, float] = budgets  # lane name → seconds per request
        self.metrics, self.spool, self.gate = metrics, spool, gate
        self.metrics_public, self.preprocess = metrics_public, preprocess
        self.refuse = frozenset(refuse)  # serve.guard warning codes answered with a 422
        self.ct_selection = ct_selection  # series selection rules (None: the shipped ones)
        self.gateway = None  # the PACS side (serve.pacs.gateway.Gateway), set by the service
        from .view import ViewStore

        self.views = ViewStore()  # segmented studies the viewer page is looking at


STATE: State | None = None


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _flag(form, name: str) -> bool:
    value = form.fields.get(name, "false").strip().lower()
    if value not in ("1", "true", "yes", "0", "false", "no", ""):
        raise RequestError(400, "bad_field", f"{name} must be true or false")
    return value in ("1", "true", "yes")


def _model_id(form) -> str | None:
    return form.fields.get("model", "").strip() or None


async def _watch_disconnect(request: Request, cancelled: threading.Event) -> None:
    """Set ``cancelled`` when the client goes away (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancelled.set()
            return


async def _handle(request: Request, lane: str, spec: FormSpec, work: Callable) -> Response:
    """The one path of every ``POST /v1`` endpoint (see the module docstring)."""
    st = STATE
    if st is None:
        return _error(RequestError(503, "starting", "the service is starting; retry shortly",
                                   {"Retry-After": "5"}))  # fmt: skip
    if not st.keys.check(request.headers):
        return _unauthorized()
    cancelled = threading.Event()
    seconds = st.budgets[lane]
    form = watcher = None
    timer, queued = StageTimer(), time.perf_counter()
    try:
        async with st.lanes[lane].slot():
            timer.ms["queue"] = (time.perf_counter() - queued) * 1000.0
            form = await read_form(
                request.receive, request.headers, spec, st.limits, st.spool, cancelled=cancelled
            )
            # the budget covers the work; waiting for a slot and the upload have their own bounds
            budget = Budget(time.monotonic() + seconds, cancelled, seconds)
            watcher = asyncio.ensure_future(_watch_disconnect(request, cancelled))
            body, media, *extra = await run_in_threadpool(work, st, form, budget, timer)
    except RequestError as exc:
        log.info("request refused: %s (%s)", exc.code, exc.status)
        if st.metrics is not None:
            st.metrics.refuse(_route(request), exc.code)
        return _error(exc)
    except Cancelled:
        log.info("request cancelled: the client went away")
        return Response(status_code=499)
    finally:
        cancelled.set()  # stops any work still running for this request
        if watcher is not None:
            watcher.cancel()
        if form is not None:
            form.close()
        if st.metrics is not None:
            st.metrics.stages(_route(request), timer.ms)
    headers = {"Server-Timing": timer.header(), **(extra[0] if extra else {})}
    if media == "application/json":
        return JSONResponse(body, headers=headers)
    if media == "application/dicom":
        headers["Content-Disposition"] = 'attachment; filename="seg.dcm"'
    return Response(body, media_type=media, headers=headers)


def _unauthorized() -> JSONResponse:
    return _error(RequestError(401, "unauthorized", "a valid API key is required (header "
                               "X-API-Key or Authorization: Bearer)"))  # fmt: skip


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


# --- the work of each endpoint (runs in a worker thread) ----------------------------------------


def _uid_fields(img, name: str) -> dict:
    return {
        "study_uid": checked_uid(img.study_uid, f"{name}: StudyInstanceUID"),
        "series_uid": checked_uid(img.series_uid, f"{name}: SeriesInstanceUID"),
        "sop_uid": checked_uid(img.sop_uid, f"{name}: SOPInstanceUID"),
    }


def _check_modality(modality: str, allowed: tuple[str, ...], name: str, override: bool) -> None:
    if override or not allowed:
        return
    valid = checked_modality(modality)
    if valid in allowed:
        return
    got = valid or ("none" if not modality else "(not a valid code string)")
    raise RequestError(
        422, "wrong_modality",
        f"{name}: modality {got} is not one this endpoint takes ({', '.join(allowed)}); "
        "send allow_any_modality=true to run it anyway",
    )  # fmt: skip


def _files(form) -> list[tuple[str, object]]:
    return [(f.filename, f.path) for f in form.files]


def _decode(st: State, role: str, lane: str, form, budget: Budget, timer: StageTimer,
            headers: bool = False, unit: bool = False):  # fmt: skip
    """The model for ``role`` and the form's files decoded by the lane's decoders (images for
    radiographs, one volume for CT) → ``(model, allow_any_modality, decoded)``."""
    m = st.registry.get(role, _model_id(form))
    any_modality = _flag(form, "allow_any_modality")
    if not form.files:
        raise RequestError(400, "no_files", "the request carries no file")
    pool, files = st.decoders[lane], _files(form)
    with timer.stage("decode"):
        if lane == "cxr":  # prepared for the model in the decoding process (NumPy mode)
            pre = m.manifest.preprocessing.to_dict() if _numpy_mode() and not unit else None
            decoded, prepare_ms = pool.radiographs(
                files, pre, timeout=budget.left(), cancelled=budget.cancelled
            )
        else:
            uid = form.fields.get("series_uid", "").strip() or None
            if uid is not None:
                uid = checked_uid(uid, "series_uid")
            decoded, prepare_ms = (
                pool.series(
                    files, timeout=budget.left(), cancelled=budget.cancelled, headers=headers,
                    rules=st.ct_selection, series_uid=uid,
                ),
                0.0,
            )  # fmt: skip
    timer.move("decode", "preprocess", prepare_ms)
    budget.check()
    return m, any_modality, decoded


def _radiographs(st: State, role: str, form, budget: Budget, timer: StageTimer, pair=False):
    """Decode, check, preprocess and run radiographs → ``(model, items, ids, outputs)``: items
    as :meth:`serve.decoder.DecoderPool.radiographs` gives them; each ``ids`` entry holds the
    image's UIDs and its input guard ``warnings``."""
    m, any_modality, items = _decode(st, role, "cxr", form, budget, timer)
    if pair and len(items) != 2:
        raise RequestError(400, "need_two_images", "send exactly two radiographs")
    for name, img, _, _ in items:
        _check_modality(img.modality, MODALITIES["radiograph"], name, any_modality)
    ids = [_uid_fields(img, name) for name, img, _, _ in items]
    allowed = MODALITIES["radiograph"]
    for i, (name, img, feats, hw) in enumerate(items):
        ids[i]["warnings"] = radiograph_warnings(img, feats, hw, m.manifest, name, allowed)
        refuse(ids[i]["warnings"], st.refuse)
    pixels = [img.pixels for _, img, _, _ in items]
    with st.gate.urgent():
        if pixels[0].ndim == 3:  # model inputs already
            x = np.stack(pixels)
        else:  # [0, 1] images for the GPU pipeline
            with timer.stage("preprocess"):
                x = preprocessor(m)(pixels)
        budget.check()
        with timer.stage("infer"):
            out = m.predict(x)
    return m, items, ids, out


def findings(m: LoadedModel, out: dict, i: int) -> dict[str, dict[str, float]]:
    """Item ``i``'s probabilities: label set → {label: probability rounded to 6 decimals}."""
    found = {}
    for o in m.manifest.outputs:
        if o.meaning == "probabilities":
            probs = out[o.name][i]
            labels = o.labels or [str(k) for k in range(len(probs))]
            found[o.head or o.name] = {
                lab: round(float(p), 6) for lab, p in zip(labels, probs, strict=True)
            }
    return found


def classify_work(st: State, form, budget: Budget, timer: StageTimer):
    m, items, ids, out = _radiographs(st, "cxr_classify", form, budget, timer)
    results = [
        {"file": name, **ids[i], "findings": findings(m, out, i)}
        for i, (name, *_) in enumerate(items)
    ]
    body = {"model": m.id, "label_sets": list(results[0]["findings"]), "results": results}
    return body, "application/json"


def embed_work(st: State, form, budget: Budget, timer: StageTimer):
    m, items, ids, out = _radiographs(st, "embed", form, budget, timer)
    emb = out["embedding"]
    results = [
        {"file": name, **ids[i], "embedding": [float(v) for v in emb[i]]}
        for i, (name, *_) in enumerate(items)
    ]
    return {"model": m.id, "dim": int(emb.shape[1]), "results": results}, "application/json"


def parse_points(text: str | None) -> np.ndarray | None:
    """``"row,col;row,col"`` → ``(N, 2)``; None when not given. At most 1,000 points of plain
    decimal numbers (no exponent, at most 32 characters each), so parsing is cheap."""
    if text is None or not text.strip():
        return None
    items = [item for item in text.split(";") if item.strip()]
    if len(items) > 1000:
        raise RequestError(413, "too_many_points", "at most 1000 query points per request")
    bad = RequestError(400, "bad_points", "points must look like 'row,col;row,col' (decimals)")
    pts = []
    for item in items:
        values = item.split(",")
        if len(values) != 2 or any(len(v.strip()) > 32 for v in values):
            raise bad
        try:
            pts.append([float(v) for v in values])
        except ValueError:
            raise bad from None
    arr = np.asarray(pts, dtype=np.float64)
    if not np.isfinite(arr).all() or np.abs(arr).max() > 1e6:
        raise bad
    return arr


def correspond_work(st: State, form, budget: Budget, timer: StageTimer):
    query = parse_points(form.fields.get("points"))
    m, items, ids, out = _radiographs(st, "correspond", form, budget, timer, pair=True)
    tokens = out["tokens"]  # 2, g, g, C
    pre = m.manifest.preprocessing
    geo = [crop_geometry(hw, pre) for _, _, _, hw in items]
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
    body = {
        "model": m.id,
        "grid": int(g),
        "images": [{"file": item[0], **ids[i]} for i, item in enumerate(items)],
        "matches": matches,
    }
    return body, "application/json"


def segment_series(st: State, form, budget: Budget, timer: StageTimer, headers: bool = False):
    """Decode a series and segment it whole → ``(model, volume, masks (L, D, H, W), labels,
    threshold, source headers or None)``; masks are on the model's grid (the series' own unless
    the manifest resamples), and the input guard's warnings. ``headers``: also each file's header,
    for a DICOM SEG."""
    m, any_modality, volume = _decode(st, "ct_segment", "ct", form, budget, timer, headers)
    heads = None
    if headers:
        volume, heads = volume
    _check_modality(volume.modality, MODALITIES["ct"], "the series", any_modality)
    warnings = volume_warnings(volume, m.manifest)
    if MODALITIES["ct"] and volume.modality.strip().upper() not in MODALITIES["ct"]:
        warnings.insert(0, {"code": "unexpected_modality", "detail": "the series is not a CT; "
                            "it was run on request", "file": None})  # fmt: skip
    refuse(warnings, st.refuse)

    def predict(batch):
        st.gate.yield_to_urgent()  # radiograph requests go first
        budget.check()
        return m.predict(batch)

    masks, threshold = segment_volume(volume, m.manifest, predict, stage=timer.stage)
    labels = m.manifest.outputs[0].labels or [f"class_{k}" for k in range(len(masks))]
    return m, volume, masks, labels, threshold, heads, warnings


def _selection(volume) -> dict:
    """Which series of the upload was segmented and why each other one was not; every series
    UID is checked (a 422 for one that is not a UID: nothing else reaches the answer)."""
    sel = volume.meta.get("selection") or {}
    rejected = sel.get("rejected") or {}
    return {
        "chosen": checked_uid(str(sel.get("chosen") or volume.series_uid), "SeriesInstanceUID"),
        "rejected": {checked_uid(str(k), "SeriesInstanceUID"): str(v) for k, v in rejected.items()},
    }


def segment_work(st: State, form, budget: Budget, timer: StageTimer):
    m, volume, masks, labels, threshold, _, warnings = segment_series(st, form, budget, timer)
    return segment_body(m, volume, masks, labels, threshold, warnings), "application/json"


def segment_body(m: LoadedModel, volume, masks, labels, threshold, warnings) -> dict:
    """The ``/v1/ct/segment`` answer of a :func:`segment_series` result."""
    series_uid = checked_uid(volume.series_uid, "SeriesInstanceUID")
    study_uid = checked_uid(volume.study_uid, "StudyInstanceUID")
    spacing = m.manifest.preprocessing.spacing or volume.spacing  # (d, h, w) mm
    voxel_ml = float(np.prod(spacing)) / 1000.0
    result = {}
    for label, mask in zip(labels, masks, strict=True):
        n = int(mask.sum())
        box = None
        if n:
            idx = np.argwhere(mask)
            box = {"min": idx.min(0).tolist(), "max": idx.max(0).tolist()}
        result[label] = {"voxels": n, "volume_ml": round(n * voxel_ml, 3), "bbox_dhw": box}
    body = {
        "model": m.id,
        "series_uid": series_uid,
        "study_uid": study_uid,
        "shape_dhw": list(volume.voxels.shape),
        "spacing_mm": [float(s) for s in spacing],
        "threshold": threshold,
        "labels": result,
        "selection": _selection(volume),
        "warnings": warnings,
    }
    return body


def segment_dcm_work(st: State, form, budget: Budget, timer: StageTimer):
    m, volume, masks, labels, _, heads, warnings = segment_series(
        st, form, budget, timer, headers=True
    )
    budget.check()
    codes = ",".join(dict.fromkeys(w["code"] for w in warnings))
    return (
        seg_result(m, volume, masks, labels, heads),
        "application/dicom",
        {"X-Anatomix-Warnings": codes} if codes else {},
    )


def seg_result(m: LoadedModel, volume, masks, labels, heads, *, uid_root: str | None = None,
               uids_from=()) -> bytes:  # fmt: skip
    """The DICOM SEG of a :func:`segment_series` result, referencing each source slice (a 422
    where the series cannot be referenced slice by slice or the model resamples it)."""
    import pydicom

    from .seg import seg_bytes

    if m.manifest.preprocessing.spacing is not None:
        raise RequestError(422, "seg_not_on_source_grid", "this model resamples the series; "
                           "its masks cannot be stored against the source slices")  # fmt: skip
    try:
        by_uid = {}
        for head in heads:  # headers re-encoded by the decoding process, without pixel data
            ds = pydicom.dcmread(io.BytesIO(head), force=True)
            by_uid[checked_uid(str(ds.get("SOPInstanceUID", "")), "SOPInstanceUID")] = ds
        sources = [by_uid[uid] for uid in volume.meta["sop_uids"]]
    except RequestError:
        raise
    except Exception:  # noqa: BLE001 - decoded above, so this is an unusual file layout
        raise RequestError(
            422, "seg_not_possible", "the series cannot be referenced slice by slice (each CT "
            "instance needs its own SOPInstanceUID and one frame)",
        ) from None  # fmt: skip
    try:
        return seg_bytes(sources, masks, labels, model_id=m.id, version=anatomix_version(),
                         uid_root=uid_root, uids_from=uids_from)  # fmt: skip
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom refuses the sources
        raise RequestError(
            422, "seg_not_possible",
            f"no DICOM SEG for this series ({type(exc).__name__}: highdicom refused the sources)",
        ) from None  # fmt: skip


def anatomix_version() -> str:
    try:
        return importlib.metadata.version("anatomix")
    except importlib.metadata.PackageNotFoundError:
        return "0"


# --- preprocessing -------------------------------------------------------------------------------

_preprocessors: dict[str, object] = {}
_preprocessors_lock = threading.Lock()


def preprocessor(model: LoadedModel):
    """The model's preprocessing as ``list[(H, W) in [0, 1]] -> (N, C, S, S)``: imaging's NumPy
    reference on a CPU (measured 2-6x faster than DALI's CPU pipeline, which also serialises
    requests: bench/RESULTS.md, "Serving"), a DALI GPU pipeline built from the manifest when a GPU
    is visible and DALI installed. ``ANATOMIX_PREPROCESS`` = ``auto`` (default), ``numpy`` or
    ``dali`` (DALI even on a CPU)."""
    with _preprocessors_lock:  # concurrent first requests must not build two pipelines
        if model.id not in _preprocessors:
            _preprocessors[model.id] = _build_preprocessor(model)
        return _preprocessors[model.id]


def _numpy_mode() -> bool:
    """Radiographs are preprocessed with NumPy (in the decoding processes), not DALI."""
    return preprocess_mode(STATE.preprocess if STATE else "auto") == "numpy"


def preprocess_mode(mode: str = "auto") -> str:
    """``numpy`` or ``dali`` for the setting ``mode`` (``auto``, ``numpy``, ``dali``) on this
    machine."""
    if mode != "auto":
        return mode
    try:
        from .preprocess import _cuda_visible, fn

        return "dali" if fn is not None and _cuda_visible() else "numpy"
    except ImportError:
        return "numpy"


def _build_preprocessor(model: LoadedModel):
    pre = model.manifest.preprocessing
    if preprocess_mode(STATE.preprocess if STATE else "auto") == "dali":
        try:
            from .preprocess import DaliPreprocessor

            return DaliPreprocessor(pre, max_batch=max(8, model.runtime.max_batch))
        except ImportError:
            log.warning("DALI is not installed: preprocessing with NumPy")

    def numpy_reference(items):
        return np.stack([prepare_radiograph(x, pre)[0] for x in items])

    return numpy_reference


# --- routes --------------------------------------------------------------------------------------


def _files_spec(limits) -> FormSpec:
    return FormSpec(files={"files": limits.max_files}, fields=dict(COMMON_FIELDS))


def _series_spec(limits) -> FormSpec:
    return FormSpec(files={"files": limits.max_files}, fields=dict(SERIES_FIELDS))


def _pair_spec(limits) -> FormSpec:
    return FormSpec(files={"image_a": 1, "image_b": 1},
                    fields={**COMMON_FIELDS, "points": 64 << 10})  # fmt: skip


def _endpoint(lane: str, spec: Callable, work: Callable):
    async def endpoint(request: Request) -> Response:
        limits = STATE.limits if STATE is not None else None
        return await _handle(request, lane, spec(limits) if limits else None, work)

    return endpoint


async def models_endpoint(request: Request) -> Response:
    st = STATE
    if st is None:
        return _error(RequestError(503, "starting", "the service is starting; retry shortly"))
    if not st.keys.check(request.headers):
        return _unauthorized()
    reg = st.registry
    return JSONResponse({"models": [m.describe() for m in reg.models], "not_loaded": reg.problems})


async def metrics_endpoint(request: Request) -> Response:
    st = STATE
    if st is None:
        return Response(b"", media_type="text/plain")
    if not st.metrics_public and not st.keys.check(request.headers):
        return _unauthorized()
    body = await run_in_threadpool(st.metrics.render)
    return Response(body, media_type=st.metrics.content_type)


async def openapi_endpoint(request: Request) -> Response:
    from .openapi import spec

    return JSONResponse(spec(anatomix_version()))


async def not_found(request: Request) -> Response:
    st = STATE
    if st is not None and request.url.path.startswith("/v1") and not st.keys.check(request.headers):
        return _unauthorized()  # no route discovery without a key
    return _error(RequestError(404, "not_found", "no such endpoint; see /docs"))


class MetricsMiddleware:
    """Counts every answer of this app by route template, method and status (bounded labels)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        st = STATE
        if scope["type"] != "http" or st is None or st.metrics is None:
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        label = "unmatched"
        try:
            await self.app(scope, receive, send_status)
        finally:
            label = st.metrics.route_label(getattr(scope.get("route"), "path", None))
            st.metrics.observe(label, scope.get("method", "GET"), status[0], started)


async def _http_error(request: Request, exc) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return _error(RequestError(exc.status_code, code, str(exc.detail)))


def build_app() -> Starlette:
    """The routes; each endpoint's form spec names every accepted field (others are a 400)."""
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from . import viewer
    from .pacs.job_routes import jobs_endpoint
    from .pacs.stow import stow_endpoint

    routes = [
        Route("/v1/cxr/classify", _endpoint("cxr", _files_spec, classify_work), methods=["POST"]),
        Route("/v1/embed", _endpoint("cxr", _files_spec, embed_work), methods=["POST"]),
        Route(
            "/v1/cxr/correspond", _endpoint("cxr", _pair_spec, correspond_work), methods=["POST"]
        ),  # fmt: skip
        Route("/v1/ct/segment", _endpoint("ct", _series_spec, segment_work), methods=["POST"]),
        Route(
            "/v1/ct/segment.dcm", _endpoint("ct", _series_spec, segment_dcm_work), methods=["POST"]
        ),  # fmt: skip
        Route("/v1/ct/view", _endpoint("ct", _series_spec, viewer.ct_view_work), methods=["POST"]),
        Route("/v1/ct/view/{view}/{item}", viewer.ct_view_endpoint, methods=["GET"]),
        Route("/v1/preview", _endpoint("cxr", _files_spec, viewer.preview_work), methods=["POST"]),
        Route("/v1/models", models_endpoint, methods=["GET"]),
        Route("/v1/jobs", jobs_endpoint, methods=["GET"]),
        Route("/v1/jobs/{job_id}", jobs_endpoint, methods=["GET"]),
        Route("/dicomweb/studies", stow_endpoint, methods=["POST"]),
        Route("/dicomweb/studies/{study}", stow_endpoint, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/docs.json", openapi_endpoint, methods=["GET"]),
        # the viewer page at /; BentoML's Swagger UI (it reads /docs.json) at /docs
        Route("/", viewer.ui_index, methods=["GET"]),
        Mount("/ui", StaticFiles(directory=viewer.UI), name="ui"),
        Route("/docs", viewer.swagger, methods=["GET"]),
        Route("/v1/{rest:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(MetricsMiddleware)],
        exception_handlers={HTTPException: _http_error},
    )


#: the route templates metrics label by (anything else is "unmatched")
ROUTES = [
    "/v1/cxr/classify", "/v1/embed", "/v1/cxr/correspond", "/v1/ct/segment",
    "/v1/ct/segment.dcm", "/v1/ct/view", "/v1/ct/view/{view}/{item}", "/v1/preview", "/",
    "/docs", "/v1/models", "/v1/jobs", "/v1/jobs/{job_id}", "/dicomweb/studies",
    "/dicomweb/studies/{study}", "/metrics", "/docs.json",
]  # fmt: skip
