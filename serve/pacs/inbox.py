"""The durable study inbox both receivers store into: ``<root>/<StudyInstanceUID>/<SOP UID>.dcm``
written atomically and fsync'ed before the sender is answered, so an acknowledged instance
survives a crash. A study is *pending* while it holds instances its last processing did not see
(``processed.json``); it is *complete* once no instance has arrived for the quiet period (the
MONAI Informatics Gateway's study assembly), and then it is routed to the models."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from imaging.atomic import _fsync_dir, atomic_path

from ..privacy import is_uid
from .errors import OUT_OF_RESOURCES, Refused
from .intake import Instance

PROCESSED = "processed.json"


class Inbox:
    """Received instances grouped by study (see the module docstring).

    Args:
        root: the inbox directory (created 0700).
        quiet_s: seconds without a new instance after which a study is complete.
        max_bytes: the most the inbox may hold; an instance beyond it is refused with
            0xA700 (out of resources) and the sender may retry later.
    """

    def __init__(self, root: Path, *, quiet_s: float = 5.0, max_bytes: int = 20 << 30,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.root, self.quiet_s, self.max_bytes, self.clock = Path(root), quiet_s, max_bytes, clock
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._first: dict[str, float] = {}  # study → arrival of its first unprocessed instance
        self._last: dict[str, float] = {}  # study → arrival of its newest instance
        self.bytes = 0
        now = clock()
        for trash in self.root.glob(".expired-*"):  # an expiry a crash interrupted
            shutil.rmtree(trash, ignore_errors=True)
        for study in self.studies():
            for stale in study.glob(".*.tmp"):  # a write a crash interrupted: never acknowledged
                stale.unlink(missing_ok=True)
            self.bytes += sum(p.stat().st_size for p in study.glob("*.dcm"))
            if self._unseen(study.name):  # received before a restart: assemble it again
                self._first[study.name] = self._last[study.name] = now

    def studies(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and is_uid(p.name))

    def store(self, data: bytes | Path, inst: Instance) -> bool:
        """Write one checked instance durably; False when the same bytes were already stored (a
        resend: the study is not processed again for it). :class:`Refused` when full."""
        study = self.root / inst.study_uid  # UIDs are checked: safe as file names
        target = study / f"{inst.sop_uid}.dcm"
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        if target.is_file() and target.stat().st_size == size and _same(target, data):
            return False
        with self._lock:
            if self.bytes + size > self.max_bytes:
                raise Refused(OUT_OF_RESOURCES, "the receiver's inbox is full; retry later")
            self.bytes += size  # reserved now so concurrent stores cannot overrun the bound
        try:
            new_dir = not study.is_dir()
            study.mkdir(mode=0o700, exist_ok=True)
            if new_dir:
                _fsync_dir(self.root)
            with atomic_path(target) as tmp:
                if isinstance(data, bytes):
                    tmp.write_bytes(data)
                else:
                    shutil.copyfile(data, tmp)
            _fsync_dir(study)
        except BaseException:
            with self._lock:
                self.bytes -= size
            raise
        now = self.clock()
        with self._lock:
            self._first.setdefault(inst.study_uid, now)
            self._last[inst.study_uid] = now
        return True

    def complete(self) -> list[str]:
        """Studies with unprocessed instances and none newer than the quiet period, oldest
        first."""
        now = self.clock()
        with self._lock:
            ready = [s for s, t in self._last.items() if now - t >= self.quiet_s]
        return sorted(ready, key=lambda s: self._last.get(s, now))

    def arrivals(self, study_uid: str) -> tuple[float, float] | None:
        """(first, last) arrival (this process's clock) of the study's unprocessed instances."""
        with self._lock:
            if study_uid not in self._last:
                return None
            return self._first[study_uid], self._last[study_uid]

    def files(self, study_uid: str) -> list[Path]:
        return sorted((self.root / study_uid).glob("*.dcm"))

    def mark_processed(self, study_uid: str, files: list[Path], since: float) -> None:
        """Record that ``files`` were processed; the study stays pending when an instance arrived
        after ``since`` (the clock value when its processing started): it is processed again."""
        record = {"sop_uids": sorted(p.stem for p in files), "at": time.time()}
        with atomic_path(self.root / study_uid / PROCESSED) as tmp:
            tmp.write_text(json.dumps(record))
        with self._lock:
            if self._last.get(study_uid, 0.0) <= since:
                self._first.pop(study_uid, None)
                self._last.pop(study_uid, None)

    def _unseen(self, study_uid: str) -> bool:
        done = self.root / study_uid / PROCESSED
        seen = set(json.loads(done.read_text())["sop_uids"]) if done.is_file() else set()
        return any(p.stem not in seen for p in self.files(study_uid))

    def expire(self, retain_s: float) -> int:
        """Delete processed studies untouched for ``retain_s`` seconds; returns how many."""
        removed, cutoff = 0, time.time() - retain_s
        for study in self.studies():
            done = study / PROCESSED
            with self._lock:
                busy = study.name in self._last
            if busy or not done.is_file() or done.stat().st_mtime > cutoff:
                continue
            freed = sum(p.stat().st_size for p in study.glob("*.dcm"))
            trash = self.root / f".expired-{secrets.token_hex(4)}"
            os.replace(study, trash)  # out of sight at once; a late instance starts a new dir
            shutil.rmtree(trash, ignore_errors=True)
            with self._lock:
                self.bytes -= freed
            removed += 1
        return removed


def _same(path: Path, data: bytes | Path) -> bool:
    other = data if isinstance(data, bytes) else data.read_bytes()
    return path.read_bytes() == other
