"""Adaptive batching of model calls: concurrent requests share one runtime call.

Each :class:`Batcher` owns one worker thread. Requests submit their preprocessed items; the
worker waits up to ``max_latency_ms`` after the first item for more, up to ``max_batch`` items,
runs the model once and hands every request its own rows back. Exports are batch independent
(``export`` checks it), so an answer never depends on which other requests shared its batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np


class Batcher:
    """Collects ``(N_i, ...)`` arrays from many callers into batches for ``fn``.

    Args:
        fn: ``(B, ...) -> {name: (B, ...)}``, e.g. :meth:`export.runtime.Runtime.predict`.
        max_batch: most items per call.
        max_latency_ms: longest a first item waits for company.
    """

    def __init__(
        self, fn: Callable[[np.ndarray], dict], max_batch: int = 8, max_latency_ms: float = 10.0
    ):
        self.fn, self.max_batch = fn, max(1, int(max_batch))
        self.on_batch: Callable[[int], None] | None = None  # told each call's size (metrics)
        self.max_latency = max(0.0, float(max_latency_ms)) / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="anatomix-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: np.ndarray) -> Future:
        """Queue ``items`` (N, ...); the future gives ``{name: (N, ...)}``."""
        fut: Future = Future()
        self._queue.put((np.ascontiguousarray(items), fut))
        return fut

    def __call__(self, items: np.ndarray) -> dict:
        return self.submit(items).result()

    def _gather(self) -> list:
        first = self._queue.get()
        jobs, count = [first], len(first[0])
        deadline = time.monotonic() + self.max_latency
        while count < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                job = self._queue.get(timeout=left)
            except queue.Empty:
                break
            jobs.append(job)
            count += len(job[0])
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._gather()
            if self.on_batch is not None:
                self.on_batch(sum(len(items) for items, _ in jobs))
            try:
                out = self.fn(np.concatenate([items for items, _ in jobs]))
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                for _, fut in jobs:
                    fut.set_exception(exc)
                continue
            start = 0
            for items, fut in jobs:
                n = len(items)
                fut.set_result({k: v[start : start + n] for k, v in out.items()})
                start += n
