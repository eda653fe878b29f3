"""The viewer page's routes (issue #21): the page itself at ``/`` (serve/ui/), BentoML's Swagger
UI at ``/docs``, and the PNG previews it renders from (:mod:`serve.view`): a film as the model
sees it, and the slices of a segmented CT study kept for a while."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from . import app
from .errors import RequestError

UI = Path(__file__).resolve().parent / "ui"  # the viewer page's static files
#: the page runs only its own files and talks only to this server (previews are blob: URLs)
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def ct_view_work(st, form, budget, timer):
    """``/v1/ct/view``: the ``/v1/ct/segment`` answer, and the study kept for the viewer page
    (``view``: the token of its slice PNGs and SEG, ``depth``: its slice count)."""
    from .view import PALETTE, CtView

    m, volume, masks, labels, threshold, heads, warnings = app.segment_series(
        st, form, budget, timer, headers=True
    )
    body = app.segment_body(m, volume, masks, labels, threshold, warnings)
    try:
        seg = app.seg_result(m, volume, masks, labels, heads)
    except RequestError:  # resampled or not referenceable: the page offers no download
        seg = None
    if masks.shape[1:] != volume.voxels.shape:
        raise RequestError(422, "view_not_on_source_grid", "this model resamples the series; "
                           "the viewer shows masks on the source slices only")  # fmt: skip
    hu = np.clip(np.round(volume.voxels), -32768, 32767).astype(np.int16)
    token = st.views.put(CtView(hu, masks.astype(bool), seg, time.monotonic()))
    body |= {"view": token, "depth": int(hu.shape[0]), "seg": seg is not None,
             "palette": [list(c) for c in PALETTE[: len(labels)]]}  # fmt: skip
    return body, "application/json"


def preview_work(st, form, budget, timer):
    """``/v1/preview``: one radiograph as a PNG, its intensities as the model sees them; the
    ``X-Image-Size`` header is its original ``rows,columns`` (points are in those pixels)."""
    from .view import radiograph_png

    _, _, items = app._decode(st, "cxr_classify", "cxr", form, budget, timer, unit=True)
    if len(items) != 1:
        raise RequestError(400, "need_one_image", "send exactly one radiograph")
    _, img, _, hw = items[0]
    return radiograph_png(img.pixels), "image/png", {"X-Image-Size": f"{hw[0]},{hw[1]}"}


async def ct_view_endpoint(request: Request) -> Response:
    """``GET /v1/ct/view/{view}/{slice}.png?window=lung|soft|bone&overlay=0|1`` and
    ``GET /v1/ct/view/{view}/seg.dcm``: a slice of a study ``POST /v1/ct/view`` kept, or its
    DICOM SEG."""
    from .view import WINDOWS, ct_slice_png

    st = app.STATE
    if st is None:
        return app._error(RequestError(503, "starting", "the service is starting; retry shortly"))
    if not st.keys.check(request.headers):
        return app._unauthorized()
    try:
        view = st.views.get(request.path_params["view"])
        item = request.path_params["item"]
        if item == "seg.dcm":
            if view.seg is None:
                raise RequestError(404, "no_seg", "this series has no DICOM SEG (see /v1/ct/"
                                   "segment.dcm for why)")  # fmt: skip
            return Response(
                view.seg,
                media_type="application/dicom",
                headers={"Content-Disposition": 'attachment; filename="seg.dcm"'},
            )
        stem, _, ext = item.partition(".")
        if ext != "png" or not stem.isdigit() or int(stem) >= view.hu.shape[0]:
            raise RequestError(404, "no_such_slice", f"slices are 0.png to "
                               f"{view.hu.shape[0] - 1}.png, and seg.dcm")  # fmt: skip
        window = request.query_params.get("window", "soft")
        if window not in WINDOWS:
            raise RequestError(400, "bad_window", f"window is one of {', '.join(WINDOWS)}")
        overlay = request.query_params.get("overlay", "1") not in ("0", "false", "no")
        d = int(stem)
        masks = view.masks[:, d] if overlay else None
        png = await run_in_threadpool(ct_slice_png, view.hu[d], masks, window)
    except RequestError as exc:
        return app._error(exc)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


async def ui_index(request: Request) -> Response:
    """The viewer page (serve/ui/): static, no build step, nothing from the internet."""
    from starlette.responses import FileResponse

    return FileResponse(UI / "index.html", headers={"Cache-Control": "no-cache", **UI_HEADERS})


async def swagger(request: Request) -> Response:
    """BentoML's interactive API documentation (it reads /docs.json), now at /docs."""
    import _bentoml_impl.server as bentoml_server
    from starlette.responses import FileResponse

    return FileResponse(Path(bentoml_server.__file__).parent / "main-openapi.html")
