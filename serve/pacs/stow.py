"""DICOMweb STOW-RS (PS3.18 §10.5 "Store Transaction"): ``POST /dicomweb/studies[/{study}]``.

The body is read as a stream under the upload limits (:func:`serve.forms.read_form`); each part
is checked and written durably to the inbox *before* the answer, which lists the stored instances
in ReferencedSOPSequence and each refused one with its FailureReason in FailedSOPSequence:
HTTP 200 when all were stored, 202 when some were, 409 when none was.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import Cancelled, RequestError
from ..forms import RELATED, FormSpec, read_form
from ..privacy import is_uid
from .errors import Refused
from .intake import peek_uids

log = logging.getLogger("anatomix.pacs")

MEDIA = "application/dicom+json"
# DICOM JSON tags (PS3.18 Table 10.5.3-1)
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"


def _item(class_uid: str, instance_uid: str, reason: int | None = None) -> dict:
    item = {}
    if is_uid(class_uid):  # a refused instance's UIDs are answered only when they are UIDs
        item[REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [class_uid]}
    if is_uid(instance_uid):
        item[REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [instance_uid]}
    if reason is not None:
        item[FAILURE_REASON] = {"vr": "US", "Value": [reason]}
    return item


def store_response(stored: list[tuple[str, str]], failed: list[tuple[str, str, int]]) -> dict:
    """The Store Instances Response (DICOM JSON) for (class, instance) UIDs stored and
    (class, instance, reason) refused."""
    body: dict = {}
    if failed:
        items = [_item(c, i, r) for c, i, r in failed]
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": items}
    if stored:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_item(c, i) for c, i in stored]}
    return body


def _accepts_json(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    if not accept.strip():
        return True
    kinds = {part.split(";")[0].strip() for part in accept.split(",")}
    return bool(kinds & {MEDIA, "application/json", "application/*", "*/*"})


async def stow_endpoint(request: Request) -> Response:
    """Store the instances of a STOW-RS request (see the module docstring)."""
    from .. import app

    st = app.STATE
    if st is None or getattr(st, "gateway", None) is None:
        return app._error(RequestError(503, "starting", "the service is starting; retry shortly",
                                       {"Retry-After": "5"}))  # fmt: skip
    if not st.keys.check(request.headers):
        return app._unauthorized()
    study = request.path_params.get("study")
    form = None
    try:
        if study is not None and not is_uid(study):
            raise RequestError(400, "bad_study_uid", "the URL's StudyInstanceUID is not a UID")
        if not _accepts_json(request):
            raise RequestError(406, "not_acceptable", f"the store response is {MEDIA}")
        async with st.lanes["stow"].slot():
            spec = FormSpec(files={"file": st.limits.max_files}, fields={})
            form = await read_form(request.receive, request.headers, spec, st.limits, st.spool,
                                   kind=RELATED)  # fmt: skip
            paths = [part.path for part in form.files]
            stored, failed = await run_in_threadpool(_store_all, st.gateway, paths, study)
    except RequestError as exc:
        log.info("STOW-RS request refused: %s (%s)", exc.code, exc.status)
        st.metrics.refuse("/dicomweb/studies", exc.code)
        return app._error(exc)
    except Cancelled:
        return Response(status_code=499)
    finally:
        if form is not None:
            form.close()
    status = 200 if not failed else 202 if stored else 409
    return JSONResponse(store_response(stored, failed), status_code=status, media_type=MEDIA)


def _store_all(gateway, paths, study: str | None):
    stored, failed = [], []
    for path in paths:
        try:
            inst = gateway.receive(path, study)
            stored.append((inst.sop_class_uid, inst.sop_uid))
        except Refused as exc:
            uids = peek_uids(path)
            failed.append((*uids, exc.status))
    return stored, failed
