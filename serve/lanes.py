"""Admission and priority per kind of work, so one endpoint's slow requests cannot starve another's.

A :class:`Lane` admits at most ``concurrency`` requests at once and lets at most ``queue`` more
wait (for at most ``wait_s``); anything beyond is a 503 ``busy`` with ``Retry-After`` at once,
before the body is read. Radiograph work is short and interactive, CT segmentation long: while a
radiograph request runs its model (:meth:`PriorityGate.urgent`), segmentation waits between its
sliding-window batches (:meth:`PriorityGate.yield_to_urgent`), so a classify request's latency
stays near its idle latency while segmentations run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from .errors import RequestError


@dataclass
class LaneConfig:
    concurrency: int
    queue: int
    wait_s: float


class Lane:
    """Bounded concurrency plus a bounded, time-limited wait (asyncio; one event loop)."""

    def __init__(self, name: str, config: LaneConfig, metrics=None):
        self.name, self.config, self.metrics = name, config, metrics
        self._slots = asyncio.Semaphore(config.concurrency)
        self.active = self.waiting = 0

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.lane_active.labels(self.name).set(self.active)
            self.metrics.lane_waiting.labels(self.name).set(self.waiting)

    def _busy(self) -> RequestError:
        return RequestError(
            503, "busy",
            f"the server is busy with other {self.name} requests; retry shortly",
            headers={"Retry-After": "2"},
        )  # fmt: skip

    @asynccontextmanager
    async def slot(self):
        """Hold one slot of the lane for the request's lifetime, or raise 503 ``busy``."""
        if self._slots.locked():
            if self.waiting >= self.config.queue:
                raise self._busy()
            self.waiting += 1
            self._gauge()
            try:
                await asyncio.wait_for(self._slots.acquire(), self.config.wait_s)
            except TimeoutError:
                raise self._busy() from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.active += 1
        self._gauge()
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()
            self._gauge()


class PriorityGate:
    """Urgent work (radiographs) runs first; background work (CT) yields between its steps."""

    def __init__(self, max_yield_s: float = 10.0):
        self.max_yield_s = max_yield_s
        self._urgent = 0
        self._cond = threading.Condition()

    @contextmanager
    def urgent(self):
        with self._cond:
            self._urgent += 1
        try:
            yield
        finally:
            with self._cond:
                self._urgent -= 1
                self._cond.notify_all()

    def yield_to_urgent(self) -> None:
        """Wait while urgent work runs (at most ``max_yield_s``, so background work still ends)."""
        deadline = time.monotonic() + self.max_yield_s
        with self._cond:
            while self._urgent and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
