"""Result delivery (issue #20): ``ANATOMIX_DESTINATIONS`` parsing, and :func:`send` checked
against real peers, a STOW-RS server over HTTP and a pynetdicom storage SCP, reading what they
received with pydicom."""

from __future__ import annotations

import base64
import email.message
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID, AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from serve.pacs.destinations import DeliveryError, Destination, parse_destinations, send

# different SOP classes and transfer syntaxes; the RGB one is larger than a 64 KiB read
FILES = ["CT_small.dcm", "MR_small_jp2klossless.dcm", "examples_rgb_color.dcm"]


def _paths(names=FILES) -> list[Path]:
    return [Path(get_testdata_file(n)) for n in names]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- parse_destinations -------------------------------------------------------------------------


def test_parse_mixed_entries_with_blanks_around_them():
    dests = parse_destinations(
        " dicomweb+http://orthanc:8042/dicom-web/ ,dicom://PACS_1@10.0.0.5:104,"
        "dicomweb+https://pacs.example.org:443 , dicom://SCP@[::1]:11112,"
    )
    assert [d.kind for d in dests] == ["dicomweb", "dicom", "dicomweb", "dicom"]
    web, dimse, web_tls, v6 = dests
    assert web.url == "http://orthanc:8042/dicom-web" and web.auth is None
    assert web.name == "dicomweb+http://orthanc:8042/dicom-web"
    assert (dimse.aet, dimse.host, dimse.port) == ("PACS_1", "10.0.0.5", 104)
    assert dimse.name == "dicom://PACS_1@10.0.0.5:104"
    assert web_tls.url == "https://pacs.example.org:443"
    assert (v6.host, v6.port, v6.name) == ("::1", 11112, "dicom://SCP@[::1]:11112")
    assert parse_destinations("") == [] and parse_destinations("  ") == []
    (longest,) = parse_destinations("dicom://ABCDEFGHIJKLMNOP@h:1")  # 16 characters, the most
    assert longest.aet == "ABCDEFGHIJKLMNOP"


def test_userinfo_becomes_basic_auth_and_never_shows_in_the_name():
    (dest,) = parse_destinations("dicomweb+http://alice:s3cr%40t@host:8080/wado")
    assert dest.auth == "Basic " + base64.b64encode(b"alice:s3cr@t").decode()
    assert dest.url == "http://host:8080/wado"
    for text in (dest.name, repr(dest), str(dest)):
        assert "s3cr" not in text and "alice" not in text


def test_the_global_authorization_applies_to_dicomweb_without_userinfo():
    dests = parse_destinations(
        "dicomweb+http://a:1/x,dicomweb+http://u:p@b:2/y,dicom://AE@c:3",
        authorization="Bearer xyz",
    )
    assert [d.auth for d in dests] == [
        "Bearer xyz",
        "Basic " + base64.b64encode(b"u:p").decode(),
        None,
    ]


@pytest.mark.parametrize(
    "entry, why",
    [
        ("ftp://bob:hunter2@host:21/x", "scheme"),
        ("http://bob:hunter2@host:80/x", "scheme"),
        ("dicomweb+http://bob:hunter2@host/x", "port"),
        ("dicomweb+http://bob:hunter2@:8080/x", "host"),
        ("dicomweb+http://bob:hunter2@host:0/x", "port"),
        ("dicomweb+http://bob:hunter2@host:65536/x", "port"),
        ("dicomweb+http://bob:hunter2@host:http/x", "port"),
        ("dicom://@host:104", "AE title"),
        ("dicom://host:104", "AE title"),
        ("dicom://ABCDEFGHIJKLMNOPQ@host:104", "16"),
        ("dicom://A\\B@host:104", "AE title"),
        ("dicom://A\x01B@host:104", "control"),
        ("dicom://AE@host", "port"),
        ("dicom://AE@host:99999", "port"),
    ],
)
def test_a_malformed_entry_is_refused_naming_it_without_the_password(entry, why):
    with pytest.raises(ValueError) as err:
        parse_destinations(f"dicom://GOOD@h:104, {entry}")
    message = str(err.value)
    assert why in message
    assert "hunter2" not in message
    # the entry is named, so the operator knows which one
    assert "host" in message or "ftp" in message


def test_a_password_cut_by_a_comma_is_not_shown():
    with pytest.raises(ValueError) as err:
        parse_destinations("dicomweb+http://bob:hun,ter2@host:80/x")
    assert "hun" not in str(err.value)


def test_a_repeated_destination_is_refused_even_with_other_credentials():
    with pytest.raises(ValueError, match="twice") as err:
        parse_destinations("dicomweb+http://a:pw1@h:80/x, dicomweb+http://b:pw2@h:80/x/")
    assert "pw1" not in str(err.value) and "pw2" not in str(err.value)
    with pytest.raises(ValueError, match="twice"):
        parse_destinations("dicom://AE@h:104,dicom://AE@h:104")


# --- STOW-RS ------------------------------------------------------------------------------------


class _Stow:
    """A STOW-RS endpoint on a free port: records each request and answers ``status``."""

    def __init__(self, status: int = 200, *, hang: bool = False):
        self.status, self.hang, self.requests = status, hang, []
        self.release = threading.Event()
        stow = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                stow.requests.append((self.path, dict(self.headers), body))
                if stow.hang:
                    stow.release.wait(10)
                payload = b'{"00081199": {"vr": "SQ"}}'
                self.send_response(stow.status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stow_server():
    servers = []

    def make(status=200, **kw):
        servers.append(_Stow(status, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _parts(content_type: str, body: bytes) -> tuple[str | None, list[tuple[str, bytes]]]:
    """The ``type`` parameter and the (content type, bytes) of each part of a multipart/related
    body, split by RFC 2046's rules, independently of the sender's code."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    assert header.get_content_type() == "multipart/related"
    delimiter = b"--" + header.get_param("boundary").encode()
    segments = body.split(b"\r\n" + delimiter)
    assert segments[0].startswith(delimiter + b"\r\n")
    segments[0] = segments[0][len(delimiter) :]
    assert segments[-1] == b"--\r\n", "the body must end with the close delimiter"
    parts = []
    for seg in segments[:-1]:
        assert seg.startswith(b"\r\n")
        head, _, data = seg[2:].partition(b"\r\n\r\n")
        part = email.message_from_bytes(head + b"\r\n\r\n")
        parts.append((part.get_content_type(), data))
    return header.get_param("type"), parts


def test_stow_posts_every_file_as_a_part_that_pydicom_reads_back(stow_server):
    server = stow_server()
    (dest,) = parse_destinations(f"dicomweb+http://127.0.0.1:{server.port}/dicom-web")
    send(dest, _paths(), timeout=5)
    ((path, headers, body),) = server.requests
    assert path == "/dicom-web/studies"
    assert headers["Accept"] == "application/dicom+json"
    assert "Authorization" not in headers
    kind, parts = _parts(headers["Content-Type"], body)
    assert kind == "application/dicom"
    assert [ct for ct, _ in parts] == ["application/dicom"] * len(FILES)
    for (_, data), path in zip(parts, _paths(), strict=True):
        assert data == path.read_bytes()
        got, want = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(path)
        assert got.SOPInstanceUID == want.SOPInstanceUID
        assert got.PixelData == want.PixelData


def test_stow_sends_the_authorization_header(stow_server):
    server = stow_server()
    dests = parse_destinations(
        f"dicomweb+http://127.0.0.1:{server.port}/a,dicomweb+http://u:pw@127.0.0.1:{server.port}/b",
        authorization="Bearer t0ken",
    )
    for dest in dests:
        send(dest, _paths(["CT_small.dcm"]), timeout=5)
    got = [(p, h.get("Authorization")) for p, h, _ in server.requests]
    assert got == [
        ("/a/studies", "Bearer t0ken"),
        ("/b/studies", "Basic " + base64.b64encode(b"u:pw").decode()),
    ]


@pytest.mark.parametrize("status", [202, 409, 500, 401, 302])
def test_stow_other_than_200_is_a_delivery_error(stow_server, status):
    server = stow_server(status)
    (dest,) = parse_destinations(f"dicomweb+http://user:pa55word@127.0.0.1:{server.port}/x")
    with pytest.raises(DeliveryError) as err:
        send(dest, _paths(["CT_small.dcm"]), timeout=5)
    assert str(status) in err.value.detail
    assert "pa55word" not in err.value.detail and dest.auth not in err.value.detail
    assert len(server.requests) == 1


def test_stow_to_a_closed_port_or_a_silent_server_is_a_delivery_error(stow_server):
    closed = Destination(kind="dicomweb", url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(DeliveryError, match="ConnectError"):
        send(closed, _paths(["CT_small.dcm"]), timeout=2)
    silent = stow_server(hang=True)
    dest = Destination(kind="dicomweb", url=f"http://127.0.0.1:{silent.port}")
    with pytest.raises(DeliveryError, match="Timeout"):
        send(dest, _paths(["CT_small.dcm"]), timeout=0.5)


# --- C-STORE ------------------------------------------------------------------------------------


class _Scp:
    """A pynetdicom storage SCP on a free port that keeps what it received."""

    def __init__(self, *, status=0x0000, contexts=None, called_aet: str | None = None):
        self.received: list[tuple[pydicom.Dataset, UID, str]] = []
        ae = AE(ae_title=called_aet or "STORE_SCP")
        ae.require_called_aet = called_aet is not None
        for cls, syntaxes in contexts or [
            (cx.abstract_syntax, AllTransferSyntaxes) for cx in StoragePresentationContexts
        ]:
            ae.add_supported_context(cls, syntaxes)

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            calling = event.assoc.requestor.ae_title
            self.received.append((ds, event.context.transfer_syntax, calling))
            return status

        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        self.port = self.server.server_address[1]

    def close(self):
        self.server.shutdown()


@pytest.fixture
def scp():
    servers = []

    def make(**kw):
        servers.append(_Scp(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_c_store_delivers_each_file_in_its_own_transfer_syntax(scp):
    server = scp()
    (dest,) = parse_destinations(f"dicom://STORE_SCP@127.0.0.1:{server.port}")
    send(dest, _paths(), calling_aet="ANATOMIX_T", timeout=5)
    assert len(server.received) == len(FILES)
    for (got, syntax, calling), path in zip(server.received, _paths(), strict=True):
        want = pydicom.dcmread(path)
        assert syntax == want.file_meta.TransferSyntaxUID
        assert calling == "ANATOMIX_T"
        assert got.SOPClassUID == want.SOPClassUID
        assert got.SOPInstanceUID == want.SOPInstanceUID
        assert got.PixelData == want.PixelData
        assert got == want  # every element of the data set


def test_c_store_decompresses_for_an_scp_that_takes_only_uncompressed(scp):
    server = scp(contexts=[(MRImageStorage, [ImplicitVRLittleEndian])])
    dest = Destination(kind="dicom", aet="ANY", host="127.0.0.1", port=server.port)
    path = _paths(["MR_small_jp2klossless.dcm"])
    send(dest, path, timeout=5)
    ((got, syntax, _),) = server.received
    want = pydicom.dcmread(path[0])
    assert syntax == ImplicitVRLittleEndian
    assert got.SOPInstanceUID == want.SOPInstanceUID
    assert (got.pixel_array == want.pixel_array).all()  # lossless: the same pixels


def test_c_store_of_an_uncompressed_file_converts_to_what_the_scp_accepts(scp):
    server = scp(contexts=[(CTImageStorage, [ImplicitVRLittleEndian])])
    dest = Destination(kind="dicom", aet="ANY", host="127.0.0.1", port=server.port)
    send(dest, _paths(["CT_small.dcm"]), timeout=5)
    ((got, syntax, _),) = server.received
    assert pydicom.dcmread(_paths(["CT_small.dcm"])[0]).file_meta.TransferSyntaxUID == (
        ExplicitVRLittleEndian
    )
    assert syntax == ImplicitVRLittleEndian
    assert got.PixelData == pydicom.dcmread(_paths(["CT_small.dcm"])[0]).PixelData


def test_c_store_rejected_association_is_a_delivery_error(scp):
    server = scp(called_aet="RIGHT_AET")
    dest = Destination(kind="dicom", aet="WRONG_AET", host="127.0.0.1", port=server.port)
    with pytest.raises(DeliveryError, match="rejected"):
        send(dest, _paths(["CT_small.dcm"]), timeout=5)
    assert server.received == []
    # the same SCP, called by its name, stores it: the rejection was the AE title's
    send(Destination(kind="dicom", aet="RIGHT_AET", host="127.0.0.1", port=server.port),
         _paths(["CT_small.dcm"]), timeout=5)  # fmt: skip
    assert len(server.received) == 1


def test_c_store_failure_status_is_a_delivery_error_and_warnings_count_as_stored(scp):
    failing = scp(status=0xA700)
    dest = Destination(kind="dicom", aet="ANY", host="127.0.0.1", port=failing.port)
    with pytest.raises(DeliveryError, match="0xA700"):
        send(dest, _paths(["CT_small.dcm"]), timeout=5)
    coercing = scp(status=0xB000)
    dest = Destination(kind="dicom", aet="ANY", host="127.0.0.1", port=coercing.port)
    send(dest, _paths(["CT_small.dcm"]), timeout=5)
    assert len(coercing.received) == 1


def test_c_store_with_no_accepted_context_or_no_peer_is_a_delivery_error(scp):
    ct_only = scp(contexts=[(CTImageStorage, AllTransferSyntaxes)])
    dest = Destination(kind="dicom", aet="ANY", host="127.0.0.1", port=ct_only.port)
    with pytest.raises(DeliveryError, match="no presentation context"):
        send(dest, _paths(["MR_small.dcm"]), timeout=5)
    # CT accepted, MR not: the association is up, and the MR file cannot go
    with pytest.raises(DeliveryError, match="no presentation context accepted for MR"):
        send(dest, _paths(["CT_small.dcm", "MR_small.dcm"]), timeout=5)
    assert len(ct_only.received) == 1
    nobody = Destination(kind="dicom", aet="ANY", host="127.0.0.1", port=_free_port())
    with pytest.raises(DeliveryError, match="association"):
        send(nobody, _paths(["CT_small.dcm"]), timeout=2)
