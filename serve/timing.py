"""Per-request stage timings, answered as a standard ``Server-Timing`` header.

Each request records how long it spent decoding DICOM, preprocessing and waiting for / running the
model, so a client (or ``python -m bench.serve``) can see where request time goes without access
to the server's logs. Browsers' developer tools show the header too.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

#: the stages every endpoint reports, in order (milliseconds); "queue" is the wait for a slot of
#: the endpoint's lane
STAGES = ("queue", "decode", "preprocess", "infer")


class StageTimer:
    """Accumulates wall-clock milliseconds per stage of one request."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

    def move(self, source: str, target: str, ms: float) -> None:
        """Book ``ms`` of stage ``source`` under ``target`` (work a decoding process did)."""
        ms = min(ms, self.ms.get(source, 0.0))
        if ms > 0:
            self.ms[source] -= ms
            self.ms[target] = self.ms.get(target, 0.0) + ms

    def header(self) -> str:
        """``decode;dur=1.2, preprocess;dur=0.4, infer;dur=9.8`` (RFC: W3C Server Timing)."""
        return ", ".join(f"{k};dur={v:.2f}" for k, v in self.ms.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """The inverse of :meth:`StageTimer.header`: ``{stage: ms}`` (unknown parameters ignored)."""
    out: dict[str, float] = {}
    for metric in value.split(","):
        parts = [p.strip() for p in metric.split(";")]
        if not parts[0]:
            continue
        for p in parts[1:]:
            key, _, val = p.partition("=")
            if key.strip() == "dur":
                try:
                    out[parts[0]] = float(val)
                except ValueError:
                    pass
    return out
