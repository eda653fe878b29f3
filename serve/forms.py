"""Streaming multipart/form-data reader for the service's routes (issue #16).

Every limit is enforced while the body arrives, so a hostile upload costs at most the bytes it is
allowed: the body is counted per chunk (chunked or not, whatever Content-Length says), file parts
go straight to a spool file, text values are capped as they grow, and any client mistake is a
:class:`RequestError` (4xx), never a 500. On any error every spooled file is deleted first.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

from .errors import Cancelled, RequestError
from .limits import Limits

__all__ = [
    "FilePart",
    "Form",
    "FormSpec",
    "RELATED",
    "clean_stale_spools",
    "display_name",
    "read_form",
    "spool_root",
]

Receive = Callable[[], Awaitable[Mapping[str, Any]]]

MAX_NAME_CHARS = 128  # a form field's name
MAX_DISPLAY_CHARS = 80  # a file's display name
# RFC 2046 §5.1.1: bchars, the last one not a space, at most 70 of them; up to 128 are taken,
# since Orthanc's DICOMweb client sends 73 (two UUIDs) and a PACS cannot be reconfigured.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,127}[0-9A-Za-z'()+_,\-./:=?]")
# One `; key=value` parameter, the value a token or a quoted string.
_PARAM = re.compile(r';\s*([^\s;=]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_STARTED = time.time()  # files older than this in our own spool dir are a dead namesake's


@dataclass(frozen=True)
class FormSpec:
    """What an endpoint accepts: file field -> most parts under it, text field -> most bytes."""

    files: dict[str, int]
    fields: dict[str, int]


@dataclass
class FilePart:
    """One uploaded file, spooled to ``path``; ``filename`` is for display only."""

    field: str
    filename: str
    path: Path
    size: int


@dataclass
class Form:
    """A parsed form; :meth:`close` (or ``with form:``) deletes its spooled files."""

    files: list[FilePart] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for part in self.files:
            part.path.unlink(missing_ok=True)

    def __enter__(self) -> Form:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bad(detail: str) -> RequestError:
    return RequestError(400, "bad_form", detail)


def _params(value: str) -> tuple[str, dict[str, str]]:
    """``type; k=v; k="v"`` -> (lower-case type, {lower-case key: unquoted value}); first wins."""
    kind, _, _ = value.partition(";")
    params: dict[str, str] = {}
    pos = len(kind)
    while (semi := value.find(";", pos)) != -1:
        m = _PARAM.match(value, semi)
        if m is None:  # junk between semicolons: skip it
            pos = semi + 1
            continue
        key, raw = m.group(1).lower(), m.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            # Only \" and \\ are unescaped: browsers send Windows paths with bare backslashes.
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params.setdefault(key, raw)
        pos = m.end()
    return kind.strip().lower(), params


def _ext_value(value: str) -> str:
    """RFC 5987 ``charset'lang'pct-encoded`` -> text (unknown charsets read as UTF-8)."""
    charset, _, rest = value.partition("'")
    _, _, encoded = rest.partition("'")
    charset = charset.strip().lower()
    encoding = charset if charset in ("utf-8", "iso-8859-1") else "utf-8"
    return unquote(encoded, encoding=encoding, errors="replace")


def display_name(raw: str) -> str:
    """The client's file name made safe to show: its last path component, without control or
    format characters (bidi overrides), at most 80 characters keeping the end (the extension)."""
    name = re.split(r"[/\\]", raw)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    name = name.strip()[-MAX_DISPLAY_CHARS:].strip()
    return name if name not in ("", ".", "..") else "upload"


#: the body of a DICOMweb STOW-RS request (PS3.18 §10.5): every part one application/dicom file
RELATED = "multipart/related"


def _check_headers(headers: Mapping[str, str], limits: Limits, kind: str) -> bytes:
    """Refuse what the headers alone show to be wrong; the multipart boundary."""
    got, params = _params(headers.get("content-type") or "")
    if got != kind:
        raise RequestError(415, "unsupported_media_type", f"the request body must be {kind}")
    if kind == RELATED and params.get("type", "application/dicom").lower() != "application/dicom":
        raise RequestError(415, "unsupported_media_type", 'the request body must be '
                           'multipart/related; type="application/dicom"')  # fmt: skip
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise RequestError(
            415, "unsupported_encoding", "the request body must not have a Content-Encoding"
        )
    boundary = params.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise _bad("the Content-Type has no valid multipart boundary (1-128 RFC 2046 characters)")
    length = headers.get("content-length")
    if length is not None:
        if not re.fullmatch(r"\s*[0-9]+\s*", length):
            raise _bad("the Content-Length header is not a number")
        if int(length) > limits.max_body_bytes:
            raise _too_large(limits)
    return boundary.encode("ascii")


def _too_large(limits: Limits) -> RequestError:
    return RequestError(
        413,
        "upload_too_large",
        f"the request body is larger than the limit of {limits.max_body_bytes} bytes",
    )


class _Parts:
    """The parser's callbacks: checks each part against the spec and limits as it arrives."""

    def __init__(self, spec: FormSpec, limits: Limits, spool_dir: Path):
        self.spec, self.limits, self.spool_dir = spec, limits, spool_dir
        self.form = Form()
        self.spooled: list[Path] = []  # every file created, complete or not, for cleanup
        self.parts = 0
        self.per_field: dict[str, int] = {}
        self.ended = False
        self.out = None  # the open spool file of the current file part
        self.text: bytearray | None = None  # the current text part's value so far
        self.text_limit = 0
        self.name = ""
        self.header_bytes = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.hfield, self.hvalue = bytearray(), bytearray()

    def callbacks(self) -> dict[str, Callable[..., None]]:
        names = ("part_begin", "header_field", "header_value", "header_end")
        names += ("headers_finished", "part_data", "part_end", "end")
        return {f"on_{n}": getattr(self, n) for n in names}

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise RequestError(
                413, "too_many_parts", f"the form has more than {self.limits.max_parts} parts"
            )
        self.header_bytes, self.headers = 0, []
        self.out, self.text = None, None

    def _count_header(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.limits.max_part_header_bytes:
            raise _bad(
                f"a part's headers are larger than {self.limits.max_part_header_bytes} bytes"
            )

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.hfield += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.hvalue += data[start:end]

    def header_end(self) -> None:
        self.headers.append((bytes(self.hfield).strip().lower(), bytes(self.hvalue)))
        self.hfield, self.hvalue = bytearray(), bytearray()

    def headers_finished(self) -> None:
        """Decide what the part is from its Content-Disposition, before any of its data."""
        disposition = next((v for k, v in self.headers if k == b"content-disposition"), None)
        kind, params = _params((disposition or b"").decode("utf-8", "replace"))
        name = params.get("name", "")
        if kind != "form-data" or not name:
            raise _bad("a part has no 'Content-Disposition: form-data' header with a name")
        if len(name) > MAX_NAME_CHARS:
            raise _bad(f"a part's field name is longer than {MAX_NAME_CHARS} characters")
        spec, is_file = self.spec, "filename" in params or "filename*" in params
        if name in spec.files:
            self._begin_file(name, params, is_file)
        elif name in spec.fields:
            self._begin_text(name, is_file)
        else:
            accepted = ", ".join(sorted({*spec.files, *spec.fields}))
            detail = f"the form has a field this endpoint does not accept (accepted: {accepted})"
            raise RequestError(400, "unknown_field", detail)
        self.name = name

    def _begin_file(self, name: str, params: dict[str, str], is_file: bool) -> None:
        if not is_file:
            detail = f"field '{name}' must be sent as a file part (with a filename)"
            raise RequestError(400, "expected_file", detail)
        count = self.per_field[name] = self.per_field.get(name, 0) + 1
        most = self.spec.files[name]
        if count > most:
            raise RequestError(413, "too_many_files", f"field '{name}' takes at most {most} files")
        if len(self.form.files) >= self.limits.max_files:
            raise RequestError(
                413, "too_many_files", f"the form has more than {self.limits.max_files} files"
            )
        raw = params.get("filename") or _ext_value(params.get("filename*", ""))
        # Random name in our own directory: the client's name never touches the file system.
        fd, path = tempfile.mkstemp(prefix="up-", dir=self.spool_dir)
        self.spooled.append(Path(path))
        self.out = open(fd, "wb")  # closed in part_end or discard
        self.form.files.append(FilePart(name, display_name(raw), Path(path), 0))

    def _begin_text(self, name: str, is_file: bool) -> None:
        if is_file:
            raise RequestError(
                400, "expected_text", f"field '{name}' must be a text value, not a file part"
            )
        if name in self.form.fields:
            raise _bad(f"field '{name}' is sent more than once")
        self.form.fields[name] = ""  # marks it seen until part_end sets the value
        self.text = bytearray()
        self.text_limit = min(self.spec.fields[name], self.limits.max_field_bytes)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.out is not None:
            self.out.write(memoryview(data)[start:end])  # no copy of the chunk
            self.form.files[-1].size += end - start
        elif self.text is not None:
            if len(self.text) + (end - start) > self.text_limit:
                raise RequestError(
                    413,
                    "field_too_large",
                    f"field '{self.name}' is longer than {self.text_limit} bytes",
                )
            self.text += data[start:end]

    def part_end(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        elif self.text is not None:
            try:
                self.form.fields[self.name] = self.text.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"field '{self.name}' is not UTF-8 text") from None
            self.text = None

    def end(self) -> None:
        self.ended = True

    def discard(self) -> None:
        """Close and delete everything spooled for this request."""
        if self.out is not None:
            self.out.close()
            self.out = None
        for path in self.spooled:
            path.unlink(missing_ok=True)


class _RelatedParts(_Parts):
    """multipart/related (STOW-RS): no field names; every part is an ``application/dicom`` file,
    spooled under the spec's single file field."""

    def headers_finished(self) -> None:
        ctype = next((v for k, v in self.headers if k == b"content-type"), b"")
        kind, _ = _params(ctype.decode("latin-1"))
        if kind != "application/dicom":
            raise RequestError(415, "unsupported_media_type", "every part must be "
                               "application/dicom (DICOM PS3.18 STOW-RS)")  # fmt: skip
        (name,) = self.spec.files
        self._begin_file(name, {"filename": f"part-{self.parts}.dcm"}, True)
        self.name = name


async def read_form(
    receive: Receive,
    headers: Mapping[str, str],
    spec: FormSpec,
    limits: Limits,
    spool_dir: Path,
    *,
    cancelled: threading.Event | None = None,
    kind: str = "multipart/form-data",
) -> Form:
    """Read a multipart/form-data body (or with ``kind`` :data:`RELATED`, a STOW-RS body) from
    the ASGI ``receive``, enforcing ``limits`` and ``spec`` as it streams. :class:`RequestError`
    on any client mistake, :class:`Cancelled` when the client disconnects or ``cancelled`` is
    set; either way nothing stays on disk."""
    boundary = _check_headers(headers, limits, kind)  # before a single byte is read
    parts = (_RelatedParts if kind == RELATED else _Parts)(spec, limits, spool_dir)
    # The parser's own per-line bound is ours for all headers; a part may have 16 header lines.
    parser = MultipartParser(
        boundary,
        parts.callbacks(),  # type: ignore[arg-type]
        max_header_count=16,
        max_header_size=limits.max_part_header_bytes,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.upload_timeout_s
    received = 0
    try:
        more = True
        while more:
            if cancelled is not None and cancelled.is_set():
                raise Cancelled()
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                raise RequestError(
                    408,
                    "upload_timeout",
                    f"the request body did not arrive within {limits.upload_timeout_s:g} s",
                ) from None
            if message["type"] == "http.disconnect":
                raise Cancelled()
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise _too_large(limits)  # stop reading here: the rest is never received
            try:
                # Spool writes happen inline: a write in a worker thread could outlive a
                # cancellation and land in a reused file descriptor.
                parser.write(chunk)
            except FormParserError:
                raise _bad(f"the body is not valid {kind}") from None
        if not parts.ended:
            raise _bad("the body ended before the form's closing boundary")
        if parts.parts == 0:
            raise _bad("the form has no parts")
    except OSError as exc:
        parts.discard()
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise RequestError(
                507, "insufficient_storage", "the server has no room for the upload right now"
            ) from None
        raise
    except BaseException:
        parts.discard()
        raise
    return parts.form


def _default_base() -> Path:
    """Where uploads are spooled unless the settings name a place (``ANATOMIX_SPOOL_DIR``)."""
    return Path(tempfile.gettempdir()) / "anatomix-spool"


def spool_root(base: Path | None = None) -> Path:
    """This process's spool directory, ``<base>/<pid>/``, created 0700 and owned by us."""
    root = (base or _default_base()) / str(os.getpid())
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(root)
    # Refuse a directory someone else planted (or a symlink) under a shared base like /tmp.
    if not os.path.isdir(root) or os.path.islink(root) or st.st_uid != os.getuid():
        raise RuntimeError(f"spool directory {root} is not a directory owned by this user")
    os.chmod(root, 0o700)
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_spools(base: Path | None = None) -> int:
    """At server start: delete ``<base>/<pid>/`` of processes no longer running (uploads of a
    server killed mid-request), and files in our own directory older than this process (a dead
    namesake after pid reuse, as in containers). Returns how many entries were removed.

    Pids are those of this pid namespace: don't share ``base`` between containers."""
    base = base or _default_base()
    removed = 0
    if not base.is_dir():
        return 0
    for entry in base.iterdir():
        if not entry.name.isdigit() or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            for stale in entry.iterdir():
                if stale.is_file() and stale.lstat().st_mtime < _STARTED:
                    stale.unlink(missing_ok=True)
                    removed += 1
        elif not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
