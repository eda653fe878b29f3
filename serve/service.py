"""The anatomix REST service (BentoML): DICOM in, findings / masks / embeddings out.

``bentoml serve serve.service:AnatomixService`` (or ``make serve``). Models are the exports under
``ANATOMIX_MODELS`` (default ``./exports``), each described by its manifest (:mod:`serve.registry`).
The HTTP API itself is :mod:`serve.app` (plain Starlette routes mounted at ``/``), so that the
service, not the framework, reads and bounds every request; BentoML runs the process, its health
endpoints and ``bentoml build``. Settings are read and checked once, here, at start-up: a
malformed one (an empty API key, a non-numeric limit) stops the server with a message naming it.
"""

from __future__ import annotations

import logging
import os
import sys

import bentoml

from . import app as api
from . import privacy
from .decode_worker import die_with_parent

log = logging.getLogger("anatomix.serve")

privacy.install()  # before anything can log an upload's attribute values


def _read_settings():
    """The settings, read once on import: ``bentoml serve`` imports this module in its own
    process before it starts workers, so a malformed setting stops the whole server with the
    message naming it (a check in the worker alone left BentoML's manager running)."""
    from .limits import ConfigError
    from .settings import Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise SystemExit(f"anatomix: configuration error: {exc}") from None


SETTINGS = _read_settings()  # each worker imports this module too: its own copy, read once


def _configure_logging(settings) -> None:
    """``anatomix.*`` lines go to stderr beside BentoML's; with ``ANATOMIX_LOG_FORMAT=json`` every
    line of the process (BentoML's request lines included) is one JSON object."""
    from .logs import TEXT_FORMAT, JsonFormatter

    root = logging.getLogger("anatomix")
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
        root.setLevel(settings.log_level)
        root.propagate = False
    fmt = JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for h in root.handlers:
        h.setFormatter(fmt)
    if settings.log_format == "json":
        for name in ("bentoml", "bentoml.access", "uvicorn", "uvicorn.error", ""):
            for h in logging.getLogger(name).handlers:
                h.setFormatter(fmt)


def build_state(settings=None) -> api.State:
    """Load the models and start the decoders under ``settings`` (read from the environment
    when not given; :class:`~serve.limits.ConfigError` names a bad setting)."""
    from .decoder import DecoderPool
    from .forms import clean_stale_spools, spool_root
    from .lanes import Lane, LaneConfig, PriorityGate
    from .metrics import Metrics
    from .pacs.gateway import Gateway
    from .registry import ModelRegistry
    from .settings import Settings

    s = settings or Settings.from_env()
    # STOW-RS requests: each stores its instances at disk speed; the queue bounds the spool
    stow_lane = LaneConfig(4, 16, 60.0)
    log.info("radiograph preprocessing: %s", api.preprocess_mode(s.preprocess))
    metrics = Metrics(api.ROUTES)
    lanes = {"cxr": Lane("cxr", s.cxr_lane, metrics), "ct": Lane("ct", s.ct_lane, metrics),
             "stow": Lane("stow", stow_lane, metrics)}  # fmt: skip
    budgets = {"cxr": s.cxr_timeout_s, "ct": s.ct_timeout_s}
    removed = clean_stale_spools(s.spool_dir)
    if removed:
        log.info("removed %d upload folder(s) left by a stopped server", removed)
    decoders = {
        "cxr": DecoderPool(s.cxr_decoders, s.limits, name="cxr"),
        "ct": DecoderPool(s.ct_decoders, s.limits, name="ct"),
    }
    registry = ModelRegistry.from_settings(s)
    metrics.models.set(len(registry.models))
    for m in registry.models:  # model ids are the loaded exports: a bounded label set
        m.batcher.on_batch = metrics.batch_size.labels(m.id).observe
    state = api.State(
        limits=s.limits, keys=s.keys, registry=registry, decoders=decoders, lanes=lanes,
        budgets=budgets, metrics=metrics, spool=spool_root(s.spool_dir), gate=PriorityGate(),
        metrics_public=s.metrics_public, preprocess=s.preprocess, refuse=s.refuse_warnings,
        ct_selection=s.ct_selection,
    )  # fmt: skip
    state.gateway = Gateway(state, s.pacs)
    return state


@bentoml.asgi_app(api.build_app(), path="/")
@bentoml.service(
    # our own request budgets (ANATOMIX_*_TIMEOUT_S) answer first; this is a backstop
    traffic={"timeout": 900},
    # BentoML's request metrics label by raw path (unbounded); serve.metrics replaces them
    metrics={"enabled": False},
)
class AnatomixService:
    """DICOM in, predictions out (the routes are in :mod:`serve.app`)."""

    def __init__(self) -> None:
        settings = SETTINGS
        _configure_logging(settings)
        # stopping `bentoml serve` (even with SIGKILL) must not leave this worker running
        die_with_parent(os.getppid())
        api.STATE = build_state(settings)
        st = api.STATE
        st.gateway.start()  # the C-STORE receiver (when configured), assembly and delivery
        log.info("anatomix: %d model(s) loaded from %s; API keys %s", len(st.registry.models),
                 st.registry.root, "required" if st.keys.required else "not required")  # fmt: skip
        if st.registry.not_ready():
            log.error("not ready: %s", st.registry.not_ready())

    @bentoml.on_shutdown
    def _stop_pacs(self) -> None:
        """Close the C-STORE receiver's port and stop delivery; stored studies stay on disk."""
        if api.STATE is not None and api.STATE.gateway is not None:
            api.STATE.gateway.stop()

    def __is_ready__(self) -> bool:
        """``/readyz``: 503 saying why until a model is loaded (BentoML answers 200 otherwise)."""
        reason = api.STATE.registry.not_ready() if api.STATE else "starting"
        if reason:
            from starlette.exceptions import HTTPException

            raise HTTPException(status_code=503, detail=reason)  # BentoML's own text says nothing
        return True
