"""Issue #20: the PACS receivers' shared parts without a server — the intake check (every refusal
reason, on real and damaged pydicom files), the durable inbox (study assembly by quiet period, a
resend is not new work, a grown study is processed again once, the size bound, a restart finds
unprocessed studies, expiry) and the job records (persisted, one open job per study)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from serve.pacs import errors
from serve.pacs.errors import Refused
from serve.pacs.inbox import Inbox
from serve.pacs.intake import check_instance, peek_uids
from serve.pacs.jobs import Jobs


def _raw(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def _with(name: str, **attrs) -> bytes:
    ds = pydicom.dcmread(get_testdata_file(name))
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _status(data, study=None) -> int:
    with pytest.raises(Refused) as info:
        check_instance(data, study)
    assert "Zanzibar" not in info.value.detail
    return info.value.status


def test_accepted_instances_give_their_uids(tmp_path):
    ref = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for source in (_raw("CT_small.dcm"), Path(get_testdata_file("CT_small.dcm"))):
        inst = check_instance(source)
        assert (inst.study_uid, inst.series_uid, inst.sop_uid, inst.modality) == (
            ref.StudyInstanceUID, ref.SeriesInstanceUID, ref.SOPInstanceUID, "CT"
        )  # fmt: skip
    assert check_instance(_raw("RG1_UNCR.dcm")).modality == "CR"
    assert check_instance(_raw("CT_small.dcm"), ref.StudyInstanceUID).sop_uid == ref.SOPInstanceUID


def test_every_refusal_has_its_dicom_failure_reason(tmp_path):
    ct = _raw("CT_small.dcm")
    assert _status(b"hello, not DICOM" * 20) == errors.CANNOT_UNDERSTAND
    assert _status(_raw("MR_small.dcm")) == errors.SOP_CLASS_NOT_SUPPORTED
    assert _status(ct, "1.2.3.4") == errors.STUDY_UID_MISMATCH
    # pixel data cut short: 32,768 bytes promised from offset 6,300 of 39,206
    assert _status(ct[:20_000]) == errors.CANNOT_UNDERSTAND
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(ct[:20_000])
    assert _status(cut) == errors.CANNOT_UNDERSTAND
    # identifiers planted where UIDs belong are refused, never echoed
    planted = _with("CT_small.dcm", SOPInstanceUID="Zanzibar^Quixote")
    assert _status(planted) == errors.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert peek_uids(planted)[1] == "Zanzibar^Quixote"  # the STOW answer filters: test_stow
    nopix = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del nopix.PixelData
    buf = io.BytesIO()
    nopix.save_as(buf, enforce_file_format=True)
    assert _status(buf.getvalue()) == errors.DATA_SET_DOES_NOT_MATCH_SOP_CLASS


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _instance(data: bytes):
    return check_instance(data)


def test_a_study_is_complete_after_its_quiet_period_and_a_resend_is_no_new_work(tmp_path):
    clock = Clock()
    inbox = Inbox(tmp_path / "inbox", quiet_s=5.0, clock=clock)
    data = _raw("CT_small.dcm")
    inst = _instance(data)
    assert inbox.store(data, inst) is True
    stored = tmp_path / "inbox" / inst.study_uid / f"{inst.sop_uid}.dcm"
    assert stored.read_bytes() == data
    clock.t += 4.9
    assert inbox.complete() == []
    clock.t += 0.2
    assert inbox.complete() == [inst.study_uid]
    started = clock.t
    inbox.mark_processed(inst.study_uid, inbox.files(inst.study_uid), started)
    assert inbox.complete() == []
    assert inbox.store(data, inst) is False  # the same bytes again: nothing to do
    clock.t += 60
    assert inbox.complete() == []


def test_a_study_that_grows_while_or_after_it_is_processed_is_processed_again_once(tmp_path):
    clock = Clock()
    inbox = Inbox(tmp_path, quiet_s=1.0, clock=clock)
    ct = _raw("CT_small.dcm")
    inst = _instance(ct)
    inbox.store(ct, inst)
    clock.t += 2
    started = clock.t
    files = inbox.files(inst.study_uid)
    other = _with("CT_small.dcm", SOPInstanceUID=inst.sop_uid + ".2")
    clock.t += 0.5
    inbox.store(other, _instance(other))  # arrives while the first round runs
    inbox.mark_processed(inst.study_uid, files, started)
    assert inbox.complete() == []  # quiet period of the new instance not over
    clock.t += 1.1
    assert inbox.complete() == [inst.study_uid]
    inbox.mark_processed(inst.study_uid, inbox.files(inst.study_uid), clock.t)
    clock.t += 10
    assert inbox.complete() == []


def test_the_inbox_bound_refuses_with_out_of_resources(tmp_path):
    ct = _raw("CT_small.dcm")
    inbox = Inbox(tmp_path, max_bytes=len(ct) + 10)
    inbox.store(ct, _instance(ct))
    other = _with("CT_small.dcm", SOPInstanceUID="1.2.3.4.5")
    with pytest.raises(Refused) as info:
        inbox.store(other, _instance(other))
    assert info.value.status == errors.OUT_OF_RESOURCES
    assert [p.name for p in inbox.files(_instance(ct).study_uid)] == [
        f"{_instance(ct).sop_uid}.dcm"
    ]


def test_a_restart_finds_unprocessed_studies_and_drops_torn_writes(tmp_path):
    ct = _raw("CT_small.dcm")
    inst = _instance(ct)
    first = Inbox(tmp_path, quiet_s=0.0)
    first.store(ct, inst)
    torn = tmp_path / inst.study_uid / f".{inst.sop_uid}.dcm.123.abcd.tmp"
    torn.write_bytes(ct[:100])  # a write a crash interrupted: never acknowledged
    again = Inbox(tmp_path, quiet_s=0.0)
    assert again.complete() == [inst.study_uid] and not torn.exists()
    assert again.bytes == len(ct)
    again.mark_processed(inst.study_uid, again.files(inst.study_uid), again.clock())
    assert Inbox(tmp_path, quiet_s=0.0).complete() == []  # processed: not again after a restart


def test_expiry_removes_processed_studies_only(tmp_path):
    ct = _raw("CT_small.dcm")
    inst = _instance(ct)
    inbox = Inbox(tmp_path, quiet_s=0.0)
    inbox.store(ct, inst)
    assert inbox.expire(0.0) == 0  # not processed yet
    inbox.mark_processed(inst.study_uid, inbox.files(inst.study_uid), inbox.clock())
    assert inbox.expire(3600.0) == 0
    assert inbox.expire(-1.0) == 1 and inbox.studies() == [] and inbox.bytes == 0


def test_jobs_persist_and_a_study_has_one_open_job(tmp_path):
    jobs = Jobs(tmp_path)
    a = jobs.open("1.2.3")
    assert jobs.open("1.2.3")["id"] == a["id"]
    jobs.update(a["id"], state="inferring", timings_ms={"receive": 1.0})
    jobs.update(a["id"], timings_ms={"infer": 2.0}, series={"m": "1.2.3.4"})
    again = Jobs(tmp_path)  # a restart
    job = again.get(a["id"])
    assert job["state"] == "inferring" and job["timings_ms"] == {"receive": 1.0, "infer": 2.0}
    assert again.open("1.2.3")["id"] == a["id"]  # the unfinished job is resumed
    again.update(a["id"], state="delivered")
    b = again.open("1.2.3")
    assert b["id"] != a["id"] and [j["id"] for j in again.list()] == [b["id"], a["id"]]
    assert again.list(state="delivered")[0]["id"] == a["id"]
    with pytest.raises(ValueError):
        again.update(b["id"], state="lost")
    record = json.loads((tmp_path / f"{a['id']}.json").read_text())
    assert record["study_uid"] == "1.2.3"


def test_a_pacs_directory_serves_one_server_at_a_time(tmp_path):
    from serve.pacs.gateway import _lock

    held = _lock(tmp_path)
    with pytest.raises(RuntimeError, match="in use by another anatomix server"):
        _lock(tmp_path)
    held.close()  # the holder is gone (a killed server's lock goes with its process)
    _lock(tmp_path).close()


def test_instances_arriving_while_a_job_runs_start_the_next_job(tmp_path):
    jobs = Jobs(tmp_path)
    running = jobs.open("1.2.3")
    jobs.update(running["id"], state="inferring")
    assert jobs.open("1.2.3")["id"] == running["id"]  # a restart resumes it
    following = jobs.open("1.2.3", busy=frozenset({running["id"]}))
    assert following["id"] != running["id"] and following["state"] == "received"


def test_a_study_interrupted_by_shutdown_stays_pending_and_a_failure_does_not(
    tmp_path, monkeypatch
):
    from types import SimpleNamespace

    from serve.errors import Cancelled
    from serve.pacs import route
    from serve.pacs.gateway import Gateway, PacsSettings
    from serve.pacs.jobs import FINAL

    def raising(exc):
        def run_study(*args, **kwargs):
            raise exc

        return run_study

    gw = Gateway(SimpleNamespace(metrics=None), PacsSettings(root=tmp_path, quiet_s=0.0))
    inst = gw.receive(_raw("CT_small.dcm"))
    monkeypatch.setattr(route, "run_study", raising(Cancelled()))
    gw._process(inst.study_uid)
    assert gw.inbox.complete() == [inst.study_uid]  # resumed at the next start
    assert gw.jobs.list()[0]["state"] not in FINAL
    monkeypatch.setattr(route, "run_study", raising(ValueError("boom")))
    gw._process(inst.study_uid)
    assert gw.inbox.complete() == []  # not retried forever
    (job,) = gw.jobs.list()
    assert job["state"] == "failed" and job["reason"] == "processing failed (ValueError)"
