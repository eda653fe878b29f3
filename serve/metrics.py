"""Prometheus metrics with bounded labels: the route *template* (``/v1/cxr/classify``), never the
raw path, so a client cannot grow the series set (5,000 random paths once added 500 MB to
BentoML's own request metrics, which label by raw path). Unknown paths share one label."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .timing import STAGES

UNMATCHED = "unmatched"
METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")


class Metrics:
    """The service's metrics; every label value comes from a fixed set."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, routes: list[str]):
        self.routes = set(routes)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "anatomix_requests", "HTTP requests answered", ["route", "method", "status"],
            registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "anatomix_request_duration_seconds", "Time from the request's start to its answer",
            ["route"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )  # fmt: skip
        self.in_progress = Gauge(
            "anatomix_requests_in_progress", "Requests being handled", ["route"], registry=r
        )
        self.refused = Counter(
            "anatomix_refused", "Requests answered with an error code", ["route", "code"],
            registry=r,
        )  # fmt: skip
        self.lane_waiting = Gauge(
            "anatomix_lane_waiting", "Requests waiting for a slot of their lane", ["lane"],
            registry=r,
        )  # fmt: skip
        self.lane_active = Gauge(
            "anatomix_lane_active", "Requests holding a slot of their lane", ["lane"], registry=r
        )
        self.models = Gauge("anatomix_models_loaded", "Exports loaded and serving", registry=r)
        self.decoder_restarts = Counter(
            "anatomix_decoder_restarts", "Decoding processes replaced (killed or retired)",
            ["lane"], registry=r,
        )  # fmt: skip

        self.stage_seconds = Histogram(
            "anatomix_stage_seconds",
            "Time per request stage: queue (waiting for a lane slot), decode, preprocess, infer "
            "(model calls, waiting for a batch included)", ["route", "stage"], registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )  # fmt: skip
        self.batch_size = Histogram(
            "anatomix_batch_size", "Items per model call (adaptive batching)", ["model"],
            registry=r, buckets=(1, 2, 4, 8, 16, 32, 64),
        )  # fmt: skip

        self.pacs = PacsCounters(r)

    def stages(self, route: str, ms: dict[str, float]) -> None:
        """One request's stage times (:class:`serve.timing.StageTimer`); known stages only."""
        for stage, value in ms.items():
            if stage in STAGES:
                self.stage_seconds.labels(route, stage).observe(value / 1000.0)

    def route_label(self, template: str | None) -> str:
        return template if template in self.routes else UNMATCHED

    def observe(self, route: str, method: str, status: int, started: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(route, method, str(int(status))).inc()
        self.duration.labels(route).observe(max(0.0, time.monotonic() - started))

    def refuse(self, route: str, code: str) -> None:
        self.refused.labels(route, code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PacsCounters:
    """The PACS pipeline's counters (:mod:`serve.pacs.gateway`); labels from fixed sets."""

    RECEIVERS = ("stow", "dimse")

    def __init__(self, r: CollectorRegistry):
        self.instances = Counter(
            "anatomix_pacs_instances", "Instances received (stored) or refused, per receiver",
            ["receiver", "outcome"], registry=r,
        )  # fmt: skip
        self.studies = Counter(
            "anatomix_pacs_studies", "Studies processed (results written) or failed",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.deliveries = Counter(
            "anatomix_pacs_deliveries", "Results delivered to a destination, or dead-lettered "
            "after every retry (they are retried later)", ["outcome"], registry=r,
        )  # fmt: skip

    def count(self, what: str, receiver: str | None = None) -> None:
        if what in ("received", "refused"):
            receiver = receiver if receiver in self.RECEIVERS else "stow"
            self.instances.labels(receiver, what).inc()
        elif what in ("processed", "failed"):
            self.studies.labels(what).inc()
        elif what == "delivered":
            self.deliveries.labels("delivered").inc()
        elif what == "delivery_failed":
            self.deliveries.labels("dead_lettered").inc()
