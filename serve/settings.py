"""Every ``ANATOMIX_*`` setting of the server, read once at start-up into one typed, frozen
object: a malformed value stops the start with a message naming the variable, and an unknown
``ANATOMIX_*`` name is reported (one close to an API-key setting stops the start: a typo there
would leave the server open). The variables and their defaults are the README's "Serving"."""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .auth import ApiKeys
from .lanes import LaneConfig
from .limits import ConfigError, Limits, env_number
from .pacs.gateway import PacsSettings

log = logging.getLogger("anatomix.serve")

#: backends :func:`export.runtime.load` knows (kept in step with export.runtime.BACKENDS)
RUNTIMES = ("tensorrt", "ort-cuda", "ort-cpu")
#: seconds a CT request may wait for a lane slot before its 503: a queue of 8 behind 2 studies of
#: ~40 s each on 2 busy cores (the 60-minute soak, bench/RESULTS.md) must fit, or the queue is
#: only nominal (60 s gave 503s there)
CT_WAIT_S = 300.0
AUTH_VARIABLES = ("ANATOMIX_API_KEYS", "ANATOMIX_API_KEY_SHA256")
#: read by other tools (tests, benchmarks, the decoding processes), not by the server
NOT_SERVER = (
    "ANATOMIX_REQUIRE_",
    "ANATOMIX_SERVE_FUZZ",
    "ANATOMIX_DECODER_TEST_HOOKS",
    "ANATOMIX_KERNELS",
    "ANATOMIX_IMAGE_CACHE",
)


@dataclass(frozen=True)
class Settings:
    """The server's configuration (see the module docstring)."""

    models: Path = Path("exports")  # ANATOMIX_MODELS
    limits: Limits = field(default_factory=Limits)  # ANATOMIX_MAX_* and the time limits
    keys: ApiKeys = field(default_factory=lambda: ApiKeys([]))  # ANATOMIX_API_KEYS / _SHA256
    metrics_public: bool = True  # ANATOMIX_METRICS_PUBLIC
    # ANATOMIX_CXR_CONCURRENCY / _QUEUE and ANATOMIX_CT_CONCURRENCY / _QUEUE
    cxr_lane: LaneConfig = field(default_factory=lambda: LaneConfig(4, 32, 30.0))
    ct_lane: LaneConfig = field(default_factory=lambda: LaneConfig(2, 8, CT_WAIT_S))
    cxr_timeout_s: float = 60.0  # ANATOMIX_CXR_TIMEOUT_S
    ct_timeout_s: float = 600.0  # ANATOMIX_CT_TIMEOUT_S
    cxr_decoders: int = 2  # ANATOMIX_CXR_DECODERS
    ct_decoders: int = 1  # ANATOMIX_CT_DECODERS
    preprocess: str = "auto"  # ANATOMIX_PREPROCESS: auto | numpy | dali
    runtime: str | None = None  # ANATOMIX_RUNTIME: a backend, or the best available
    threads: int | None = None  # ANATOMIX_THREADS: ONNX Runtime intra-op threads
    ort_spinning: bool = False  # ANATOMIX_ORT_SPINNING: idle ONNX Runtime threads busy-wait
    max_batch: int | None = None  # ANATOMIX_MAX_BATCH: at most the export's own
    max_latency_ms: float = 10.0  # ANATOMIX_MAX_LATENCY_MS
    spool_dir: Path | None = None  # ANATOMIX_SPOOL_DIR (default: the temp dir)
    log_level: str = "INFO"  # ANATOMIX_LOG_LEVEL
    log_format: str = "text"  # ANATOMIX_LOG_FORMAT: text | json
    refuse_warnings: frozenset = frozenset()  # ANATOMIX_REFUSE_WARNINGS: serve.guard codes
    # ANATOMIX_CT_SELECTION: a YAML rule file (imaging/selection.py) choosing the series of a
    # multi-series CT upload; None: the shipped imaging/selection_ct.yaml
    ct_selection: dict | None = None
    # the PACS side (serve/pacs): ANATOMIX_PACS_DIR, ANATOMIX_DICOM_*, ANATOMIX_DESTINATIONS, ...
    pacs: PacsSettings = field(default_factory=PacsSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every setting (:class:`ConfigError` names the first bad one)."""
        env = os.environ if env is None else env
        r = _Reader(env)
        settings = cls(
            models=Path(r.text("ANATOMIX_MODELS", "exports")),
            limits=Limits.from_env(env),
            keys=ApiKeys.from_env(env),
            metrics_public=r.choice("ANATOMIX_METRICS_PUBLIC", "1", ("0", "1")) == "1",
            cxr_lane=LaneConfig(r.int("ANATOMIX_CXR_CONCURRENCY", 4),
                                r.int("ANATOMIX_CXR_QUEUE", 32), 30.0),
            ct_lane=LaneConfig(r.int("ANATOMIX_CT_CONCURRENCY", 2),
                               r.int("ANATOMIX_CT_QUEUE", 8), CT_WAIT_S),
            cxr_timeout_s=float(r.int("ANATOMIX_CXR_TIMEOUT_S", 60)),
            ct_timeout_s=float(r.int("ANATOMIX_CT_TIMEOUT_S", 600)),
            cxr_decoders=r.int("ANATOMIX_CXR_DECODERS", 2),
            ct_decoders=r.int("ANATOMIX_CT_DECODERS", 1),
            preprocess=r.choice("ANATOMIX_PREPROCESS", "auto", ("auto", "numpy", "dali")),
            runtime=r.choice("ANATOMIX_RUNTIME", None, RUNTIMES),
            threads=r.int("ANATOMIX_THREADS", None, minimum=0) or None,
            ort_spinning=r.choice("ANATOMIX_ORT_SPINNING", "0", ("0", "1")) == "1",
            max_batch=r.int("ANATOMIX_MAX_BATCH", None),
            max_latency_ms=r.number("ANATOMIX_MAX_LATENCY_MS", 10.0),
            spool_dir=Path(s) if (s := r.text("ANATOMIX_SPOOL_DIR", "")) else None,
            log_level=r.choice("ANATOMIX_LOG_LEVEL", "INFO",
                               ("DEBUG", "INFO", "WARNING", "ERROR"), upper=True),
            log_format=r.choice("ANATOMIX_LOG_FORMAT", "text", ("text", "json")),
            refuse_warnings=r.codes("ANATOMIX_REFUSE_WARNINGS"),
            ct_selection=_selection_rules(r.text("ANATOMIX_CT_SELECTION", ""),
                                          "ANATOMIX_CT_SELECTION"),
            pacs=_pacs(r),
        )  # fmt: skip
        r.check_unknown()
        return settings


def _selection_rules(path: str, name: str) -> dict | None:
    """A deployment's series selection rules, checked now (a bad file stops the start-up)."""
    if not path:
        return None
    from dataclasses import asdict

    from imaging.selection import Rules

    try:
        return asdict(Rules.load(path))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _pacs(r: _Reader) -> PacsSettings:
    """The PACS settings (README "Connect to a PACS"); the receiver's and destinations' syntax
    is checked here, so a typo stops the start-up instead of losing studies."""
    aet, port = r.text("ANATOMIX_DICOM_AET", ""), r.int("ANATOMIX_DICOM_PORT", None)
    if bool(aet) != (port is not None):
        raise ConfigError("ANATOMIX_DICOM_AET and ANATOMIX_DICOM_PORT turn the C-STORE receiver "
                          "on together: set both or neither")  # fmt: skip
    if port is not None and port > 65535:
        raise ConfigError(f"ANATOMIX_DICOM_PORT must be a TCP port, got {port}")
    uid_root = r.text("ANATOMIX_UID_ROOT", "") or None
    if uid_root is not None:
        root = uid_root.rstrip(".")
        if len(root) > 40 or not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+", root):
            raise ConfigError(f"ANATOMIX_UID_ROOT must be a UID root (digits and dots, at most 40 "
                              f"characters), got {uid_root!r}")  # fmt: skip
        uid_root = root + "."
    from .pacs.destinations import parse_destinations
    from .pacs.dimse import check_aet, parse_allow

    def checked(name: str, parse, *args, **kw):
        try:
            return parse(*args, **kw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    aet = checked("ANATOMIX_DICOM_AET", check_aet, aet) if aet else ""
    destinations = checked(
        "ANATOMIX_DESTINATIONS", parse_destinations, r.text("ANATOMIX_DESTINATIONS", ""),
        authorization=r.text("ANATOMIX_DESTINATION_AUTHORIZATION", "") or None,
    )  # fmt: skip
    allow = checked("ANATOMIX_DICOM_ALLOW", parse_allow, r.text("ANATOMIX_DICOM_ALLOW", ""))
    backoff = r.text("ANATOMIX_DELIVERY_BACKOFF_S", "5,15,60,300,900")
    try:
        backoff_s = tuple(float(v) for v in backoff.split(","))
        if not backoff_s or min(backoff_s) <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError("ANATOMIX_DELIVERY_BACKOFF_S must be positive seconds separated by "
                          f"commas, got {backoff!r}") from None  # fmt: skip
    return PacsSettings(
        root=Path(r.text("ANATOMIX_PACS_DIR", "pacs")),
        quiet_s=r.number("ANATOMIX_STUDY_QUIET_S", 5.0),
        max_mb=r.int("ANATOMIX_PACS_MAX_MB", 20480),
        retain_h=r.number("ANATOMIX_PACS_RETAIN_H", 24.0),
        destinations=tuple(destinations),
        backoff_s=backoff_s,
        dead_retry_s=r.number("ANATOMIX_DELIVERY_DEAD_RETRY_S", 900.0),
        uid_root=uid_root,
        aet=aet or None,
        port=port,
        host=r.text("ANATOMIX_DICOM_HOST", "127.0.0.1"),
        allow=tuple(allow),
        max_associations=r.int("ANATOMIX_DICOM_MAX_ASSOCIATIONS", 4),
        cxr_rules=_selection_rules(r.text("ANATOMIX_CXR_SELECTION", ""), "ANATOMIX_CXR_SELECTION"),
    )


#: every variable the server reads (Limits' and ApiKeys' included)
KNOWN = {
    "ANATOMIX_MODELS", "ANATOMIX_METRICS_PUBLIC", "ANATOMIX_ORT_SPINNING",
    "ANATOMIX_CXR_CONCURRENCY",
    "ANATOMIX_CXR_QUEUE", "ANATOMIX_CT_CONCURRENCY", "ANATOMIX_CT_QUEUE",
    "ANATOMIX_CXR_TIMEOUT_S", "ANATOMIX_CT_TIMEOUT_S", "ANATOMIX_CXR_DECODERS",
    "ANATOMIX_CT_DECODERS", "ANATOMIX_PREPROCESS", "ANATOMIX_RUNTIME", "ANATOMIX_THREADS",
    "ANATOMIX_MAX_BATCH", "ANATOMIX_MAX_LATENCY_MS", "ANATOMIX_SPOOL_DIR", "ANATOMIX_LOG_LEVEL",
    "ANATOMIX_LOG_FORMAT", "ANATOMIX_MAX_UPLOAD_MB", "ANATOMIX_MAX_FILES",
    "ANATOMIX_MAX_UNZIPPED_MB", "ANATOMIX_MAX_INFLATE_RATIO", "ANATOMIX_MAX_IMAGE_MPX",
    "ANATOMIX_MAX_STUDY_MPX", "ANATOMIX_UPLOAD_TIMEOUT_S", "ANATOMIX_DECODE_TIMEOUT_S",
    "ANATOMIX_DECODE_MEMORY_MB", "ANATOMIX_REFUSE_WARNINGS", "ANATOMIX_CT_SELECTION",
    "ANATOMIX_PACS_DIR", "ANATOMIX_STUDY_QUIET_S", "ANATOMIX_PACS_MAX_MB", "ANATOMIX_PACS_RETAIN_H",
    "ANATOMIX_DESTINATIONS", "ANATOMIX_DESTINATION_AUTHORIZATION", "ANATOMIX_DELIVERY_BACKOFF_S",
    "ANATOMIX_DELIVERY_DEAD_RETRY_S", "ANATOMIX_UID_ROOT", "ANATOMIX_DICOM_AET",
    "ANATOMIX_DICOM_PORT", "ANATOMIX_DICOM_HOST", "ANATOMIX_DICOM_ALLOW",
    "ANATOMIX_DICOM_MAX_ASSOCIATIONS", "ANATOMIX_CXR_SELECTION",
    *AUTH_VARIABLES,
}  # fmt: skip


class _Reader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def text(self, name: str, default: str) -> str:
        raw = self.env.get(name)
        return default if raw is None or not raw.strip() else raw.strip()

    def int(self, name: str, default: int | None, minimum: int = 1) -> int | None:
        raw = self.env.get(name)
        if raw is None:
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        value = env_number(self.env, name, positive=False)
        return default if value is None else value

    def choice(self, name: str, default, allowed: tuple[str, ...], upper: bool = False):
        raw = self.env.get(name)
        if raw is None:
            return default
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    def codes(self, name: str) -> frozenset:
        """A comma-separated list of :data:`serve.guard.CODES`."""
        from .guard import CODES

        raw = self.env.get(name) or ""
        codes = frozenset(c.strip().lower() for c in raw.split(",") if c.strip())
        unknown = sorted(codes - set(CODES))
        if unknown:
            raise ConfigError(f"{name}: unknown warning code(s) {', '.join(unknown)} (known: "
                              f"{', '.join(CODES)})")  # fmt: skip
        return codes

    def check_unknown(self) -> None:
        for name in sorted(k for k in self.env if k.startswith("ANATOMIX_")):
            if name in KNOWN or name.startswith(NOT_SERVER):
                continue
            close = difflib.get_close_matches(name, AUTH_VARIABLES, n=1, cutoff=0.8)
            if close:
                raise ConfigError(
                    f"{name} is not a setting; did you mean {close[0]}? (refusing to start "
                    "without the API keys you may have meant to set)"
                )
            near = difflib.get_close_matches(name, sorted(KNOWN), n=1, cutoff=0.8)
            hint = f" (did you mean {near[0]}?)" if near else ""
            log.warning("%s is not a setting the server reads; ignored%s", name, hint)
