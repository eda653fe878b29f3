"""The one error type of the serving boundary: a client's mistake as an HTTP 4xx (or a bounded
server condition such as ``busy`` or ``timeout`` as a 503/504), always answered as
``{"error": code, "detail": text}``. Details name attributes and limits, never their values."""

from __future__ import annotations


class RequestError(Exception):
    """HTTP ``status`` with body ``{"error": code, "detail": detail}``; ``headers`` are added to
    the answer (``Retry-After`` for 503)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail = int(status), code, detail
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": self.code, "detail": self.detail}


class Cancelled(Exception):
    """The client went away: the request's work stops and nothing is answered."""
