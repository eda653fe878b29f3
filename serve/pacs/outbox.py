"""A durable outbox of result files: one item per (job, destination) on disk, delivered by a
background thread with retries and back-off, parked in a dead-letter folder and retried from
there, never dropped; a process killed at any moment leaves each item absent or complete.

Layout under ``root``: ``pending/<item>/`` and ``dead/<item>/`` hold the files and an
``item.json`` (job id, destination *name*, attempts, next try, last error); ``tmp/`` holds
items being written or deleted, and is emptied at start. Credentials never reach the disk: the
destination is looked up by name among the configured ones when an item is delivered.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imaging.atomic import _fsync_dir

from .destinations import DeliveryError, Destination, send

log = logging.getLogger("anatomix.pacs")

ITEM_JSON = "item.json"
_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ITEM_ID = re.compile(r"[0-9]{20}-[0-9a-f]{12}")
#: the longest the thread sleeps without looking at the clock (wall-clock jumps, dead items)
_MAX_WAIT_S = 60.0

Sender = Callable[[Destination, Sequence[Path]], None]
EventSink = Callable[[str, str, str], None]


@dataclass
class _Item:
    """What ``item.json`` holds; ``state`` ("pending" or "dead") is the folder it lies in."""

    id: str
    job_id: str
    destination: str
    files: list[str]
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    created: float = 0.0
    state: str = field(default="pending", compare=False)

    def record(self) -> dict:
        data = asdict(self)
        del data["id"], data["state"]
        return data


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _check_name(name: str) -> None:
    if _FILE_NAME.fullmatch(name) is None or name in {".", "..", ITEM_JSON}:
        raise ValueError(f"result file name {name!r} is not a plain name ([A-Za-z0-9._-]{{1,64}})")


class Outbox:
    """Delivers each job's result files to every configured destination, at least once.

    ``on_event(job_id, event, detail)`` reports ``"delivered"`` (detail: destination name),
    ``"retrying"`` and ``"failed"`` (detail: ``"<destination name>: <reason>"``) and
    ``"no_destination"`` (none configured; detail ``""``). One process per ``root``.
    """

    def __init__(
        self,
        root: Path,
        destinations: Sequence[Destination],
        *,
        sender: Sender = send,
        backoff_s: Sequence[float] = (5, 15, 60, 300, 900),
        dead_retry_s: float = 900.0,
        on_event: EventSink | None = None,
    ):
        if not backoff_s:
            raise ValueError("backoff_s needs at least one value")
        self.root = Path(root)
        self._destinations = {d.name: d for d in destinations}
        self._sender = sender
        self._backoff = [float(b) for b in backoff_s]
        self._dead_retry_s = float(dead_retry_s)
        self._on_event = on_event
        self._pending_dir = self.root / "pending"
        self._dead_dir = self.root / "dead"
        self._tmp_dir = self.root / "tmp"
        # _lock guards _items and every move/rewrite/delete of an existing item on disk
        self._lock = threading.Lock()
        self._items: dict[str, _Item] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for d in (self._pending_dir, self._dead_dir, self._tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._clear_tmp()
        self._load()

    # --- public -------------------------------------------------------------------------------

    def put(self, job_id: str, files: Mapping[str, bytes]) -> None:
        """Queue ``files`` (``{name: content}``) of ``job_id`` for every destination; durable on
        disk when it returns. ValueError for a malformed job id or file name."""
        if _JOB_ID.fullmatch(job_id) is None or job_id in {".", ".."}:
            raise ValueError("job id must be 1-128 characters of [A-Za-z0-9._-]")
        if not files:
            raise ValueError("no result files to deliver")
        for name, data in files.items():
            _check_name(name)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ValueError(f"result file {name!r} is not bytes")
        if not self._destinations:
            self._emit(job_id, "no_destination", "")
            return
        for dest_name in self._destinations:
            item = self._write_item(job_id, dest_name, files)
            with self._lock:
                self._items[item.id] = item
        log.info("outbox: job %s queued for %d destination(s)", job_id, len(self._destinations))
        self._wake.set()

    def start(self) -> None:
        """Start the delivery thread (a no-op if it runs); dead items are retried now."""
        if self._thread is not None and self._thread.is_alive():
            if not self._stop.is_set():
                return
            self._thread.join()  # stopping, maybe inside a send: let it end first
        self.retry_dead()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="anatomix-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the delivery thread, waiting up to ``timeout`` s for a delivery in progress (what
        it leaves undelivered stays on disk). Idempotent."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def kick(self) -> None:
        """Wake the delivery thread now (for instance after a destination came back)."""
        self._wake.set()

    def counts(self) -> dict[str, int]:
        """``{"pending": n, "dead": n}``: the items on disk right now."""
        return {
            "pending": sum(1 for _ in self._pending_dir.iterdir()),
            "dead": sum(1 for _ in self._dead_dir.iterdir()),
        }

    def retry_dead(self) -> int:
        """Move every dead item back to pending, due now with its attempts reset; those whose
        destination is no longer configured stay. Returns how many moved."""
        moved = self._revive(due_only=False)
        if moved:
            self._wake.set()
        return moved

    # --- disk ---------------------------------------------------------------------------------

    def _clear_tmp(self) -> None:
        # items half written (killed in put) or half deleted (killed after delivery)
        for entry in self._tmp_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        _fsync_dir(self._tmp_dir)

    def _load(self) -> None:
        """Index the items a previous process left; pending ones are due at once."""
        now = time.time()
        for state, folder in (("pending", self._pending_dir), ("dead", self._dead_dir)):
            for entry in sorted(folder.iterdir()):
                try:
                    raw = json.loads((entry / ITEM_JSON).read_bytes())
                    item = _Item(id=entry.name, state=state, **raw)
                    if _ITEM_ID.fullmatch(item.id) is None:
                        raise ValueError("not an item folder")
                    for name in item.files:
                        _check_name(name)
                except (OSError, ValueError, TypeError) as exc:
                    # never deleted: left where it is for someone to look at
                    why = type(exc).__name__
                    log.warning("outbox: ignoring unreadable %s item (%s)", state, why)
                    continue
                if state == "pending":
                    item.next_try = now
                self._items[item.id] = item

    def _write_item(self, job_id: str, dest_name: str, files: Mapping[str, bytes]) -> _Item:
        """Write one item in tmp/, fsync it, and rename it into pending/ in one step."""
        now = time.time()
        item = _Item(
            # time first, so that names sort oldest first; the random part keeps them unique
            id=f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}",
            job_id=job_id,
            destination=dest_name,
            files=list(files),
            next_try=now,
            created=now,
        )
        work = self._tmp_dir / item.id
        work.mkdir()
        try:
            for name, data in files.items():
                _write_durably(work / name, bytes(data))
            _write_durably(work / ITEM_JSON, json.dumps(item.record()).encode())
            _fsync_dir(work)
            os.rename(work, self._pending_dir / item.id)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        _fsync_dir(self._pending_dir)
        _fsync_dir(self._tmp_dir)
        return item

    def _folder(self, item: _Item) -> Path:
        return (self._pending_dir if item.state == "pending" else self._dead_dir) / item.id

    def _rewrite(self, item: _Item) -> None:
        """Replace the item's item.json atomically (write aside, fsync, rename)."""
        folder = self._folder(item)
        aside = folder / (ITEM_JSON + ".new")
        _write_durably(aside, json.dumps(item.record()).encode())
        os.replace(aside, folder / ITEM_JSON)
        _fsync_dir(folder)

    def _move(self, item: _Item, state: str) -> None:
        source = self._folder(item)
        target = (self._pending_dir if state == "pending" else self._dead_dir) / item.id
        os.rename(source, target)
        item.state = state
        _fsync_dir(target.parent)
        _fsync_dir(source.parent)

    def _delete(self, item: _Item) -> None:
        # out of pending/ in one rename, then removed at leisure: a kill never leaves half an item
        doomed = self._tmp_dir / f"{item.id}.done"
        os.rename(self._folder(item), doomed)
        _fsync_dir(self._pending_dir)
        shutil.rmtree(doomed, ignore_errors=True)

    # --- delivery -----------------------------------------------------------------------------

    def _emit(self, job_id: str, event: str, detail: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(job_id, event, detail)
        except Exception:  # a broken listener must not stop deliveries
            log.exception("outbox: on_event failed for job %s (%s)", job_id, event)

    def _revive(self, *, due_only: bool) -> int:
        """Dead items back to pending: all, or those dead for ``dead_retry_s`` (``due_only``)."""
        now = time.time()
        moved = 0
        with self._lock:
            for item in sorted(self._items.values(), key=lambda i: i.id):
                if item.state != "dead" or item.destination not in self._destinations:
                    continue
                if due_only and item.next_try > now:
                    continue
                item.attempts, item.next_try = 0, now
                try:
                    self._rewrite(item)
                    self._move(item, "pending")
                except OSError as exc:
                    log.warning("outbox: cannot retry dead item (%s)", type(exc).__name__)
                    continue
                moved += 1
        if moved:
            log.info("outbox: %d dead item(s) back to pending", moved)
        return moved

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            # stop() sets _stop before _wake: checked after the clear, no stop is missed
            if self._stop.is_set():
                return
            try:
                self._revive(due_only=True)
                self._deliver_due()
                sleep = self._sleep_s()
            except Exception:  # e.g. a full disk: keep the thread, try again a little later
                log.exception("outbox: delivery round failed")
                sleep = min(self._backoff[0], _MAX_WAIT_S)
            self._wake.wait(sleep)

    def _sleep_s(self) -> float:
        with self._lock:
            waits = [
                i.next_try
                for i in self._items.values()
                if i.state == "pending" or i.destination in self._destinations
            ]
        if not waits:
            return _MAX_WAIT_S
        return min(max(0.0, min(waits) - time.time()), _MAX_WAIT_S)

    def _deliver_due(self) -> None:
        now = time.time()
        with self._lock:
            due = sorted(
                (i for i in self._items.values() if i.state == "pending" and i.next_try <= now),
                key=lambda i: i.id,
            )
        for item in due:
            if self._stop.is_set():
                return
            self._deliver(item)

    def _deliver(self, item: _Item) -> None:
        dest = self._destinations.get(item.destination)
        if dest is None:
            self._fail(item, f"{item.destination}: destination no longer configured", dead=True)
            return
        folder = self._folder(item)
        try:
            self._sender(dest, [folder / name for name in item.files])
        except DeliveryError as exc:
            reason = exc.detail
        except Exception as exc:  # a sender bug or an unreadable file: an attempt that failed
            log.warning("outbox: sending job %s raised", item.job_id, exc_info=True)
            reason = f"unexpected {type(exc).__name__}"
        else:
            with self._lock:
                try:
                    self._delete(item)
                except OSError as exc:  # delivered; a leftover is delivered again, harmlessly
                    log.warning("outbox: cannot remove delivered item (%s)", type(exc).__name__)
                    item.next_try = time.time() + self._backoff[0]  # not at once, in a loop
                    return
                del self._items[item.id]
            log.info("outbox: job %s delivered to %s", item.job_id, dest.name)
            self._emit(item.job_id, "delivered", dest.name)
            return
        self._fail(item, f"{dest.name}: {reason}", dead=False)

    def _fail(self, item: _Item, reason: str, *, dead: bool) -> None:
        """Count a failed attempt: back off, or into dead/ after the last back-off."""
        now = time.time()
        with self._lock:
            item.attempts += 1
            item.last_error = reason
            dead = dead or item.attempts >= len(self._backoff)
            if dead:
                item.next_try = now + self._dead_retry_s
            else:
                item.next_try = now + self._backoff[min(item.attempts - 1, len(self._backoff) - 1)]
            try:
                self._rewrite(item)
                if dead:
                    self._move(item, "dead")
            except OSError as exc:  # still on disk, still pending: tried again after the wait
                log.warning("outbox: cannot record failed attempt (%s)", type(exc).__name__)
        event = "failed" if dead else "retrying"
        log.warning("outbox: job %s attempt %d %s: %s", item.job_id, item.attempts, event, reason)
        self._emit(item.job_id, event, reason)
