"""The Orthanc fixture itself, without anatomix: Orthanc stores and serves instances, pushes them by
STOW-RS (its DICOMweb client) and by C-STORE, accepts C-STOREs, survives a restart with its data,
and ``require_pacs`` skips or fails as documented. The PACS tests of anatomix build on all this."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage

from serve.launch import free_port

from . import orthanc as orthanc_module
from .orthanc import Orthanc

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


def _ct_with_new_uid() -> pydicom.Dataset:
    """CT_small as a distinct instance (its own SOPInstanceUID): tests share one Orthanc."""
    ds = pydicom.dcmread(CT_SMALL)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def ct(orthanc: Orthanc) -> tuple[pydicom.Dataset, str]:
    """A fresh CT instance uploaded to Orthanc: the dataset and its Orthanc id."""
    ds = _ct_with_new_uid()
    return ds, orthanc.upload(_to_bytes(ds))


def test_upload_then_find_and_read_back(orthanc: Orthanc) -> None:
    original = pydicom.dcmread(CT_SMALL)
    orthanc_id = orthanc.upload(CT_SMALL.read_bytes())

    (found,) = orthanc.instances(SOPInstanceUID=original.SOPInstanceUID)
    assert found["ID"] == orthanc_id
    assert found["SOPClassUID"] == original.SOPClassUID
    assert found["Modality"] == "CT"
    assert found["SeriesInstanceUID"] == original.SeriesInstanceUID
    assert orthanc.instances(Modality="SEG") == []

    stored = pydicom.dcmread(BytesIO(orthanc.instance_file(orthanc_id)))
    assert stored.SOPInstanceUID == original.SOPInstanceUID
    assert stored.PixelData == original.PixelData


# ---- STOW-RS: Orthanc's DICOMweb client -> a recording HTTP server ----------------------------


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StowRecorder:
    url: str
    requests: list[Recorded] = field(default_factory=list)


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    """The request body, de-chunked: Orthanc's client sends ``Transfer-Encoding: chunked``."""
    if handler.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    body = b""
    while size := int(handler.rfile.readline().split(b";")[0], 16):
        body += handler.rfile.read(size)
        handler.rfile.readline()  # the CRLF after each chunk
    while handler.rfile.readline() not in (b"\r\n", b""):  # trailers
        pass
    return body


@pytest.fixture
def stow_recorder() -> Iterator[StowRecorder]:
    """An HTTP server on a free loopback port that records each POST and answers it as a STOW-RS
    receiver that stored every part."""
    port = free_port()
    recorder = StowRecorder(f"http://127.0.0.1:{port}/dicomweb/")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            request = Recorded(self.path, dict(self.headers), _read_body(self))
            recorder.requests.append(request)
            # Orthanc's STOW-RS client fails the push unless the answer's ReferencedSOPSequence
            # (0008,1199) has one item per instance it sent (orthanc.py's module docstring).
            parts = _multipart_parts(request.headers.get("Content-Type", ""), request.body)
            answer = json.dumps({"00081199": {"vr": "SQ", "Value": [{}] * len(parts)}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _multipart_parts(content_type: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """(headers, payload) of each part of a multipart body."""
    params = dict(
        p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p
    )  # fmt: skip
    if "boundary" not in params:
        return []
    boundary = params["boundary"].strip('"').encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        headers, _, payload = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts


def test_orthanc_stow_push_reaches_the_receiver(
    orthanc: Orthanc, stow_recorder: StowRecorder, ct: tuple[pydicom.Dataset, str]
) -> None:
    ds, orthanc_id = ct
    orthanc.set_dicomweb_server("recorder", stow_recorder.url)

    # Resources may be studies, series or instances (a study would send every CT_small copy the
    # other tests stored: they share its StudyInstanceUID).
    answer = orthanc.post("/dicom-web/servers/recorder/stow", json={"Resources": [orthanc_id]})
    answer = answer.json()

    assert answer["InstancesCount"] == "1"  # synchronous: done once the call returns
    (request,) = stow_recorder.requests
    assert request.path == "/dicomweb/studies"  # <registered URL>studies
    content_type = request.headers["Content-Type"]
    assert content_type.startswith("multipart/related")
    assert 'type="application/dicom"' in content_type
    (part,) = _multipart_parts(content_type, request.body)
    assert b"application/dicom" in part[0]
    received = pydicom.dcmread(BytesIO(part[1]))
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    assert received.PixelData == ds.PixelData


# ---- C-STORE both ways ------------------------------------------------------------------------


@pytest.fixture
def storage_scp() -> Iterator[tuple[str, int, list[pydicom.Dataset]]]:
    """A pynetdicom storage SCP on a free loopback port: (AET, port, datasets received)."""
    received: list[pydicom.Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title="TESTSCP")
    ae.supported_contexts = StoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield "TESTSCP", port, received
    finally:
        server.shutdown()


def test_orthanc_c_store_push_reaches_the_scp(
    orthanc: Orthanc,
    storage_scp: tuple[str, int, list[pydicom.Dataset]],
    ct: tuple[pydicom.Dataset, str],
) -> None:
    aet, port, received = storage_scp
    ds, orthanc_id = ct
    orthanc.set_modality("scp", aet, "127.0.0.1", port)

    answer = orthanc.post("/modalities/scp/store", json={"Resources": [orthanc_id]}).json()

    assert answer["InstancesCount"] == 1 and answer["FailedInstancesCount"] == 0
    (got,) = received  # synchronous: already there
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert got.PixelData == ds.PixelData


@pytest.mark.parametrize("client", ["pynetdicom", "storescu"])
def test_c_store_into_orthanc(orthanc: Orthanc, client: str, tmp_path: Path) -> None:
    ds = _ct_with_new_uid()
    if client == "pynetdicom":
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(ds).Status == 0x0000
        finally:
            assoc.release()
    else:
        path = tmp_path / "ct.dcm"
        ds.save_as(path, enforce_file_format=True)
        cmd = ["storescu", "-aet", "TESTSCU", "-aec", orthanc.aet, "127.0.0.1",
               str(orthanc.dicom_port), str(path)]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    (found,) = orthanc.instances(SOPInstanceUID=ds.SOPInstanceUID)
    stored = pydicom.dcmread(BytesIO(orthanc.instance_file(found["ID"])))
    assert stored.PixelData == ds.PixelData


# ---- restart ----------------------------------------------------------------------------------


def test_stop_then_start_keeps_ports_config_and_data(
    orthanc: Orthanc, ct: tuple[pydicom.Dataset, str]
) -> None:
    ds, orthanc_id = ct
    orthanc.set_modality("later", "LATER", "127.0.0.1", 11112)
    url, dicom_port = orthanc.url, orthanc.dicom_port

    orthanc.stop()
    orthanc.stop()  # idempotent
    assert not orthanc.running
    for port in (orthanc.http_port, orthanc.dicom_port):  # nothing listens any more
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
    with pytest.raises(AssertionError, match="Orthanc is down"):
        orthanc.wait_for(lambda: orthanc.get("/system"), timeout=0.5, what="Orthanc is down")
    orthanc.start()

    assert (orthanc.url, orthanc.dicom_port) == (url, dicom_port)
    assert orthanc.get("/system").json()["DicomPort"] == dicom_port
    (found,) = orthanc.instances(SOPInstanceUID=ds.SOPInstanceUID)
    assert found["ID"] == orthanc_id
    assert "later" in orthanc.get("/modalities").json()


# ---- require_pacs -----------------------------------------------------------------------------


def test_require_pacs_skips_or_fails_when_orthanc_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(orthanc_module, "missing", lambda: "no Orthanc here")
    monkeypatch.delenv("ANATOMIX_REQUIRE_PACS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Orthanc here"):
        orthanc_module.require_pacs()

    monkeypatch.setenv("ANATOMIX_REQUIRE_PACS", "1")
    with pytest.raises(pytest.fail.Exception, match="ANATOMIX_REQUIRE_PACS=1 but no Orthanc here"):
        orthanc_module.require_pacs()

    monkeypatch.setattr(orthanc_module, "missing", lambda: None)
    orthanc_module.require_pacs()  # installed: neither


def test_missing_names_what_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orthanc_module.shutil, "which", lambda name: None)
    reason = orthanc_module.missing()
    assert reason is not None
    assert "Orthanc" in reason and "storescu" in reason and "apt-get install" in reason
