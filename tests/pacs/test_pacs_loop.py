"""Issue #20: the whole PACS loop against a real Orthanc and real clients. Orthanc pushes a
multi-series phantom CT study to anatomix (DICOMweb STOW-RS and C-STORE), dcmtk's ``storescu``
sends a chest CR, ``dicomweb-client`` stores a mixed batch; the SEG and SR that come back to
Orthanc are compared with what the REST API answers for the same input. A second server shows
that an acknowledged study survives a SIGKILL and that results wait for a destination that is
down; an AE title off the allow-list is refused at association.
"""

from __future__ import annotations

import io
import socket
import subprocess

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from imaging.phantoms import make_chest_ct
from imaging.writers import ct_slice_datasets
from serve import launch
from serve.pacs.sr import sr_findings

from .orthanc import Orthanc, require_pacs, start_orthanc

pytestmark = pytest.mark.slow
KEY = "pacs-test-key-0123456789"
HEADERS = {"X-API-Key": KEY}
PATIENT, PATIENT_ID = "Zanzibar^Quixote", "PID-7Q3X-ZANZIBAR"  # must never reach a log or answer
AET = "ANATOMIX"
SC = "1.2.840.10008.5.1.4.1.1.7"


def _dcm(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def phantom_study(seed: int = 5) -> dict:
    """An axial CT series (20 slices), a 3-slice localizer and a 3-image secondary capture, one
    study; the patient's name and ID planted in every file."""
    ct = make_chest_ct(seed, shape=(20, 48, 48), findings=("nodule",))
    study = pydicom.uid.generate_uid()
    axial, loc, sc = (pydicom.uid.generate_uid() for _ in range(3))
    series = {uid: ct_slice_datasets(ct.volume, study_uid=study, series_uid=uid)
              for uid in (axial, loc, sc)}  # fmt: skip
    series[loc], series[sc] = series[loc][:3], series[sc][:3]
    for ds in series[loc]:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    for ds in series[sc]:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SC
    for items in series.values():
        for ds in items:
            ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
    files = {uid: [_dcm(ds) for ds in items] for uid, items in series.items()}
    return {"study": study, "axial": axial, "localizer": loc, "sc": sc, "files": files}


def _upload_study(orthanc: Orthanc, study: dict) -> str:
    for items in study["files"].values():
        for data in items:
            orthanc.upload(data)
    return orthanc.post("/tools/lookup", content=study["study"].encode()).json()[0]["ID"]


def _results(orthanc: Orthanc, study_uid: str, modality: str) -> list[dict]:
    """The study's instances of ``modality`` in Orthanc (SEG, SR)."""
    query = {"StudyInstanceUID": study_uid, "Modality": modality}
    ids = orthanc.post("/tools/find", json={"Level": "Instance", "Query": query}).json()
    return [{"ID": i} for i in ids]


def _api_seg(url: str, files: list[bytes]) -> pydicom.Dataset:
    parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    r = httpx.post(f"{url}/v1/ct/segment.dcm", files=parts, headers=HEADERS, timeout=300)
    assert r.status_code == 200, r.text
    return pydicom.dcmread(io.BytesIO(r.content))


def _frames_by_source(seg: pydicom.Dataset) -> dict[str, np.ndarray]:
    """SEG frame per referenced source SOP instance (highdicom writes one frame per slice)."""
    masks = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = {}
    for frame, item in zip(masks, seg.PerFrameFunctionalGroupsSequence, strict=True):
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[str(src)] = frame
    return out


def _assert_same_masks(got: pydicom.Dataset, want: pydicom.Dataset) -> None:
    a, b = _frames_by_source(got), _frames_by_source(want)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(b[k].any() for k in b), "the reference mask is empty: the comparison shows nothing"


def _referenced_series(seg: pydicom.Dataset) -> set[str]:
    return {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}


def _jobs(url: str) -> dict:
    r = httpx.get(f"{url}/v1/jobs", headers=HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _job_for(url: str, study_uid: str) -> dict | None:
    return next((j for j in _jobs(url)["jobs"] if j["study_uid"] == study_uid), None)


def _no_identifiers(*texts: str) -> None:
    for text in texts:
        assert PATIENT not in text and PATIENT_ID not in text and "Zanzibar" not in text


@pytest.fixture(scope="module")
def loop(orthanc, exports, tmp_path_factory):  # orthanc first: no exports built to skip
    """anatomix with both receivers on, delivering by STOW-RS to the module's Orthanc, which
    knows anatomix as a DICOMweb server and as a DICOM modality."""
    dicom_port = launch.free_port()
    env = {
        "ANATOMIX_API_KEYS": KEY,
        "ANATOMIX_PACS_DIR": str(tmp_path_factory.mktemp("pacs")),
        "ANATOMIX_STUDY_QUIET_S": "1.5",
        "ANATOMIX_DICOM_AET": AET,
        "ANATOMIX_DICOM_PORT": str(dicom_port),
        "ANATOMIX_DICOM_ALLOW": f"{orthanc.aet}@127.0.0.1,STORESCU@127.0.0.1,DWCLIENT",
        "ANATOMIX_DESTINATIONS": f"dicomweb+http://127.0.0.1:{orthanc.http_port}/dicom-web",
        "ANATOMIX_UID_ROOT": "1.2.826.0.1.3680043.10.999",
        "ANATOMIX_MAX_FILES": "64",
    }
    log = tmp_path_factory.mktemp("log") / "server.log"
    srv = launch.start(exports, log, env=env)
    # Orthanc's DICOMweb client sends the API key anatomix requires (README: Connect to a PACS)
    orthanc.set_dicomweb_server("anatomix", f"{srv.url}/dicomweb/")
    server = {"Url": f"{srv.url}/dicomweb/", "HttpHeaders": HEADERS}
    orthanc._checked(orthanc._request("PUT", "/dicom-web/servers/anatomix", json=server))
    orthanc.set_modality("anatomix", AET, "127.0.0.1", dicom_port)
    yield srv, dicom_port, log
    srv.stop()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", dicom_port))  # stopped with the service: nothing listens


def test_orthanc_stow_push_of_a_study_gives_a_seg_on_the_axial_series(loop, orthanc):
    srv, _, log = loop
    study = phantom_study(5)
    oid = _upload_study(orthanc, study)
    orthanc.post("/dicom-web/servers/anatomix/stow", json={"Resources": [oid]})
    segs = orthanc.wait_for(lambda: _results(orthanc, study["study"], "SEG"), 120, "the SEG")
    assert len(segs) == 1
    seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(segs[0]["ID"])))
    assert _referenced_series(seg) == {study["axial"]}
    assert str(seg.SOPInstanceUID).startswith("1.2.826.0.1.3680043.10.999.")
    _assert_same_masks(seg, _api_seg(srv.url, study["files"][study["axial"]]))
    job = _job_for(srv.url, study["study"])
    assert job["state"] == "delivered", job
    assert set(job["series"].values()) == {study["axial"]}
    (rejected,) = job["rejected"].values()
    assert rejected == {
        study["localizer"]: "ImageType includes LOCALIZER",
        study["sc"]: f"SOP class {SC} is not accepted (secondary capture or similar)",
    }
    assert job["instances"] == 26
    assert set(job["timings_ms"]) >= {"receive", "assemble", "infer", "write", "deliver"}
    assert httpx.get(f"{srv.url}/v1/jobs/{job['id']}", headers=HEADERS).json() == job
    metrics = httpx.get(f"{srv.url}/metrics").text
    for line in ('anatomix_pacs_instances_total{outcome="received",receiver="stow"}',
                 'anatomix_pacs_studies_total{outcome="processed"}',
                 'anatomix_pacs_deliveries_total{outcome="delivered"}'):  # fmt: skip
        assert float(metrics.split(line, 1)[1].split()[0]) >= 1, line
    _no_identifiers(str(_jobs(srv.url)), srv.log())


def test_the_same_study_pushed_by_c_store_gives_the_same_seg(loop, orthanc):
    srv, _, _ = loop
    study = phantom_study(5)  # the same images under new UIDs: a study anatomix has not seen
    oid = _upload_study(orthanc, study)
    r = orthanc.post("/modalities/anatomix/store", json={"Resources": [oid], "Synchronous": True})
    assert r.json()["FailedInstancesCount"] == 0, r.text
    segs = orthanc.wait_for(lambda: _results(orthanc, study["study"], "SEG"), 120, "the SEG")
    seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(segs[0]["ID"])))
    assert _referenced_series(seg) == {study["axial"]}
    _assert_same_masks(seg, _api_seg(srv.url, study["files"][study["axial"]]))


def test_storescu_sends_a_chest_cr_and_an_sr_with_the_api_findings_comes_back(loop, orthanc):
    srv, dicom_port, _ = loop
    path = get_testdata_file("RG1_UNCR.dcm")
    source = pydicom.dcmread(path, stop_before_pixels=True)
    run = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", AET, "127.0.0.1", str(dicom_port), path],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    srs = orthanc.wait_for(lambda: _results(orthanc, source.StudyInstanceUID, "SR"), 120, "the SR")
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(srs[0]["ID"])))
    with open(path, "rb") as f:
        files = [("files", ("RG1_UNCR.dcm", f.read(), "application/dicom"))]
    api = httpx.post(f"{srv.url}/v1/cxr/classify", files=files, headers=HEADERS, timeout=120)
    assert api.status_code == 200, api.text
    want = api.json()["results"][0]["findings"]
    assert sr_findings(sr) == want
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_dicomweb_client_batch_of_good_and_bad_instances(loop, orthanc):
    srv, _, _ = loop
    study = phantom_study(7)
    good = [pydicom.dcmread(io.BytesIO(d)) for d in study["files"][study["axial"]]]
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # a SOP class no model takes
    other = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # another study than the URL's
    client = DICOMwebClient(f"{srv.url}/dicomweb", headers=HEADERS)
    answer = client.store_instances(good + [mr, other], study_instance_uid=study["study"])
    failed = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
              for i in answer.FailedSOPSequence}  # fmt: skip
    assert failed == {mr.SOPInstanceUID: 0x0122, other.SOPInstanceUID: 0xA901}
    stored = {str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in good}
    orthanc.wait_for(lambda: _results(orthanc, study["study"], "SEG"), 120, "the good ones' SEG")
    # the HTTP status of a mixed batch is 202; of a batch with nothing stored, 409
    r = httpx.post(
        f"{srv.url}/dicomweb/studies", headers=HEADERS | {"Content-Type": _related("b0")},
        content=_body("b0", [b"not dicom at all" * 10, _dcm(mr)]), timeout=30,
    )  # fmt: skip
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/dicom+json")
    reasons = [i["00081197"]["Value"][0] for i in r.json()["00081198"]["Value"]]
    assert reasons == [0xC000, 0x0122]
    r = httpx.post(
        f"{srv.url}/dicomweb/studies", headers=HEADERS | {"Content-Type": _related("b1")},
        content=_body("b1", [_dcm(good[0]), _dcm(mr)]), timeout=30,
    )  # fmt: skip
    assert r.status_code == 202, r.text
    assert httpx.post(f"{srv.url}/dicomweb/studies", content=b"x", timeout=10).status_code == 401


def _related(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def _body(boundary: str, parts: list[bytes]) -> bytes:
    out = b""
    for data in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_a_calling_ae_title_off_the_allow_list_is_rejected_at_association(loop):
    _, dicom_port, _ = loop
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dicom_port, ae_title=AET)
    assert assoc.is_rejected
    ae.ae_title = "STORESCU"
    assoc = ae.associate("127.0.0.1", dicom_port, ae_title=AET)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


@pytest.fixture
def pacs_available():
    require_pacs()


def test_a_killed_server_processes_an_acknowledged_study_and_results_wait_for_a_down_pacs(
    pacs_available, exports, tmp_path_factory
):
    """A study acknowledged (STOW-RS 200) and the server SIGKILLed before the study was complete
    is processed after a restart; its SEG waits, retried, while the PACS is down and arrives
    once it is back (by C-STORE), once."""
    pacs = start_orthanc(tmp_path_factory.mktemp("orthanc-b"))
    env = {
        "ANATOMIX_API_KEYS": KEY,
        "ANATOMIX_PACS_DIR": str(tmp_path_factory.mktemp("pacs-b")),
        "ANATOMIX_STUDY_QUIET_S": "20",  # long enough to kill the server before it completes
        "ANATOMIX_DESTINATIONS": f"dicom://{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
        "ANATOMIX_DELIVERY_BACKOFF_S": "0.5,1,1",
        "ANATOMIX_DELIVERY_DEAD_RETRY_S": "2",
        "ANATOMIX_MAX_FILES": "64",
    }
    log = tmp_path_factory.mktemp("log-b") / "server.log"
    study = phantom_study(9)
    srv = launch.start(exports, log, env=env)
    try:
        files = [d for items in study["files"].values() for d in items]
        r = httpx.post(
            f"{srv.url}/dicomweb/studies/{study['study']}",
            headers=HEADERS | {"Content-Type": _related("k")}, content=_body("k", files),
            timeout=60,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        srv.kill()
        pacs.stop()  # the destination is down when the study is processed
        srv = launch.start(exports, log, env=env | {"ANATOMIX_STUDY_QUIET_S": "1"})
        job = pacs.wait_for(lambda: (j := _job_for(srv.url, study["study"])) and
                            j["state"] == "delivering" and j.get("reason") and j,
                            120, "the job to wait for the PACS")  # fmt: skip
        assert "delivery failing" in job["reason"]
        pacs.start()
        pacs.wait_for(lambda: _results(pacs, study["study"], "SEG"), 120, "the SEG after restart")
        pacs.wait_for(lambda: _job_for(srv.url, study["study"])["state"] == "delivered", 60,
                      "the job to be delivered")  # fmt: skip
        assert len(_results(pacs, study["study"], "SEG")) == 1
        assert len([j for j in _jobs(srv.url)["jobs"] if j["study_uid"] == study["study"]]) == 1
        _no_identifiers(srv.log())
    finally:
        srv.stop()
        pacs.stop()
