"""``GET /v1/jobs`` and ``GET /v1/jobs/{id}``: the PACS pipeline's job records."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import app
from ..errors import RequestError
from .jobs import STATES


async def jobs_endpoint(request: Request) -> Response:
    """``GET /v1/jobs`` (newest first; ``?limit=`` up to 1000, ``?state=``) and
    ``GET /v1/jobs/{id}``: the PACS pipeline's job records (study UIDs, never patient data)."""
    st = app.STATE
    if st is None or st.gateway is None:
        return app._error(RequestError(503, "starting", "the service is starting; retry shortly"))
    if not st.keys.check(request.headers):
        return app._unauthorized()
    jobs = st.gateway.jobs
    job_id = request.path_params.get("job_id")
    if job_id is not None:
        job = jobs.get(job_id) if len(job_id) <= 64 else None
        if job is None:
            return app._error(RequestError(404, "unknown_job", "no job with this id"))
        return JSONResponse(job)
    try:
        limit = int(request.query_params.get("limit", "100"))
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        return app._error(RequestError(400, "bad_limit", "limit must be a whole number 1-1000"))
    state = request.query_params.get("state") or None
    if state is not None and state not in STATES:
        return app._error(
            RequestError(400, "bad_state", f"state must be one of {', '.join(STATES)}")
        )
    return JSONResponse({"jobs": jobs.list(limit, state), **st.gateway.outbox.counts()})
