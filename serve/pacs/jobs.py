"""Job records of the PACS pipeline: one per processing of a study, kept as small JSON files so
``GET /v1/jobs`` survives a restart. A record names the study by its UID only (never a patient
identifier), the series each model chose, the state and the time of each stage."""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path

from imaging.atomic import atomic_path

#: a job's states in order; ``failed`` may follow any of them
STATES = ("received", "selected", "inferring", "delivering", "delivered", "processed", "failed")
#: states after which nothing more happens to the job (``processed``: no destination configured)
FINAL = ("delivered", "processed", "failed")
#: the stages timed (ms): receive (first to last instance), assemble (the quiet period),
#: infer (decoding and the models), write (SEG/SR encoding), deliver (until every destination
#: has it)
STAGES = ("receive", "assemble", "infer", "write", "deliver")


class Jobs:
    """The job records under ``root`` (the newest ``keep`` are kept)."""

    def __init__(self, root: Path, keep: int = 1000):
        self.root, self.keep = Path(root), keep
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, dict] = {}
        for path in sorted(self.root.glob("*.json")):
            try:
                job = json.loads(path.read_text())
                self._jobs[job["id"]] = job
            except (ValueError, KeyError, OSError):
                path.unlink(missing_ok=True)  # a record torn by a crash of an older version

    def open(self, study_uid: str, busy: frozenset = frozenset()) -> dict:
        """The study's unfinished job (one left by a restart included) unless it is in ``busy``
        (being processed: instances arriving meanwhile start the next job), or a new one."""
        with self._lock:
            for job in self._jobs.values():
                if (job["study_uid"] == study_uid and job["state"] not in FINAL
                        and job["id"] not in busy):  # fmt: skip
                    return dict(job)
            now = time.time()
            job = {
                "id": f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{secrets.token_hex(4)}",
                "study_uid": study_uid, "state": "received", "reason": None, "created": now,
                "updated": now, "instances": 0, "series": {}, "rejected": {}, "models": [],
                "results": [], "destinations": {}, "timings_ms": {},
            }  # fmt: skip
            self._save(job)
            return dict(job)

    def update(self, job_id: str, **fields) -> dict:
        """Change fields of a job (``timings_ms`` and ``destinations`` are merged) and persist."""
        with self._lock:
            job = dict(self._jobs[job_id])
            for key in ("timings_ms", "destinations", "series", "rejected"):
                if key in fields:
                    job[key] = {**job[key], **fields.pop(key)}
            if "state" in fields and fields["state"] not in STATES:
                raise ValueError(f"unknown job state {fields['state']!r}")
            job.update(fields, updated=time.time())
            self._save(job)
            return dict(job)

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return dict(job) if job else None

    def list(self, limit: int = 100, state: str | None = None) -> list[dict]:
        """The newest jobs first."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j["created"], reverse=True)
        return [dict(j) for j in jobs if state is None or j["state"] == state][:limit]

    def unfinished(self) -> list[dict]:
        with self._lock:
            return [dict(j) for j in self._jobs.values() if j["state"] not in FINAL]

    def _save(self, job: dict) -> None:
        with atomic_path(self.root / f"{job['id']}.json") as tmp:
            tmp.write_text(json.dumps(job))
        self._jobs[job["id"]] = job
        if len(self._jobs) > self.keep:
            oldest = sorted(self._jobs.values(), key=lambda j: j["created"])
            for old in oldest[: len(self._jobs) - self.keep]:
                if old["state"] in FINAL:
                    self._jobs.pop(old["id"])
                    (self.root / f"{old['id']}.json").unlink(missing_ok=True)
