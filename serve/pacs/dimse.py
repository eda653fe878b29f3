"""The DIMSE receiver: a C-ECHO and C-STORE SCP (pynetdicom) that hands each instance a modality
or PACS pushes, as DICOM file bytes, to the same spool as the STOW-RS receiver.

Who may associate is an allow-list of calling AE titles and peer addresses
(``ANATOMIX_DICOM_ALLOW``, :func:`parse_allow`); by default only loopback peers.

Memory: pynetdicom assembles each received instance in memory before the C-STORE handler runs
(one at a time per association), so the receiver holds at most ``max_associations`` x the largest
instance; ``max_pdu`` only sizes the fragments it reads, keep it modest. This relies on
pynetdicom's default ``_config.STORE_RECV_CHUNKED_DATASET = False`` (the instance in memory):
with it set, :meth:`Event.encoded_dataset` fails and every store answers 0xC000.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from .errors import CANNOT_UNDERSTAND, Refused
from .intake import SOP_CLASSES as INTAKE_SOP_CLASSES

log = logging.getLogger("anatomix.pacs")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: the storage SOP classes accepted. Secondary Capture too: a PACS pushing a whole study sends its
#: screenshots along, and one refused context fails the push; the series selection drops them later.
SOP_CLASSES: tuple[str, ...] = tuple(INTAKE_SOP_CLASSES)  # the STOW-RS receiver's too
#: the transfer syntaxes accepted: the uncompressed ones and every compressed one the imaging
#: layer decodes (pylibjpeg-openjpeg, pylibjpeg-rle, imagecodecs, pyjpegls)
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
#: C-ECHO needs no pixel data: the uncompressed syntaxes (PS3.4 A.4: any syntax is valid)
_ECHO_SYNTAXES = TRANSFER_SYNTAXES[:4]

_LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21): rejected-permanent, source "DICOM UL service-user",
# reason "calling-AE-title-not-recognized"
_RJ_PERMANENT, _RJ_SERVICE_USER, _RJ_CALLING_AET = 0x01, 0x01, 0x03
_SUCCESS = 0x0000
# PS3.7 C.4: Error Comment (0000,0902) is an LO, at most 64 characters
_ERROR_COMMENT_MAX = 64


def check_aet(aet: str) -> str:
    """``aet`` without its insignificant leading/trailing spaces, or ValueError if it is no AE
    title (PS3.5 Table 6.2-1, AE: 1 to 16 characters of the default repertoire, no backslash and
    no control characters, not all spaces)."""
    title = aet.strip(" ")
    if not title:
        raise ValueError(f"AE title {aet!r} is empty")
    if len(title) > 16:
        raise ValueError(f"AE title {aet!r} is longer than 16 characters")
    if any(c == "\\" or not " " <= c <= "~" for c in title):
        raise ValueError(f"AE title {aet!r} has a backslash, a control or a non-ASCII character")
    return title


def _peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    # a dual-stack listener reports an IPv4 peer as ::ffff:a.b.c.d: match it against IPv4 rules
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class AllowRule:
    """One entry of the allow-list: a calling AE title (None: any) from a network (None: any)."""

    aet: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None

    def allows(self, aet: str, address: str) -> bool:
        """Whether a peer calling as ``aet`` from IP ``address`` matches this rule (AE titles
        compare exactly, less padding spaces; an address that is no IP literal never matches)."""
        if self.aet is not None and aet.strip(" ") != self.aet:
            return False
        if self.network is None:
            return True
        ip = _peer_ip(address)
        # `in` is False, not an error, across IPv4/IPv6
        return ip is not None and ip in self.network


def _parse_network(text: str, entry: str) -> Network:
    if text.startswith("[") and "]" in text:  # [::1] or [fd00::]/8, as IPv6 is often written
        close = text.index("]")
        text = text[1:close] + text[close + 1 :]
    try:
        # strict: 10.1.2.3/16 (host bits set) is more likely a typo than a meant 10.1.0.0/16
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"ANATOMIX_DICOM_ALLOW entry {entry!r}: {text!r} is no IP address or network "
            f"(only IP literals and CIDR networks, no host names): {exc}"
        ) from None


def _parse_entry(entry: str) -> AllowRule:
    # rpartition: an AE title may itself contain '@' (it then needs an address part)
    aet_text, at, address = entry.rpartition("@")
    if not at:
        aet_text, address = entry, ""
    elif not address:
        raise ValueError(f"ANATOMIX_DICOM_ALLOW entry {entry!r}: nothing after '@'")
    if aet_text.strip(" ") == "*":
        aet = None
    else:
        try:
            aet = check_aet(aet_text)
        except ValueError as exc:
            raise ValueError(f"ANATOMIX_DICOM_ALLOW entry {entry!r}: {exc}") from None
    network = _parse_network(address.strip(), entry) if address else None
    return AllowRule(aet, network)


def parse_allow(text: str) -> list[AllowRule]:
    """The allow-list of ``ANATOMIX_DICOM_ALLOW``: comma-separated entries, each one of

    - ``AET@10.1.2.3`` / ``AET@10.1.0.0/16`` / ``AET@::1`` / ``AET@fd00::/8``: that calling AE
      title from that address or network (IP literals and CIDR only; host names are refused,
      no DNS is consulted);
    - ``*@127.0.0.1`` / ``*@10.0.0.0/8``: any calling AE title from there;
    - ``AET``: that calling AE title from any address; ``*`` alone: anyone (opt-in only).

    An association is accepted when any entry matches. Empty (or blank) text gives the safe
    default: any calling AE title, but only from loopback (127.0.0.0/8 and ::1), so a receiver
    switched on without a list is not open to the network. ValueError names a malformed entry
    (empty, a bad AE title, or an address that is no IP literal or network).
    """
    if not text.strip():
        return [AllowRule(None, net) for net in _LOOPBACK]
    rules = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            raise ValueError(f"ANATOMIX_DICOM_ALLOW has an empty entry: {text!r}")
        rules.append(_parse_entry(entry))
    return rules


def _error_comment(detail: str) -> str:
    """``detail`` as an Error Comment: an LO value, so printable ASCII without backslash, <= 64."""
    text = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in detail)
    return text[:_ERROR_COMMENT_MAX].strip() or "refused"


def _failure(status: int, detail: str) -> Dataset:
    # PS3.4 B.2.3: A7xx, A9xx and Cxxx failures may carry an Error Comment (0000,0902)
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = _error_comment(detail)
    return ds


def _calling(assoc: Association) -> tuple[str, str]:
    """The peer's calling AE title (from its A-ASSOCIATE-RQ) and IP address."""
    primitive = assoc.requestor.primitive
    aet = primitive.calling_ae_title.strip(" ") if primitive is not None else ""
    try:
        address = assoc.requestor.address
    except ValueError:
        address = "?"
    return aet, address


class StoreSCP:
    """A Verification and Storage SCP on ``host:port`` as ``aet``: each instance received is
    passed to ``store`` as DICOM file bytes (preamble, file meta and the data set as sent).

    ``store`` answers by returning (success, 0x0000) or raising :class:`Refused` (its ``status``
    goes back to the peer, with its detail as Error Comment); any other exception answers 0xC000
    "cannot understand" (PS3.4 B.2.3) and is logged by type only, since its message may quote
    attribute values. The called AE title must be ``aet``; the calling AE title and the peer's
    address must match ``allow`` (empty: :func:`parse_allow`'s loopback-only default), else
    A-ASSOCIATE-RJ. More than ``max_associations`` at once are rejected by pynetdicom
    (rejected-transient, "local limit exceeded"); ``timeout_s`` bounds the ACSE, DIMSE and
    network (idle) timers, so a stalled peer frees its slot. ``store`` is called from the
    associations' threads, several at once.
    """

    def __init__(
        self,
        *,
        aet: str,
        port: int,
        store: Callable[[bytes], None],
        host: str = "127.0.0.1",
        allow: Sequence[AllowRule] = (),
        max_associations: int = 4,
        timeout_s: float = 60.0,
        max_pdu: int = 65536,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"DICOM port {port} is not in 0..65535")
        if max_associations < 1:
            raise ValueError(f"max_associations must be >= 1, not {max_associations}")
        self.aet = check_aet(aet)
        self.host = host
        self._port = port
        self._store = store
        self._allow = tuple(allow) or tuple(parse_allow(""))
        self._max_associations = max_associations
        self._timeout_s = timeout_s
        self._max_pdu = max_pdu
        self._lock = threading.Lock()
        self._counts = {"associations": 0, "rejected": 0, "stored": 0, "refused": 0}
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.aet)
        ae.require_called_aet = True  # reason 7, "called AE title not recognised", otherwise
        ae.maximum_associations = self._max_associations
        ae.acse_timeout = self._timeout_s
        ae.dimse_timeout = self._timeout_s
        ae.network_timeout = self._timeout_s
        ae.maximum_pdu_size = self._max_pdu
        for uid in SOP_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, list(_ECHO_SYNTAXES))
        return ae

    def start(self) -> None:
        """Listen in background threads (returns at once); OSError if the port cannot be bound.
        A no-op while running; after :meth:`stop` it starts afresh."""
        if self._server is not None:
            return
        ae = self._make_ae()
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        try:
            server = ae.start_server((self.host, self._port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"the DICOM receiver cannot listen on {self.host}:{self._port} "
                f"(ANATOMIX_DICOM_PORT): {exc.strerror or exc}",
            ) from exc
        assert server is not None  # block=False returns the server
        self._ae, self._server = ae, server
        log.info(
            "DICOM receiver %s listening on %s:%d (max %d associations)",
            self.aet, self.host, self.port, self._max_associations,
        )  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, give running associations ``timeout`` seconds to end, abort the rest,
        and free the port. Idempotent."""
        server, self._server, self._ae = self._server, None, None
        if server is None:
            return
        server.shutdown()  # ends the accept loop and closes the listening socket
        deadline = time.monotonic() + timeout
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        running = server.active_associations
        if running:
            log.warning("DICOM receiver stopping: aborting %d association(s)", len(running))
        for assoc in running:
            assoc.abort()
        for assoc in running:
            assoc.join(timeout=2.0)
        log.info("DICOM receiver %s stopped", self.aet)

    @property
    def port(self) -> int:
        """The bound port (the one chosen when constructed with port=0 and started)."""
        server = self._server
        return int(server.server_address[1]) if server is not None else self._port

    def counts(self) -> dict[str, int]:
        """Associations accepted and rejected; instances stored and not (refused or failed)."""
        with self._lock:
            return dict(self._counts)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    # -- event handlers (each runs in the association's thread) -----------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        aet, address = _calling(assoc)
        try:
            allowed = any(rule.allows(aet, address) for rule in self._allow)
        except Exception:  # pynetdicom logs and ignores handler errors: fail closed instead
            allowed = False
        if allowed:
            return
        # Rejecting from EVT_REQUESTED is what pynetdicom's run_reactor() expects ("User used
        # EVT_REQUESTED to send an A-ABORT or A-ASSOCIATE-RJ"); the rest mirrors its own rejection
        # in ACSE._negotiate_as_acceptor(): the EVT_REJECTED notification (logs it), then kill().
        assoc.acse.send_reject(_RJ_PERMANENT, _RJ_SERVICE_USER, _RJ_CALLING_AET)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        self._count("associations")
        aet, address = _calling(event.assoc)
        log.info("DICOM association from %r at %s accepted", aet, address)

    def _on_rejected(self, event: evt.Event) -> None:
        # every A-ASSOCIATE-RJ we send: ours (allow-list) and pynetdicom's (called AE title,
        # association limit); the A-ASSOCIATE-RJ primitive sent says why
        rj = event.assoc.acceptor.primitive
        reason = rj.reason_str if rj is not None and rj.result is not None else "?"
        aet, address = _calling(event.assoc)
        log.warning("DICOM association from %r at %s rejected: %s", aet, address, reason)
        self._count("rejected")

    def _on_echo(self, event: evt.Event) -> int:
        return _SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        try:
            self._store(event.encoded_dataset())
        except Refused as exc:
            self._count("refused")
            aet, address = _calling(event.assoc)
            log.warning(
                "C-STORE from %r at %s refused: 0x%04X %s", aet, address, exc.status, exc.detail
            )
            return _failure(exc.status, exc.detail)
        except Exception as exc:
            # the type only: a message may quote attribute values of the instance
            self._count("refused")
            aet, address = _calling(event.assoc)
            log.error(
                "C-STORE from %r at %s failed: %s (message withheld)",
                aet, address, type(exc).__qualname__,
            )  # fmt: skip
            return _failure(CANNOT_UNDERSTAND, "the instance could not be stored")
        self._count("stored")
        return _SUCCESS
