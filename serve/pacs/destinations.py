"""Where result DICOM files go: ``ANATOMIX_DESTINATIONS`` parsed into :class:`Destination`\\ s,
and :func:`send`, one delivery attempt of a set of files by DICOMweb STOW-RS or DIMSE C-STORE.

Credentials live only in :attr:`Destination.auth` (in memory, from the environment): names,
error messages and :class:`DeliveryError` texts never carry them.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import httpx
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from .dimse import check_aet

DICOMWEB_SCHEMES = {"dicomweb+http": "http", "dicomweb+https": "https"}
DICOM_SCHEME = "dicom"

#: a host name or IPv4 address (IPv6 goes in brackets and is checked separately)
_HOST = re.compile(r"[A-Za-z0-9._-]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+;=:@%-]*)*")
#: C-STORE statuses after which the instance is stored: success and the Storage Service's
#: warnings (PS3.4 B.2.3: coercion, elements discarded, data set does not match SOP class)
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
_CHUNK = 1 << 16


class DeliveryError(Exception):
    """One delivery attempt failed; ``detail`` says why, safe to log (no credentials, no
    attribute value of the files)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Destination:
    """A configured receiver of results: DICOMweb (``kind="dicomweb"``: ``url``, ``auth``) or
    DIMSE (``kind="dicom"``: ``aet``, ``host``, ``port``)."""

    kind: str
    #: dicomweb: ``http(s)://host:port/path`` without userinfo; STOW-RS goes to url + "/studies"
    url: str = ""
    #: dicomweb: the Authorization header value, if any
    auth: str | None = None
    aet: str = ""
    host: str = ""
    port: int = 0

    @property
    def name(self) -> str:
        """The destination as configured, without credentials: safe to log and to show."""
        if self.kind == "dicomweb":
            return f"dicomweb+{self.url}"
        return f"dicom://{self.aet}@{_host_text(self.host)}:{self.port}"

    def __repr__(self) -> str:  # the dataclass repr would show ``auth``
        return f"Destination({self.name!r})"


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def redact(entry: str) -> str:
    """``entry`` with any password (and, but for ``dicom://``, the whole userinfo) replaced by
    ``***``: an entry that may appear in an error message."""
    scheme, sep, rest = entry.partition("://")
    if not sep:
        scheme, rest = "", entry
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        split = authority.rpartition if authority.startswith("[") else authority.partition
        host, colon, port = split(":")
        if colon and scheme.lower() != DICOM_SCHEME and not port.isdigit():
            # "user:pass" cut off by a comma inside the password reads as host:port
            return f"{scheme}{sep}{host}:***{slash}{path}"
        return entry
    if scheme.lower() == DICOM_SCHEME:
        # the userinfo of dicom:// is the AE title, no secret; anything after ':' might be one
        aet, colon, _ = userinfo.partition(":")
        userinfo = aet + (":***" if colon else "")
    else:
        userinfo = "***"
    return f"{scheme}{sep}{userinfo}@{hostport}{slash}{path}"


def _host_port(hostport: str, entry: str) -> tuple[str, int]:
    """``host``/``[v6]`` and the port of ``host:port``; ValueError naming ``entry``."""
    host, colon, port_text = hostport.rpartition(":")
    if not colon or not port_text:
        raise ValueError(f"destination {redact(entry)!r}: missing port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ok = bool(host) and _IPV6.fullmatch(host) is not None and ":" in host
    else:
        ok = _HOST.fullmatch(host) is not None
    if not host:
        raise ValueError(f"destination {redact(entry)!r}: missing host")
    if not ok:
        raise ValueError(f"destination {redact(entry)!r}: malformed host")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"destination {redact(entry)!r}: port must be 1-65535")
    return host, int(port_text)


def _check_aet(aet: str, entry: str) -> str:
    """The AE title of ``entry`` checked by the receiver's own rule (:func:`.dimse.check_aet`),
    the error naming the entry without its credentials."""
    try:
        return check_aet(aet)
    except ValueError as exc:
        raise ValueError(f"destination {redact(entry)!r}: {exc}") from None


def _parse_dicom(entry: str, rest: str) -> Destination:
    authority, slash, path = rest.partition("/")
    if slash and path:
        raise ValueError(f"destination {redact(entry)!r}: a dicom:// entry has no path")
    aet, at, hostport = authority.rpartition("@")
    if not at:
        raise ValueError(f"destination {redact(entry)!r}: AE title is empty")
    aet = _check_aet(aet, entry)
    host, port = _host_port(hostport, entry)
    return Destination(kind="dicom", aet=aet, host=host, port=port)


def _parse_dicomweb(entry: str, http: str, rest: str, authorization: str | None) -> Destination:
    if "?" in rest or "#" in rest:
        raise ValueError(f"destination {redact(entry)!r}: no query or fragment allowed")
    authority, slash, path = rest.partition("/")
    path = (slash + path).rstrip("/")
    if _PATH.fullmatch(path) is None:
        raise ValueError(f"destination {redact(entry)!r}: malformed path")
    userinfo, at, hostport = authority.rpartition("@")
    host, port = _host_port(hostport, entry)
    auth = authorization
    if at:
        user, _, password = userinfo.partition(":")
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        auth = "Basic " + base64.b64encode(pair).decode("ascii")
    return Destination(kind="dicomweb", url=f"{http}://{_host_text(host)}:{port}{path}", auth=auth)


def parse_destinations(text: str, *, authorization: str | None = None) -> list[Destination]:
    """The destinations of ``ANATOMIX_DESTINATIONS``: comma-separated
    ``dicomweb+http(s)://[user:pass@]host:port/path`` and ``dicom://AET@host:port`` entries.

    ``authorization`` (``ANATOMIX_DESTINATION_AUTHORIZATION``) is the Authorization header of
    every DICOMweb destination without userinfo; userinfo becomes HTTP Basic. ValueError naming
    the entry, password removed, for a malformed or repeated entry.
    """
    authorization = (authorization or "").strip() or None
    if authorization is not None and any(c in authorization for c in "\r\n\0"):
        raise ValueError("the destination Authorization value has a line break")
    found: list[Destination] = []
    names: set[str] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue  # "a, b," and an unset-but-empty setting are fine
        if any(c.isspace() or not c.isprintable() for c in entry):
            raise ValueError(f"destination {redact(entry)!r}: has blanks or control characters")
        scheme, sep, rest = entry.partition("://")
        scheme = scheme.lower()
        if sep and scheme == DICOM_SCHEME:
            dest = _parse_dicom(entry, rest)
        elif sep and scheme in DICOMWEB_SCHEMES:
            dest = _parse_dicomweb(entry, DICOMWEB_SCHEMES[scheme], rest, authorization)
        else:
            raise ValueError(
                f"destination {redact(entry)!r}: scheme must be dicomweb+http, dicomweb+https "
                "or dicom"
            )
        if dest.name in names:
            raise ValueError(f"destination {redact(entry)!r} is listed twice")
        names.add(dest.name)
        found.append(dest)
    return found


def send(
    dest: Destination,
    files: Sequence[Path],
    *,
    calling_aet: str = "ANATOMIX",
    timeout: float = 30.0,
) -> None:
    """Deliver ``files`` (DICOM Part 10 files) to ``dest`` in one STOW-RS request or one
    association; returns when the destination has stored every one, else :class:`DeliveryError`."""
    if not files:
        return
    if dest.kind == "dicomweb":
        _stow(dest, [Path(p) for p in files], timeout)
    elif dest.kind == "dicom":
        _c_store(dest, [Path(p) for p in files], calling_aet, timeout)
    else:
        raise DeliveryError(f"unknown destination kind {dest.kind!r}")


# --- DICOMweb STOW-RS (PS3.18 10.5) -------------------------------------------------------------


def _stow(dest: Destination, files: list[Path], timeout: float) -> None:
    boundary = f"anatomix-{uuid.uuid4().hex}"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    sep = f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    try:
        sizes = [p.stat().st_size for p in files]
    except OSError as exc:
        raise DeliveryError(f"cannot read a result file ({type(exc).__name__})") from None
    # the length is known ahead, so the body streams with a Content-Length rather than chunked
    # (which some DICOMweb servers refuse)
    length = len(head) + sum(sizes) + len(sep) * (len(files) - 1) + len(tail)

    def body() -> Iterator[bytes]:
        for i, (path, size) in enumerate(zip(files, sizes, strict=True)):
            yield head if i == 0 else sep
            left = size
            with path.open("rb") as fh:
                while left > 0:
                    chunk = fh.read(min(_CHUNK, left))
                    if not chunk:
                        raise OSError(f"{path.name} shrank while being sent")
                    left -= len(chunk)
                    yield chunk
        yield tail

    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Content-Length": str(length),
        "Accept": "application/dicom+json",
    }
    if dest.auth:
        headers["Authorization"] = dest.auth
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(dest.url + "/studies", content=body(), headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"STOW-RS failed: {type(exc).__name__}") from None
    except OSError as exc:
        raise DeliveryError(f"cannot read a result file ({type(exc).__name__})") from None
    if response.status_code == 200:
        return
    why = {202: " (some instances were not stored)", 409: " (no instance was stored)"}
    text = " ".join(response.text[:200].split())
    raise DeliveryError(
        f"STOW-RS answered HTTP {response.status_code}{why.get(response.status_code, '')}"
        + (f": {text}" if text else "")
    )


# --- DIMSE C-STORE (PS3.4 B, PS3.7 9.1.1) -------------------------------------------------------


def _c_store(dest: Destination, files: list[Path], calling_aet: str, timeout: float) -> None:
    # what each file is and how it is encoded, from its header (pixels are not read yet)
    syntaxes: dict[UID, list[UID]] = {}
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            sop_class, tsyntax = UID(ds.SOPClassUID), UID(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:  # a result file that is not DICOM: no attempt can succeed
            raise DeliveryError(f"unreadable result file ({type(exc).__name__})") from None
        # its own transfer syntax first, then the uncompressed ones every SCP knows (Implicit VR
        # Little Endian is the DICOM default, PS3.5 10.1) to fall back on
        wanted = syntaxes.setdefault(sop_class, [])
        for ts in (tsyntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts not in wanted:
                wanted.append(ts)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    # one context per (SOP class, transfer syntax), so the SCP can accept each independently
    contexts = [(cls, ts) for cls, tss in syntaxes.items() for ts in tss]
    if len(contexts) > MAX_CONTEXTS:
        raise DeliveryError(f"too many SOP class/transfer syntax pairs ({len(contexts)})")
    for cls, ts in contexts:
        ae.add_requested_context(cls, [ts])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    try:
        if not assoc.is_established:
            if assoc.is_rejected:
                raise DeliveryError("association rejected")
            if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
                # pynetdicom aborts an association in which the SCP accepted no context
                raise DeliveryError("association aborted: no presentation context accepted")
            if assoc.is_aborted:
                raise DeliveryError("association aborted")
            raise DeliveryError("association failed (no connection or no answer)")
        for path in files:
            _store_one(assoc, path)
    finally:
        if assoc.is_established:
            assoc.release()


def _store_one(assoc, path: Path) -> None:
    try:
        ds = dcmread(path)
    except Exception as exc:
        raise DeliveryError(f"unreadable result file ({type(exc).__name__})") from None
    sop_class, tsyntax = UID(ds.SOPClassUID), UID(ds.file_meta.TransferSyntaxUID)
    accepted = {
        cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class
    }
    if not accepted:
        raise DeliveryError(f"no presentation context accepted for {sop_class.name}")
    if tsyntax.is_compressed and tsyntax not in accepted:
        # the SCP takes this SOP class only uncompressed: decode (pynetdicom then encodes in
        # whichever uncompressed syntax was accepted; it converts those among themselves)
        try:
            # same instance: a lossless decode keeps its SOP Instance UID (pydicom's default
            # would mint a new one, and a re-delivery would then be stored twice)
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:
            raise DeliveryError(
                f"{tsyntax.name} not accepted and decompressing failed ({type(exc).__name__})"
            ) from None
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, AttributeError, RuntimeError) as exc:
        raise DeliveryError(f"C-STORE not sent ({type(exc).__name__})") from None
    if not status or "Status" not in status:
        raise DeliveryError("C-STORE got no answer (timeout or association aborted)")
    if status.Status not in STORED:
        raise DeliveryError(f"C-STORE answered status 0x{status.Status:04X}")
