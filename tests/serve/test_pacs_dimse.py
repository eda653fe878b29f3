"""The DIMSE receiver (serve/pacs/dimse.py): its allow-list syntax, C-ECHO and C-STORE from
pynetdicom and dcmtk clients (what arrives is compared with the files sent, read by pydicom), the
association policy (allow-list, called AE title, association limit), failure statuses, and its
life cycle (the port freed on stop, a taken port refused on start)."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.association import Association

from serve.pacs.dimse import (
    SOP_CLASSES,
    TRANSFER_SYNTAXES,
    AllowRule,
    StoreSCP,
    parse_allow,
)
from serve.pacs.errors import Refused

AET = "ANATOMIX"
SCU = "TESTSCU"
VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
REQUIRE_ENV = "ANATOMIX_REQUIRE_PACS"

# (file of pydicom's / pydicom-data's test data, what it exercises): one per SOP class and one per
# transfer syntax the test data has for an accepted SOP class (JPEG-LS lossless has none).
SENT = [
    ("CT_small.dcm", "CT, Explicit VR Little Endian"),
    ("RG1_UNCR.dcm", "CR (a chest film of pydicom-data), Explicit VR LE"),
    ("eCT_Supplemental.dcm", "Enhanced CT"),
    ("693_J2KR.dcm", "CT, JPEG 2000 Lossless"),
    ("RG3_J2KI.dcm", "CR, JPEG 2000"),
    ("SC_rgb_rle.dcm", "Secondary Capture, RLE Lossless"),
    ("JPEG-LL.dcm", "JPEG Lossless SV1"),
    ("SC_rgb_jpeg_dcmtk.dcm", "JPEG Baseline"),
    ("JPGExtended.dcm", "JPEG Extended"),
    ("JPEGLSNearLossless_08.dcm", "JPEG-LS Near-Lossless"),
    ("SC_rgb_expb.dcm", "Explicit VR Big Endian"),
    ("image_dfl.dcm", "Deflated Explicit VR Little Endian"),
    ("SC_rgb_jpeg_dcmd.dcm", "Implicit VR Little Endian"),
]


def _path(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom / pydicom-data install")
    return str(path)


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``check()`` turns true within ``timeout`` s (the SCP's counters are updated in its
    own threads, a moment after the peer has its answer)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Inbox:
    """The ``store`` callback: keeps what arrives, or raises ``fail`` when set."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.fail: Exception | None = None
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            self.items.append(data)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[StoreSCP, Inbox]]:
    inbox = Inbox()
    allow = parse_allow(f"{SCU}@127.0.0.1, STORESCU@127.0.0.0/8, ECHOSCU")
    scp = StoreSCP(aet=AET, port=0, store=inbox, allow=allow, timeout_s=10)
    scp.start()
    yield scp, inbox
    scp.stop()


@pytest.fixture
def scp(receiver) -> Iterator[tuple[StoreSCP, Inbox]]:
    """The module's receiver with an empty inbox that stores again."""
    scp, inbox = receiver
    inbox.items.clear()
    inbox.fail = None
    yield scp, inbox
    inbox.fail = None


def _associate(
    port: int, contexts: list[tuple[str, str]], aet: str = SCU, called: str = AET
) -> Association:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    return ae.associate("127.0.0.1", port, ae_title=called)


def _rj(assoc: Association) -> tuple[int, int, int]:
    """The A-ASSOCIATE-RJ's (result, source, reason) the requestor received."""
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


@contextlib.contextmanager
def _logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture the receiver's log lines even where the service's logging set-up has stopped
    ``anatomix`` from propagating to the root logger (caplog's handler sits there)."""
    logger = logging.getLogger("anatomix.pacs")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="anatomix.pacs"):
            yield
    finally:
        logger.removeHandler(caplog.handler)


def _assert_same(received: bytes, path: str) -> None:
    """What the SCP handed to ``store`` is, read by pydicom, the file sent."""
    got = pydicom.dcmread(io.BytesIO(received))
    sent = pydicom.dcmread(path)
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert got.SOPClassUID == sent.SOPClassUID
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.PixelData == sent.PixelData
    assert _elements(got) == _elements(sent)


def _elements(ds: pydicom.Dataset) -> dict:
    """Every data element, less what a sender may drop on the way: group lengths (retired, PS3.5
    7.2; pynetdicom's SCU drops them) and the file's Data Set Trailing Padding (FFFC,FFFC)
    (PS3.10, dcmtk's storescu drops it)."""
    return {e.tag: e for e in ds if e.tag.element != 0 and e.tag != 0xFFFCFFFC}


# -- the allow-list ----------------------------------------------------------------------------


def test_parse_allow_forms():
    net = ipaddress.ip_network
    assert parse_allow("ORTHANC@10.1.2.3") == [AllowRule("ORTHANC", net("10.1.2.3/32"))]
    assert parse_allow("ORTHANC@10.1.0.0/16") == [AllowRule("ORTHANC", net("10.1.0.0/16"))]
    assert parse_allow("*@127.0.0.1") == [AllowRule(None, net("127.0.0.1/32"))]
    assert parse_allow("MODALITY") == [AllowRule("MODALITY", None)]
    assert parse_allow("*") == [AllowRule(None, None)]
    assert parse_allow(" A@::1 , B@[fd00::]/8 ,C, D@[::1]") == [
        AllowRule("A", net("::1/128")),
        AllowRule("B", net("fd00::/8")),
        AllowRule("C", None),
        AllowRule("D", net("::1/128")),
    ]
    # an AE title may contain '@': the address is what follows the last one
    assert parse_allow("X@Y@10.0.0.1") == [AllowRule("X@Y", net("10.0.0.1/32"))]


def test_allow_rule_matching():
    rule = parse_allow("ORTHANC@10.1.0.0/16")[0]
    assert rule.allows("ORTHANC", "10.1.200.3")
    assert rule.allows("ORTHANC  ", "10.1.0.1")  # AE titles are space-padded on the wire
    assert rule.allows("ORTHANC", "::ffff:10.1.0.5")  # an IPv4 peer seen by a dual-stack socket
    assert not rule.allows("ORTHANC", "10.2.0.1")
    assert not rule.allows("orthanc", "10.1.0.1")
    assert not rule.allows("OTHER", "10.1.0.1")
    assert not rule.allows("ORTHANC", "fd00::1")
    assert not rule.allows("ORTHANC", "not-an-address")
    anywhere = parse_allow("ORTHANC")[0]
    assert anywhere.allows("ORTHANC", "203.0.113.9") and not anywhere.allows("X", "127.0.0.1")


@pytest.mark.parametrize("text", ["", "  "])
def test_parse_allow_default_is_loopback_only(text):
    rules = parse_allow(text)
    assert {(r.aet, r.network) for r in rules} == {
        (None, ipaddress.ip_network("127.0.0.0/8")),
        (None, ipaddress.ip_network("::1/128")),
    }

    def allowed(aet: str, address: str) -> bool:
        return any(r.allows(aet, address) for r in rules)

    assert allowed("ANY", "127.0.0.1") and allowed("OTHER", "127.1.2.3") and allowed("X", "::1")
    assert not allowed("ANY", "10.0.0.1") and not allowed("ANY", "192.168.1.5")
    assert not allowed("ANY", "fd00::1")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("A,,B", "'A,,B'"),  # an empty entry
        ("A,", "'A,'"),
        ("@10.0.0.1", "'@10.0.0.1'"),  # an empty AE title
        ("ABCDEFGHIJKLMNOPQ@10.0.0.1", "'ABCDEFGHIJKLMNOPQ@10.0.0.1'"),  # 17 characters
        ("OK,A\\B@10.0.0.1", repr("A\\B@10.0.0.1")),  # a backslash
        ("A\x1bB", repr("A\x1bB")),  # a control character
        ("AÉ", "'AÉ'"),  # not the default repertoire
        ("ORTHANC@pacs.example.org", "'ORTHANC@pacs.example.org'"),  # no host names
        ("ORTHANC@10.0.0.0/33", "'ORTHANC@10.0.0.0/33'"),
        ("ORTHANC@10.1.2.3/16", "'ORTHANC@10.1.2.3/16'"),  # host bits set
        ("ORTHANC@", "'ORTHANC@'"),
    ],
)
def test_parse_allow_rejects_malformed_entries(text, named):
    with pytest.raises(ValueError) as err:
        parse_allow(text)
    assert named in str(err.value)


def test_accepted_classes_and_syntaxes():
    # the list, as UIDs from PS3.4 Annex B.5 and PS3.6 Annex A
    assert set(SOP_CLASSES) == {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # - For Processing
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    }
    assert set(TRANSFER_SYNTAXES) == {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE Lossless
    }


# -- C-ECHO and C-STORE from pynetdicom ------------------------------------------------------


def test_c_echo(scp):
    scp, _ = scp
    assoc = _associate(scp.port, [(VERIFICATION, "1.2.840.10008.1.2")])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.mark.parametrize(("name", "what"), SENT, ids=[n for n, _ in SENT])
def test_c_store_arrives_as_sent(scp, name, what):
    scp, inbox = scp
    path = _path(name)
    meta = pydicom.dcmread(path, stop_before_pixels=True)
    syntax = meta.file_meta.TransferSyntaxUID
    before = scp.counts()["stored"]
    # only the file's own syntax is proposed: its acceptance is what is tested
    assoc = _associate(scp.port, [(meta.SOPClassUID, syntax)])
    assert assoc.is_established
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    assert len(inbox.items) == 1
    _assert_same(inbox.items[0], path)
    assert scp.counts()["stored"] == before + 1


def test_other_sop_classes_are_not_accepted(scp):
    scp, inbox = scp
    assoc = _associate(scp.port, [(MR, "1.2.840.10008.1.2.1"), (CT, "1.2.840.10008.1.2.1")])
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CT]
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [MR]
    assoc.release()
    assert inbox.items == []


def test_refused_answers_its_status(scp):
    scp, inbox = scp
    path = _path("CT_small.dcm")
    before = scp.counts()
    assoc = _associate(scp.port, [(CT, "1.2.840.10008.1.2.1")])
    inbox.fail = Refused(0xA900, "not a CT of this study")
    rsp = assoc.send_c_store(path)
    assert rsp.Status == 0xA900
    assert rsp.ErrorComment == "not a CT of this study"
    inbox.fail = None  # the same association goes on
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    assert len(inbox.items) == 1
    _assert_same(inbox.items[0], path)
    after = scp.counts()
    assert after["refused"] == before["refused"] + 1
    assert after["stored"] == before["stored"] + 1


def test_unexpected_error_answers_cannot_understand(scp, caplog):
    scp, inbox = scp
    path = _path("CT_small.dcm")
    inbox.fail = KeyError("PatientName=DOE^JOHN")
    assoc = _associate(scp.port, [(CT, "1.2.840.10008.1.2.1")])
    with _logged(caplog):
        assert assoc.send_c_store(path).Status == 0xC000
    assoc.release()
    assert "KeyError" in caplog.text and SCU in caplog.text
    assert "DOE^JOHN" not in caplog.text  # the exception's text is never logged
    # the receiver keeps working, in a new association
    inbox.fail = None
    assoc = _associate(scp.port, [(CT, "1.2.840.10008.1.2.1")])
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    assert len(inbox.items) == 1


# -- the association policy ----------------------------------------------------------------------


def test_calling_aet_not_allowed_is_rejected(scp, caplog):
    scp, inbox = scp
    before = scp.counts()
    with _logged(caplog):
        assoc = _associate(scp.port, [(CT, "1.2.840.10008.1.2.1")], aet="INTRUDER")
        # rejected-permanent, DICOM UL service-user, calling AE title not recognised
        # (PS3.8 Table 9-21)
        assert assoc.is_rejected
        assert _rj(assoc) == (0x01, 0x01, 0x03)
        assert _eventually(lambda: scp.counts()["rejected"] == before["rejected"] + 1)
    assert "INTRUDER" in caplog.text and "127.0.0.1" in caplog.text
    assert scp.counts()["associations"] == before["associations"]
    assert inbox.items == []


def test_address_rule_excludes_loopback():
    inbox = Inbox()
    scp = StoreSCP(aet=AET, port=0, store=inbox, allow=parse_allow("ORTHANC@10.0.0.0/8"))
    scp.start()
    try:
        assoc = _associate(scp.port, [(CT, "1.2.840.10008.1.2.1")], aet="ORTHANC")
        assert assoc.is_rejected
        assert _rj(assoc) == (0x01, 0x01, 0x03)
        assert inbox.items == []
    finally:
        scp.stop()


def test_default_allows_any_aet_from_loopback():
    scp = StoreSCP(aet=AET, port=0, store=Inbox())  # allow=(): parse_allow("")
    scp.start()
    try:
        assoc = _associate(scp.port, [(VERIFICATION, "1.2.840.10008.1.2")], aet="WHOEVER")
        assert assoc.is_established
        assoc.release()
    finally:
        scp.stop()


def test_wrong_called_aet_is_rejected(scp):
    scp, inbox = scp
    assoc = _associate(scp.port, [(CT, "1.2.840.10008.1.2.1")], called="NOTUS")
    assert assoc.is_rejected
    assert _rj(assoc) == (0x01, 0x01, 0x07)  # called AE title not recognised
    assert inbox.items == []


def test_association_limit():
    scp = StoreSCP(aet=AET, port=0, store=Inbox(), max_associations=1)
    scp.start()
    try:
        first = _associate(scp.port, [(VERIFICATION, "1.2.840.10008.1.2")])
        assert first.is_established
        second = _associate(scp.port, [(VERIFICATION, "1.2.840.10008.1.2")])
        assert second.is_rejected
        assert _rj(second) == (0x02, 0x03, 0x02)  # transient, local limit exceeded
        assert first.send_c_echo().Status == 0x0000  # the first is unaffected
        first.release()

        # the acceptor's thread ends a moment after the release: retry, as a peer would
        def accepted() -> bool:
            assoc = _associate(scp.port, [(VERIFICATION, "1.2.840.10008.1.2")])
            established = assoc.is_established
            if established:
                assoc.release()
            return established

        assert _eventually(accepted)
    finally:
        scp.stop()


# -- life cycle ------------------------------------------------------------------------------


def test_stop_frees_the_port_and_aborts_the_stragglers():
    scp = StoreSCP(aet=AET, port=0, store=Inbox())
    scp.start()
    port = scp.port
    assert port != 0
    assoc = _associate(port, [(VERIFICATION, "1.2.840.10008.1.2")])
    assert assoc.is_established
    started = time.monotonic()
    scp.stop(timeout=0.5)  # the open association does not end by itself: it is aborted
    assert time.monotonic() - started < 5
    assert _eventually(lambda: assoc.is_aborted)
    scp.stop()  # idempotent
    with socket.socket() as s:  # SO_REUSEADDR, as servers bind: fails only while one listens
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    again = StoreSCP(aet=AET, port=port, store=Inbox())  # a restart on the same port
    again.start()
    try:
        echo = _associate(port, [(VERIFICATION, "1.2.840.10008.1.2")])
        assert echo.send_c_echo().Status == 0x0000
        echo.release()
    finally:
        again.stop()


def test_start_on_a_taken_port_raises():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        scp = StoreSCP(aet=AET, port=port, store=Inbox())
        with pytest.raises(OSError, match=str(port)):
            scp.start()
        scp.stop()  # nothing to stop: fine


def test_bad_own_aet():
    with pytest.raises(ValueError):
        StoreSCP(aet="A\\B", port=0, store=Inbox())


# -- dcmtk as the peer -------------------------------------------------------------------------


def _dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"dcmtk's {tool} is not installed (apt-get install dcmtk)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_dcmtk_echoscu(scp):
    scp, _ = scp
    echoscu = _dcmtk("echoscu")
    done = _run(echoscu, "-aec", AET, "-aet", "ECHOSCU", "127.0.0.1", str(scp.port))
    assert done.returncode == 0, done.stderr
    refused = _run(echoscu, "-aec", AET, "-aet", "NOTLISTED", "127.0.0.1", str(scp.port))
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def test_dcmtk_storescu_sends_a_chest_cr(scp):
    scp, inbox = scp
    storescu = _dcmtk("storescu")
    path = _path("RG1_UNCR.dcm")  # pydicom-data's uncompressed chest CR
    done = _run(storescu, "-aec", AET, "-aet", "STORESCU", "127.0.0.1", str(scp.port), path)
    assert done.returncode == 0, done.stderr
    assert len(inbox.items) == 1
    _assert_same(inbox.items[0], path)
    assert Path(path).stat().st_size > 7_000_000  # the whole film, not a small stand-in
