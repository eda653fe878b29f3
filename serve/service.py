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


def _log_to_stderr() -> None:
    """BentoML configures its own loggers only: give ``anatomix.*`` INFO lines the same place."""
    root = logging.getLogger("anatomix")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s")
        )
        root.addHandler(handler)
        root.setLevel(os.environ.get("ANATOMIX_LOG_LEVEL", "INFO").upper())
        root.propagate = False


def _env_int(name: str, default: int) -> int:
    from .limits import ConfigError

    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


def build_state() -> api.State:
    """Read every setting, load the models, start the decoders (raises ConfigError)."""
    from .auth import ApiKeys
    from .decoder import DecoderPool
    from .forms import clean_stale_spools, spool_root
    from .lanes import Lane, LaneConfig, PriorityGate
    from .limits import ConfigError, Limits
    from .metrics import Metrics
    from .registry import ModelRegistry

    limits = Limits.from_env()
    keys = ApiKeys.from_env()
    log.info("radiograph preprocessing: %s", api.preprocess_mode())  # checks ANATOMIX_PREPROCESS
    public = os.environ.get("ANATOMIX_METRICS_PUBLIC", "1").strip()
    if public not in ("0", "1"):
        raise ConfigError(f"ANATOMIX_METRICS_PUBLIC must be 0 or 1, got {public!r}")
    metrics = Metrics(api.ROUTES)
    lanes = {
        "cxr": Lane("cxr", LaneConfig(_env_int("ANATOMIX_CXR_CONCURRENCY", 4),
                                      _env_int("ANATOMIX_CXR_QUEUE", 32), 30.0), metrics),
        "ct": Lane("ct", LaneConfig(_env_int("ANATOMIX_CT_CONCURRENCY", 2),
                                    _env_int("ANATOMIX_CT_QUEUE", 8), 60.0), metrics),
    }  # fmt: skip
    budgets = {
        "cxr": float(_env_int("ANATOMIX_CXR_TIMEOUT_S", 60)),
        "ct": float(_env_int("ANATOMIX_CT_TIMEOUT_S", 600)),
    }
    removed = clean_stale_spools()
    if removed:
        log.info("removed %d upload folder(s) left by a stopped server", removed)
    decoders = {
        "cxr": DecoderPool(_env_int("ANATOMIX_CXR_DECODERS", 2), limits, name="cxr"),
        "ct": DecoderPool(_env_int("ANATOMIX_CT_DECODERS", 1), limits, name="ct"),
    }
    registry = ModelRegistry.from_dir()
    metrics.models.set(len(registry.models))
    for m in registry.models:  # model ids are the loaded exports: a bounded label set
        m.batcher.on_batch = metrics.batch_size.labels(m.id).observe
    return api.State(
        limits=limits, keys=keys, registry=registry, decoders=decoders, lanes=lanes,
        budgets=budgets, metrics=metrics, spool=spool_root(), gate=PriorityGate(),
        metrics_public=public == "1",
    )  # fmt: skip


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
        _log_to_stderr()
        # stopping `bentoml serve` (even with SIGKILL) must not leave this worker running
        die_with_parent(os.getppid())
        api.STATE = build_state()
        st = api.STATE
        log.info("anatomix: %d model(s) loaded from %s; API keys %s", len(st.registry.models),
                 st.registry.root, "required" if st.keys.required else "not required")  # fmt: skip
        if st.registry.not_ready():
            log.error("not ready: %s", st.registry.not_ready())

    def __is_ready__(self) -> bool:
        """``/readyz``: 503 saying why until a model is loaded (BentoML answers 200 otherwise)."""
        reason = api.STATE.registry.not_ready() if api.STATE else "starting"
        if reason:
            from starlette.exceptions import HTTPException

            raise HTTPException(status_code=503, detail=reason)  # BentoML's own text says nothing
        return True
