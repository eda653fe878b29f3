"""The result outbox (issue #20): every result reaches every destination, once it is back,
after retries with back-off and from the dead-letter folder; nothing is lost to a restart or a
SIGKILL, and nothing is half written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serve.pacs.destinations import DeliveryError, Destination
from serve.pacs.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]
UP = Destination(kind="dicom", aet="UP", host="127.0.0.1", port=104)
DOWN = Destination(kind="dicomweb", url="http://127.0.0.1:8042/dicom-web", auth="Basic c2VjcmV0")


def _files(job_id: str) -> dict[str, bytes]:
    """Deterministic contents per job, so a reader elsewhere knows what they must be."""
    rng = random.Random(job_id)
    return {"seg.dcm": rng.randbytes(70_000), "sr.dcm": rng.randbytes(3_000)}


class Recorder:
    """A sender that keeps what each call received (read while the files exist) and fails
    while ``down`` holds that destination's name (or for its first ``fail_first`` calls)."""

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.down: set[str] = set()
        self.calls: list[tuple[str, float, dict[str, bytes] | None]] = []
        self.lock = threading.Lock()

    def __call__(self, dest, paths):
        with self.lock:
            failing = dest.name in self.down or len(self.calls) < self.fail_first
            got = None if failing else {Path(p).name: Path(p).read_bytes() for p in paths}
            self.calls.append((dest.name, time.time(), got))
        if failing:
            raise DeliveryError("connection refused")

    def delivered(self) -> list[tuple[str, dict[str, bytes]]]:
        with self.lock:
            return [(name, got) for name, _, got in self.calls if got is not None]


class Events(list):
    def __call__(self, job_id, event, detail):
        self.append((job_id, event, detail))


def _wait(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.01)


@pytest.fixture
def outboxes():
    made = []

    def make(root, dests, **kw):
        made.append(Outbox(root, dests, **kw))
        return made[-1]

    yield make
    for box in made:
        box.stop()


def _items(folder: Path) -> list[dict]:
    return [json.loads((d / "item.json").read_text()) for d in sorted(folder.iterdir())]


def test_put_then_deliver_the_same_files(tmp_path, outboxes):
    sender, events = Recorder(), Events()
    box = outboxes(tmp_path, [UP], sender=sender, on_event=events)
    box.put("job-1", _files("job-1"))
    assert box.counts() == {"pending": 1, "dead": 0}
    box.start()
    _wait(lambda: events)
    assert sender.delivered() == [(UP.name, _files("job-1"))]
    assert events == [("job-1", "delivered", UP.name)]
    assert box.counts() == {"pending": 0, "dead": 0}
    assert list((tmp_path / "tmp").iterdir()) == []


def test_credentials_never_reach_the_disk(tmp_path, outboxes):
    box = outboxes(tmp_path, [DOWN], sender=Recorder())
    box.put("job-1", _files("job-1"))
    (record,) = _items(tmp_path / "pending")
    assert record["destination"] == DOWN.name and record["job_id"] == "job-1"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"c2VjcmV0" not in path.read_bytes()


def test_a_destination_that_is_down_is_retried_with_back_off_then_delivered_once(
    tmp_path, outboxes
):
    sender, events = Recorder(fail_first=2), Events()
    box = outboxes(tmp_path, [UP], sender=sender, on_event=events, backoff_s=(0.3, 0.6, 9))
    box.start()
    box.put("job-1", _files("job-1"))
    _wait(lambda: len(sender.calls) == 1)
    _wait(lambda: _items(tmp_path / "pending")[0]["attempts"] == 1)
    (record,) = _items(tmp_path / "pending")
    first = sender.calls[0][1]
    assert record["next_try"] == pytest.approx(first + 0.3, abs=0.2)
    assert "connection refused" in record["last_error"]
    _wait(lambda: any(e == "delivered" for _, e, _ in events))
    times = [t for _, t, _ in sender.calls]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.3 * 0.9 and times[2] - times[1] >= 0.6 * 0.9
    assert [e for _, e, _ in events] == ["retrying", "retrying", "delivered"]
    assert events[0][2] == f"{UP.name}: connection refused"
    time.sleep(0.2)
    assert sender.delivered() == [(UP.name, _files("job-1"))]  # exactly once
    assert box.counts() == {"pending": 0, "dead": 0}


def test_an_undeliverable_result_waits_in_dead_letters_until_retried(tmp_path, outboxes):
    sender, events = Recorder(), Events()
    sender.down.add(UP.name)
    box = outboxes(tmp_path, [UP], sender=sender, on_event=events, backoff_s=(0.01, 0.01, 0.01))
    box.start()
    box.put("job-1", _files("job-1"))
    _wait(lambda: len(events) == 3)  # reported once on disk
    assert [e for _, e, _ in events] == ["retrying", "retrying", "failed"]
    assert box.counts() == {"pending": 0, "dead": 1}
    assert len(sender.calls) == 3
    (record,) = _items(tmp_path / "dead")
    assert record["attempts"] == 3 and "connection refused" in record["last_error"]
    (item,) = (tmp_path / "dead").iterdir()
    assert {p.name: p.read_bytes() for p in item.iterdir() if p.name != "item.json"} == (
        _files("job-1")
    )
    time.sleep(0.2)  # dead_retry_s is 900: it stays, untouched
    assert len(sender.calls) == 3 and box.counts()["dead"] == 1
    sender.down.clear()
    assert box.retry_dead() == 1
    _wait(lambda: events[-1][1] == "delivered")
    assert sender.delivered() == [(UP.name, _files("job-1"))]
    assert box.counts() == {"pending": 0, "dead": 0}


def test_dead_letters_are_retried_every_dead_retry_s(tmp_path, outboxes):
    sender, events = Recorder(), Events()
    sender.down.add(UP.name)
    box = outboxes(
        tmp_path, [UP], sender=sender, on_event=events, backoff_s=(0.01,), dead_retry_s=0.3
    )
    box.start()
    box.put("job-1", _files("job-1"))
    _wait(lambda: len(events) >= 2)  # dead, then retried from dead/ without being asked
    assert [e for _, e, _ in events][:2] == ["failed", "failed"]
    sender.down.clear()
    _wait(lambda: events[-1][1] == "delivered")
    assert sender.delivered() == [(UP.name, _files("job-1"))]


def test_one_destination_down_does_not_hold_back_another(tmp_path, outboxes):
    sender, events = Recorder(), Events()
    sender.down.add(DOWN.name)
    box = outboxes(tmp_path, [UP, DOWN], sender=sender, on_event=events, backoff_s=(0.05, 30, 30))
    box.start()
    box.put("job-1", _files("job-1"))
    box.put("job-2", _files("job-2"))
    # each DOWN item failed twice (0.05 s apart) and now waits 30 s
    _wait(lambda: [e for _, e, _ in events].count("retrying") == 4)
    assert sender.delivered() == [(UP.name, _files("job-1")), (UP.name, _files("job-2"))]
    assert [(j, e) for j, e, _ in events if e == "delivered"] == [
        ("job-1", "delivered"),
        ("job-2", "delivered"),
    ]
    assert box.counts() == {"pending": 2, "dead": 0}
    assert {(r["destination"], r["attempts"]) for r in _items(tmp_path / "pending")} == {
        (DOWN.name, 2)
    }
    sender.down.clear()
    box.kick()  # a kick delivers what is due, and these are not yet
    time.sleep(0.2)
    assert box.counts()["pending"] == 2 and len(sender.delivered()) == 2


def test_a_restart_resumes_pending_items_and_clears_half_written_ones(tmp_path, outboxes):
    first = outboxes(tmp_path, [UP], sender=Recorder())
    first.put("job-1", _files("job-1"))  # never started: the process "died" here
    # a put killed while writing: its item is still in tmp/, half there
    half = tmp_path / "tmp" / "00000000000000000001-0123456789ab"
    half.mkdir()
    (half / "seg.dcm").write_bytes(b"\0" * 10)
    sender, events = Recorder(), Events()
    second = outboxes(tmp_path, [UP], sender=sender, on_event=events)
    assert not half.exists()
    assert second.counts() == {"pending": 1, "dead": 0}
    second.start()
    _wait(lambda: events)
    assert sender.delivered() == [(UP.name, _files("job-1"))]
    assert events == [("job-1", "delivered", UP.name)]


def test_an_item_whose_destination_is_gone_stays_dead_until_it_is_configured(tmp_path, outboxes):
    outboxes(tmp_path, [UP, DOWN], sender=Recorder()).put("job-1", _files("job-1"))
    sender, events = Recorder(), Events()
    box = outboxes(tmp_path, [UP], sender=sender, on_event=events)
    box.start()
    _wait(lambda: len(events) == 2)
    assert sorted(e for _, e, _ in events) == ["delivered", "failed"]
    assert ("job-1", "failed", f"{DOWN.name}: destination no longer configured") in events
    assert box.retry_dead() == 0 and box.counts() == {"pending": 0, "dead": 1}
    box.stop()
    again, events = Recorder(), Events()
    outboxes(tmp_path, [UP, DOWN], sender=again, on_event=events).start()
    _wait(lambda: events)
    assert again.delivered() == [(DOWN.name, _files("job-1"))]


def test_no_destination_stores_nothing_and_says_so(tmp_path, outboxes):
    events = Events()
    box = outboxes(tmp_path, [], on_event=events)
    box.put("job-1", _files("job-1"))
    assert events == [("job-1", "no_destination", "")]
    assert box.counts() == {"pending": 0, "dead": 0}


@pytest.mark.parametrize(
    "job_id, files",
    [
        ("../x", {"seg.dcm": b"x"}),
        ("a/b", {"seg.dcm": b"x"}),
        ("", {"seg.dcm": b"x"}),
        ("j" * 129, {"seg.dcm": b"x"}),
        ("job", {"../seg.dcm": b"x"}),
        ("job", {"..": b"x"}),
        ("job", {"item.json": b"x"}),
        ("job", {"a b.dcm": b"x"}),
        ("job", {}),
    ],
)
def test_unsafe_job_ids_and_file_names_are_refused(tmp_path, outboxes, job_id, files):
    box = outboxes(tmp_path, [UP], sender=Recorder())
    with pytest.raises(ValueError):
        box.put(job_id, files)
    assert box.counts() == {"pending": 0, "dead": 0}
    assert list((tmp_path / "tmp").iterdir()) == []


def test_puts_from_many_threads_are_each_delivered_once(tmp_path, outboxes):
    sender = Recorder()
    box = outboxes(tmp_path, [UP, DOWN], sender=sender)
    box.start()
    jobs = [f"job-{t}-{i}" for t in range(6) for i in range(5)]

    def worker(t):
        for i in range(5):
            box.put(f"job-{t}-{i}", _files(f"job-{t}-{i}"))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait(lambda: len(sender.delivered()) == 2 * len(jobs))
    got = sorted((name, got["sr.dcm"]) for name, got in sender.delivered())
    want = sorted((d.name, _files(j)["sr.dcm"]) for d in (UP, DOWN) for j in jobs)
    assert got == want
    assert box.counts() == {"pending": 0, "dead": 0}


def test_stop_is_prompt_and_idempotent(tmp_path):
    box = Outbox(tmp_path, [UP], sender=Recorder())
    before = set(threading.enumerate())
    box.start()
    box.start()
    started = set(threading.enumerate()) - before
    assert len(started) == 1  # one delivery thread, however often started
    began = time.monotonic()
    box.stop()
    box.stop()
    assert time.monotonic() - began < 1.0  # not the 60 s it would otherwise sleep
    assert not any(t.is_alive() for t in started)


# A child process that queues jobs with a destination that never answers, and says after
# each put() that it returned; the parent SIGKILLs it at an arbitrary moment.
CHILD = r"""
import random, sys, threading, time
from pathlib import Path
from serve.pacs.destinations import Destination
from serve.pacs.outbox import Outbox

def files(job_id):
    rng = random.Random(job_id)
    return {"seg.dcm": rng.randbytes(70_000), "sr.dcm": rng.randbytes(3_000)}

hang = threading.Event()
box = Outbox(Path(sys.argv[1]), [Destination(kind="dicom", aet="UP", host="127.0.0.1", port=104)],
             sender=lambda dest, paths: hang.wait())
box.start()
i = 0
while True:
    box.put(f"job-{i}", files(f"job-{i}"))
    print(f"job-{i}", flush=True)
    i += 1
"""


def test_a_sigkilled_process_loses_no_acknowledged_item_and_leaves_no_half_one(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged = []
    try:
        while len(acknowledged) < 5:
            line = child.stdout.readline()
            assert line, child.stderr.read()
            acknowledged.append(line.strip())
        time.sleep(random.uniform(0, 0.05))  # somewhere inside a later put()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    acknowledged += [line.strip() for line in child.stdout.read().splitlines()]
    child.stdout.close()
    child.stderr.close()
    sender, events = Recorder(), Events()
    box = Outbox(tmp_path, [UP], sender=sender, on_event=events)
    try:
        assert list((tmp_path / "tmp").iterdir()) == []
        queued = box.counts()["pending"]
        assert queued >= len(acknowledged)  # one more may have been renamed in before the kill
        box.start()
        _wait(lambda: len(events) == queued)
    finally:
        box.stop()
    delivered = {}
    for (_, got), (job_id, event, _) in zip(sender.delivered(), events, strict=True):
        assert event == "delivered"
        delivered[job_id] = got
    assert set(acknowledged) <= set(delivered)
    assert len(delivered) == queued  # once each
    for job_id, got in delivered.items():
        assert got == _files(job_id)
    assert box.counts() == {"pending": 0, "dead": 0}
