"""The PACS pipeline of one server process: receivers → inbox → study assembly → models →
SEG/SR → outbox → destinations, with a job record per processed study.

One thread assembles and processes studies, one at a time (a study's models already use the
service's decoding processes and batchers, which uploads share); the receivers only check and
store, so a PACS pushing a study is answered at disk speed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Cancelled
from .errors import Refused
from .inbox import Inbox
from .intake import Instance, check_instance
from .jobs import Jobs

log = logging.getLogger("anatomix.pacs")

#: how often processed studies past their retention are looked for (s)
EXPIRE_EVERY_S = 600.0


@dataclass(frozen=True)
class PacsSettings:
    """The PACS side's settings (README "Connect to a PACS" lists the variables)."""

    root: Path = Path("pacs")  # ANATOMIX_PACS_DIR: inbox, jobs, outbox (durable: not a tmpfs)
    quiet_s: float = 5.0  # ANATOMIX_STUDY_QUIET_S: a study is complete after this long quiet
    max_mb: int = 20480  # ANATOMIX_PACS_MAX_MB: the inbox's bound
    retain_h: float = 24.0  # ANATOMIX_PACS_RETAIN_H: processed studies kept this long
    destinations: tuple = ()  # ANATOMIX_DESTINATIONS (+ ANATOMIX_DESTINATION_AUTHORIZATION)
    backoff_s: tuple[float, ...] = (5, 15, 60, 300, 900)  # ANATOMIX_DELIVERY_BACKOFF_S
    dead_retry_s: float = 900.0  # ANATOMIX_DELIVERY_DEAD_RETRY_S
    uid_root: str | None = None  # ANATOMIX_UID_ROOT: the org root of new SEG/SR UIDs
    aet: str | None = None  # ANATOMIX_DICOM_AET: the C-STORE SCP's AE title (off unless set)
    port: int | None = None  # ANATOMIX_DICOM_PORT
    host: str = "127.0.0.1"  # ANATOMIX_DICOM_HOST: the address the SCP listens on
    allow: tuple = ()  # ANATOMIX_DICOM_ALLOW: calling AE titles and addresses (serve.pacs.dimse)
    max_associations: int = 4  # ANATOMIX_DICOM_MAX_ASSOCIATIONS
    cxr_rules: dict | None = field(default=None, hash=False)  # ANATOMIX_CXR_SELECTION


class Gateway:
    """Receivers, inbox, processing thread and outbox of one server (see the module docstring).

    Args:
        state: the service's :class:`serve.app.State` (models, decoders, limits).
        cfg: the PACS settings.
    """

    def __init__(self, state, cfg: PacsSettings):
        from .outbox import Outbox

        self.state, self.cfg = state, cfg
        root = Path(cfg.root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lockfile = _lock(root)  # one server per directory: two would share the outbox
        self.inbox = Inbox(root / "inbox", quiet_s=cfg.quiet_s, max_bytes=cfg.max_mb << 20)
        self.jobs = Jobs(root / "jobs")
        self.outbox = Outbox(root / "outbox", cfg.destinations, backoff_s=cfg.backoff_s,
                             dead_retry_s=cfg.dead_retry_s, on_event=self._delivery)  # fmt: skip
        self.scp = None
        if cfg.aet:
            from .dimse import StoreSCP

            self.scp = StoreSCP(aet=cfg.aet, port=cfg.port or 104, host=cfg.host,
                                allow=list(cfg.allow), max_associations=cfg.max_associations,
                                store=self._dimse_store)  # fmt: skip
        self._open: dict[str, str] = {}  # study UID → the job collecting its instances
        self._busy: set[str] = set()  # the job being processed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = state.metrics.pacs if state.metrics is not None else None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.outbox.start()
        if self.scp is not None:
            self.scp.start()
            log.info("DICOM C-STORE receiver %s listening on %s:%d", self.cfg.aet, self.cfg.host,
                     self.scp.port)  # fmt: skip
        self._thread = threading.Thread(target=self._loop, name="anatomix-pacs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, then processing and delivering; what is stored stays for the next
        start."""
        self._stop.set()
        if self.scp is not None:
            self.scp.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self.outbox.stop(timeout)

    # --- receiving -------------------------------------------------------------------------------

    def receive(self, source: bytes | Path, study_uid: str | None = None,
                receiver: str = "stow") -> Instance:  # fmt: skip
        """Check and durably store one instance (:class:`Refused` says why not)."""
        try:
            inst = check_instance(source, study_uid)
            new = self.inbox.store(source, inst)
        except Refused as exc:
            log.info("%s: instance refused (0x%04X): %s", receiver, exc.status, exc.detail)
            self._count("refused", receiver)
            raise
        self._count("received", receiver)
        if new:
            with self._lock:
                if inst.study_uid not in self._open:
                    job = self.jobs.open(inst.study_uid, busy=frozenset(self._busy))
                    self._open[inst.study_uid] = job["id"]
        return inst

    def _dimse_store(self, data: bytes) -> None:
        self.receive(data, receiver="dimse")

    # --- processing ------------------------------------------------------------------------------

    def _loop(self) -> None:
        next_expiry = time.monotonic()
        while not self._stop.wait(0.2):
            for study in self.inbox.complete():
                if self._stop.is_set():
                    return
                try:
                    self._process(study)
                except Exception as exc:  # noqa: BLE001 - one study must not stop the loop
                    log.error("PACS job for a study failed: %s", type(exc).__name__)
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + EXPIRE_EVERY_S
                removed = self.inbox.expire(self.cfg.retain_h * 3600.0)
                if removed:
                    log.info("removed %d processed stud(ies) past retention", removed)

    def _process(self, study: str) -> None:
        with self._lock:
            job_id = self._open.pop(study, None) or self.jobs.open(study)["id"]
            self._busy.add(job_id)
        try:
            self._run(study, job_id)
        finally:
            with self._lock:
                self._busy.discard(job_id)

    def _run(self, study: str, job_id: str) -> None:
        """One processing round of a complete study, recorded in job ``job_id``."""
        from .route import run_study

        arrivals = self.inbox.arrivals(study)
        started = self.inbox.clock()
        first, last = arrivals or (started, started)
        files = self.inbox.files(study)
        self.jobs.update(job_id, state="selected", instances=len(files), timings_ms={
            "receive": round((last - first) * 1000.0, 1),
            "assemble": round((started - last) * 1000.0, 1)})  # fmt: skip
        self.jobs.update(job_id, state="inferring")
        try:
            out = run_study(self.state, files, uid_root=self.cfg.uid_root,
                            cxr_rules=self.cfg.cxr_rules, cancelled=self._stop)  # fmt: skip
        except Cancelled:  # the server is stopping: the study stays pending for the next start
            log.info("PACS job %s interrupted by shutdown; it resumes at the next start", job_id)
            return
        except Exception as exc:  # noqa: BLE001 - recorded; the study is not retried forever
            self._fail(job_id, f"processing failed ({type(exc).__name__})")
            self.inbox.mark_processed(study, files, started)
            return
        timings = {k: round(v, 1) for k, v in out.timings_ms.items()}
        self.jobs.update(job_id, series=out.series, rejected=out.rejected, models=out.models,
                         timings_ms=timings)  # fmt: skip
        if not out.results:
            why = "; ".join(f"{m}: {r}" for m, r in out.skipped.items())
            self._fail(job_id, why or "no loaded model takes this study's series")
            self.inbox.mark_processed(study, files, started)
            return
        names = {d.name: "pending" for d in self.cfg.destinations}
        self.jobs.update(job_id, state="delivering" if names else "processed",
                         results=sorted(out.results), destinations=names,
                         delivering_since=time.time())  # fmt: skip
        self.outbox.put(job_id, out.results)  # durable before the study counts as processed
        self.inbox.mark_processed(study, files, started)
        self._count("processed")
        log.info("PACS job %s: %d result(s) from %d instance(s)", job_id, len(out.results),
                 len(files))  # fmt: skip

    def _fail(self, job_id: str, reason: str) -> None:
        log.info("PACS job %s failed: %s", job_id, reason)
        self.jobs.update(job_id, state="failed", reason=reason)
        self._count("failed")

    def _delivery(self, job_id: str, event: str, detail: str) -> None:
        """The outbox's report: a destination has a job's results, or gave up for now."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        if event == "delivered":
            dests = {**job["destinations"], detail: "delivered"}
            done = all(v == "delivered" for v in dests.values())
            fields = {"destinations": dests}
            if done:
                took = (time.time() - job.get("delivering_since", time.time())) * 1000.0
                fields.update(state="delivered", timings_ms={"deliver": round(took, 1)})
            self.jobs.update(job_id, **fields)
            self._count("delivered")
        elif event == "failed":
            # dead-lettered: still retried, so the job says so rather than "failed"
            self.jobs.update(job_id, reason=f"delivery failing, will retry: {detail}")
            self._count("delivery_failed")

    def _count(self, what: str, receiver: str | None = None) -> None:
        if self.counters is not None:
            self.counters.count(what, receiver)


def _lock(root: Path):
    """Hold an exclusive lock on ``root`` for this process's life (released when it dies)."""
    import fcntl

    fd = open(root / ".lock", "a")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fd.close()
        raise RuntimeError(f"{root} is in use by another anatomix server (ANATOMIX_PACS_DIR): "
                           "give each server its own") from None  # fmt: skip
    return fd
