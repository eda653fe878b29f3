"""The streaming form reader (issue #16): every limit is enforced while the body streams, every
client mistake is a 4xx with its code, and nothing stays on disk after an error."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from serve.errors import Cancelled, RequestError
from serve.forms import (
    RELATED,
    FormSpec,
    clean_stale_spools,
    display_name,
    read_form,
    spool_root,
)
from serve.limits import Limits

MiB = 1 << 20
B = "b0und4ry-'()+_,./:=?"  # every kind of RFC 2046 boundary character but the space
SPEC = FormSpec(files={"files": 10, "image": 1}, fields={"points": 65536, "model": 256})
CT = {"content-type": f'multipart/form-data; boundary="{B}"'}
LIMITS = Limits()
SECRET = "EVIL_CLIENT_VALUE"  # never echoed back in a detail


# --- helpers ---------------------------------------------------------------------------------


def part(name, value=b"", filename=None, *, lines=None) -> bytes:
    """One part: headers (a Content-Disposition unless ``lines``), blank line, value."""
    if lines is None:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        lines = [f"Content-Disposition: {disp}"]
        if filename is not None:
            lines.append("Content-Type: application/octet-stream")
    value = value.encode() if isinstance(value, str) else value
    return "".join(f"{line}\r\n" for line in lines).encode() + b"\r\n" + value


def body(*parts: bytes, boundary: str = B, close: bool = True) -> bytes:
    sep = b"--" + boundary.encode()
    out = b"".join(sep + b"\r\n" + p + b"\r\n" for p in parts)
    return out + (sep + b"--\r\n" if close else b"")


class Feed:
    """A fake ASGI ``receive``: the chunks as ``http.request`` messages, counting those taken.
    After the last chunk it answers ``http.disconnect`` (a server would too)."""

    def __init__(self, chunks: Iterable[bytes], *, end: bool = True, delay: float = 0.0):
        self.chunks, self.end, self.delay = iter(chunks), end, delay
        self.consumed = 0
        self.done = False

    async def __call__(self):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.done:
            return {"type": "http.disconnect"}
        self.consumed += 1
        chunk = next(self.chunks, None)
        if chunk is None:
            self.done = True
            return {"type": "http.request", "body": b"", "more_body": not self.end}
        return {"type": "http.request", "body": chunk, "more_body": True}


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def read(data, headers=CT, spec=SPEC, limits=LIMITS, spool=None, **kw):
    receive = data if callable(data) else Feed([data])
    return asyncio.run(read_form(receive, headers, spec, limits, spool, **kw))


def refused(
    spool: Path, data, headers=CT, spec=SPEC, limits=LIMITS, within=1.0, **kw
) -> RequestError:
    """The RequestError reading ``data`` raises, within ``within`` s, leaving ``spool`` empty."""
    t0 = time.perf_counter()
    with pytest.raises(RequestError) as info:
        read(data, headers, spec, limits, spool, **kw)
    assert time.perf_counter() - t0 < within
    assert list(spool.iterdir()) == [], "spooled files left behind after an error"
    assert SECRET not in info.value.detail
    return info.value


@pytest.fixture
def spool(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    return d


# --- good forms ------------------------------------------------------------------------------

TRICKY = (
    b"\r\n--" + B.encode() + b"X"  # the delimiter prefix, not a delimiter
    b" --" + B.encode() + b"\r\n"  # a boundary without the CRLF before it
    b"\r\n--"
    + B.encode()[:-3]
    + b"\r\n\r\n"  # a partial delimiter, then blank lines
    + bytes(range(256)) * 3
    + b"\r\n"
)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_good_form_byte_exact_any_chunking(spool, chunk):
    data = body(
        part("model", "ark-cxr"),
        part("files", TRICKY, "a.dcm"),
        part("files", b"", "empty.dcm"),  # zero-length: kept, the decoder refuses it later
        part("points", "[[1, 2, 3]]"),
        part("image", b"\x00\r\n\r\n", "dir/sub/b.png"),
    )
    with read(Feed(split(data, chunk)), spool=spool) as form:
        assert form.fields == {"model": "ark-cxr", "points": "[[1, 2, 3]]"}
        got = [(f.field, f.filename, f.size, f.path.read_bytes()) for f in form.files]
        assert got == [
            ("files", "a.dcm", len(TRICKY), TRICKY),
            ("files", "empty.dcm", 0, b""),
            ("image", "b.png", 5, b"\x00\r\n\r\n"),
        ]
        for f in form.files:  # random names in the spool dir, never the client's
            assert f.path.parent == spool and f.path.name.startswith("up-")
            assert "a.dcm" not in f.path.name
    assert list(spool.iterdir()) == []  # the context manager closed the form


def test_real_client_encoding(spool):
    blobs = [os.urandom(5000) + b"\r\n--\r\n", b"DICM" * 100]
    req = httpx.Request(
        "POST",
        "http://test/v1/predict",
        files=[("files", ("x/1.dcm", blobs[0])), ("files", ("2.dcm", blobs[1]))],
        data={"points": "[[0, 0, 0]]", "model": "genesis"},
    )
    req.read()
    headers = {k.lower(): v for k, v in req.headers.items()}
    form = read(Feed(split(req.content, 1000)), headers, spool=spool)
    try:
        assert form.fields == {"points": "[[0, 0, 0]]", "model": "genesis"}
        assert [f.filename for f in form.files] == ["1.dcm", "2.dcm"]
        assert [f.path.read_bytes() for f in form.files] == blobs
    finally:
        form.close()
        form.close()  # idempotent
    assert list(spool.iterdir()) == []


def test_long_and_odd_file_names(spool):
    long = "a" * 296 + ".dcm"
    data = body(part("files", b"x", long), part("files", b"y", ""), part("image", b"z", ".."))
    with read(data, spool=spool) as form:
        names = [f.filename for f in form.files]
    assert len(names[0]) <= 80 and names[0].endswith(".dcm") and names[0].startswith("a")
    assert names[1:] == ["upload", "upload"]


def test_display_name():
    assert display_name("C:\\Users\\me\\scan.dcm") == "scan.dcm"
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("a\x00b\r\n\x1bc\u202egnp.exe") == "abcgnp.exe"  # bidi override too
    assert display_name("  \t ") == "upload"
    assert display_name("é" * 100 + ".nii.gz") == "é" * 73 + ".nii.gz"


def test_filename_star_is_a_file_part(spool):
    lines = ["Content-Disposition: form-data; name=\"image\"; filename*=UTF-8''%E2%82%AC%20x.png"]
    with read(body(part("image", b"1", lines=lines)), spool=spool) as form:
        assert [(f.filename, f.size) for f in form.files] == [("€ x.png", 1)]


def test_epilogue_and_unquoted_boundary(spool):
    data = body(part("model", "m"), boundary="simple") + b"epilogue ignored"
    form = read(data, {"content-type": "Multipart/Form-Data; charset=utf-8; boundary=simple"})
    assert form.fields == {"model": "m"} and form.files == []


# --- refused from the headers alone ----------------------------------------------------------


def never(*_):
    raise AssertionError("receive must not be called")


@pytest.mark.parametrize(
    "headers, status, code",
    [
        ({}, 415, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({"content-type": "application/json"}, 415, "unsupported_media_type"),
        ({**CT, "content-encoding": "gzip"}, 415, "unsupported_encoding"),
        ({"content-type": "multipart/form-data"}, 400, "bad_form"),
        ({"content-type": "multipart/form-data; boundary="}, 400, "bad_form"),
        ({"content-type": 'multipart/form-data; boundary=""'}, 400, "bad_form"),
        ({"content-type": "multipart/form-data; boundary=" + "a" * 129}, 400, "bad_form"),
        ({"content-type": "multipart/form-data; boundary=a\x00b"}, 400, "bad_form"),
        ({"content-type": 'multipart/form-data; boundary="ab "'}, 400, "bad_form"),
        ({**CT, "content-length": "12abc"}, 400, "bad_form"),
        ({**CT, "content-length": str(600 * MiB)}, 413, "upload_too_large"),
        ({**CT, "content-length": str(2 << 30)}, 413, "upload_too_large"),
    ],
)
def test_refused_before_reading(spool, headers, status, code):
    err = refused(spool, never, headers)
    assert (err.status, err.code) == (status, code)
    if code == "unsupported_media_type":
        assert "multipart/form-data" in err.detail


def test_identity_encoding_and_70_char_boundary_accepted(spool):
    b70 = "x" * 70
    headers = {"content-type": f"multipart/form-data; boundary={b70}"}
    headers["content-encoding"] = "identity"
    assert read(body(part("model", "m"), boundary=b70), headers).fields == {"model": "m"}


# --- refused while streaming -----------------------------------------------------------------

FILE = part("files", b"data", "a.dcm")


@pytest.mark.parametrize(
    "data, status, code",
    [
        pytest.param(b"", 400, "bad_form", id="empty body"),
        pytest.param(os.urandom(4096), 400, "bad_form", id="garbage"),
        pytest.param(b"hello world\r\n" * 10, 400, "bad_form", id="text garbage"),
        pytest.param(body(FILE, boundary="other"), 400, "bad_form", id="wrong boundary"),
        pytest.param(body(FILE, close=False), 400, "bad_form", id="no closing boundary"),
        pytest.param(body(FILE)[:-30], 400, "bad_form", id="truncated in data"),
        pytest.param(body(FILE)[:30], 400, "bad_form", id="truncated in headers"),
        pytest.param(f"--{B}--\r\n".encode(), 400, "bad_form", id="no parts"),
        pytest.param(body(part("", lines=[])), 400, "bad_form", id="no headers"),
        pytest.param(
            body(part("", lines=["Content-Type: text/plain"])), 400, "bad_form", id="no disposition"
        ),
        pytest.param(
            body(part("", lines=['Content-Disposition: attachment; name="model"'])),
            400,
            "bad_form",
            id="not form-data",
        ),
        pytest.param(
            body(part("", lines=['Content-Disposition: form-data; filename="a"'])),
            400,
            "bad_form",
            id="no name",
        ),
        pytest.param(
            body(part("", lines=["Bad Header\x01: x"])), 400, "bad_form", id="bad header name"
        ),
        pytest.param(body(part("m" * 129, "v")), 400, "bad_form", id="long field name"),
        pytest.param(
            body(
                part("", lines=["Content-Disposition: form-data; name=model", "X: " + "y" * 17000])
            ),
            400,
            "bad_form",
            id="one huge header",
        ),
        pytest.param(
            body(
                part(
                    "model",
                    lines=['Content-Disposition: form-data; name="model"']
                    + ["X: " + "y" * 6000] * 3,
                )
            ),
            400,
            "bad_form",
            id="headers too large together",
        ),
        pytest.param(body(part(SECRET, "v")), 400, "unknown_field", id="unknown text field"),
        pytest.param(body(part(SECRET, b"x", "a.dcm")), 400, "unknown_field", id="unknown file"),
        pytest.param(body(part("files", "not a file")), 400, "expected_file", id="text as file"),
        pytest.param(body(part("model", b"x", "m.txt")), 400, "expected_text", id="file as text"),
        pytest.param(
            body(*[part("image", b"x", f"{i}.png") for i in range(2)]),
            413,
            "too_many_files",
            id="too many under a field",
        ),
        pytest.param(
            body(part("model", "a"), part("model", "b")), 400, "bad_form", id="repeated text"
        ),
        pytest.param(body(part("model", "x" * 257)), 413, "field_too_large", id="text over spec"),
        pytest.param(
            body(part("points", b"7" * MiB)), 413, "field_too_large", id="1 MiB text value"
        ),
        pytest.param(body(part("model", b"\xff\xfe")), 400, "bad_form", id="text not utf-8"),
    ],
)
def test_refused_while_streaming(spool, data, status, code):
    # A good file part first, so every refusal also has a spooled file to clean up.
    if data.startswith(f"--{B}\r\n".encode()):
        data = body(FILE)[: -len(f"--{B}--\r\n")] + data
    err = refused(spool, Feed(split(data, 1000)), CT)
    assert (err.status, err.code) == (status, code)
    if code == "unknown_field":
        assert "files" in err.detail and "points" in err.detail


def test_too_many_files_in_all(spool):
    spec = FormSpec(files={"files": 100}, fields={})
    data = body(*[part("files", b"x", f"{i}.dcm") for i in range(6)])
    err = refused(spool, data, spec=spec, limits=Limits(max_files=5))
    assert (err.status, err.code) == (413, "too_many_files")


@pytest.mark.parametrize("kind", ["text", "files"])
def test_too_many_parts_stops_at_once(spool, kind):
    if kind == "text":  # distinct accepted text fields: nothing touches the disk
        spec = FormSpec(files={}, fields={f"f{i}": 8 for i in range(2000)})
        parts = [part(f"f{i}", "v") for i in range(2000)]
    else:  # ~1,000 spooled files are made, then all deleted
        spec = FormSpec(files={"files": 10_000}, fields={})
        parts = [part("files", b"x", f"{i}.dcm") for i in range(2000)]
    chunks = split(body(*parts), 1024)
    feed = Feed(chunks)
    # Creating and deleting a thousand files may take longer on a busy machine.
    within = 1.0 if kind == "text" else 3.0
    err = refused(spool, feed, spec=spec, limits=Limits(max_files=10_000), within=within)
    assert (err.status, err.code) == (413, "too_many_parts")
    assert feed.consumed < len(chunks) * 0.6  # the rest was never read


# --- body size, time, cancellation -----------------------------------------------------------


def endless_file(n_chunks=100):
    """A file part's start, then ``n_chunks`` MiB of data, never closed."""
    yield body(FILE, close=False)[:-2]  # up to the file's data
    block = b"\0" * MiB
    for _ in range(n_chunks):
        yield block


@pytest.mark.parametrize("headers", [CT, {**CT, "content-length": "100"}], ids=["chunked", "lie"])
def test_body_limit_while_streaming(spool, headers):
    feed = Feed(endless_file(100))
    err = refused(spool, feed, headers, limits=Limits(max_body_bytes=8 * MiB))
    assert (err.status, err.code) == (413, "upload_too_large")
    assert feed.consumed <= 10  # ~8 MiB read of 100: stopped, not drained


def test_body_limit_exact_is_allowed(spool):
    data = body(FILE)
    form = read(data, limits=Limits(max_body_bytes=len(data)), spool=spool)
    form.close()
    err = refused(spool, data, limits=Limits(max_body_bytes=len(data) - 1))
    assert err.code == "upload_too_large"


def test_timeout_on_a_trickle(spool):
    feed = Feed([body(FILE, close=False)] + [b"y"] * 10_000, delay=0.05)  # a byte per 50 ms
    t0 = time.perf_counter()
    err = refused(spool, feed, limits=Limits(upload_timeout_s=0.5))
    assert (err.status, err.code) == (408, "upload_timeout")
    assert 0.4 < time.perf_counter() - t0 < 1.0


def test_timeout_on_a_silent_client(spool):
    async def hang():
        await asyncio.Event().wait()

    err = refused(spool, hang, limits=Limits(upload_timeout_s=0.5))
    assert (err.status, err.code) == (408, "upload_timeout")


def test_disconnect_is_cancelled_and_cleans_up(spool):
    feed = Feed([body(FILE, close=False)], end=False)  # more to come, then the client goes away
    with pytest.raises(Cancelled):
        read(feed, spool=spool)
    assert feed.done and list(spool.iterdir()) == []


def test_cancelled_event(spool):
    stop = threading.Event()
    chunks = [body(FILE, close=False), b"more"]

    async def receive():
        stop.set()  # the service gives up on the request after the first chunk
        return {"type": "http.request", "body": chunks.pop(0), "more_body": True}

    with pytest.raises(Cancelled):
        read(receive, spool=spool, cancelled=stop)
    assert list(spool.iterdir()) == []


# --- spool directories -----------------------------------------------------------------------


def test_spool_root(tmp_path, monkeypatch):
    root = spool_root(tmp_path / "base")
    assert root == tmp_path / "base" / str(os.getpid())
    assert root.is_dir() and (root.stat().st_mode & 0o777) == 0o700
    assert spool_root(tmp_path / "base") == root  # idempotent
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert spool_root() == tmp_path / "tmp" / "anatomix-spool" / str(os.getpid())


def test_clean_stale_spools(tmp_path):
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    base = tmp_path / "base"
    own = spool_root(base)
    (own / "up-live").write_bytes(b"in flight")
    (own / "up-old").write_bytes(b"a dead namesake's (pid reuse, as in containers)")
    os.utime(own / "up-old", (time.time() - 3600,) * 2)
    stale = base / str(dead_pid)
    stale.mkdir()
    (stale / "up-abc").write_bytes(b"left by a killed server")
    (base / "notes").mkdir()  # not a pid: left alone
    assert clean_stale_spools(base) == 2
    assert not stale.exists() and not (own / "up-old").exists()
    assert (own / "up-live").exists() and (base / "notes").exists()
    assert clean_stale_spools(base) == 0
    assert clean_stale_spools(tmp_path / "missing") == 0


def test_full_disk_is_507_not_500(spool, monkeypatch):
    real = tempfile.mkstemp
    made = []

    def mkstemp(**kw):  # the first file fits, the second finds the disk full
        if made:
            raise OSError(errno.ENOSPC, "No space left on device")
        made.append(real(**kw))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    err = refused(spool, body(FILE, FILE))
    assert (err.status, err.code) == (507, "insufficient_storage")


# --- multipart/related (DICOMweb STOW-RS, issue #20) --------------------------------------------

ORTHANC_B = "7f856862-6968-48c4-a2f9-dc5ada43187f-7f856862-6968-48c4-a2f9-dc5ada43187f"
RELATED_SPEC = FormSpec(files={"file": 10}, fields={})


def related(boundary: str = ORTHANC_B, kind: str = "application/dicom") -> dict:
    return {"content-type": f'multipart/related; type="{kind}"; boundary={boundary}'}


def dicom_part(data: bytes, kind: str = "application/dicom") -> bytes:
    return part("", data, lines=[f"Content-Type: {kind}", f"Content-Length: {len(data)}"])


def test_stow_bodies_are_read_part_by_part_with_orthancs_73_character_boundary(spool):
    """Orthanc's DICOMweb client sends a boundary of two UUIDs (73 characters: more than RFC
    2046's 70), chunked: such a body is read, each part spooled as one file."""
    data = body(dicom_part(b"DICM-one"), dicom_part(b"DICM-two" * 1000), boundary=ORTHANC_B)
    form = read(Feed(split(data, 333)), related(), RELATED_SPEC, spool=spool, kind=RELATED)
    assert [p.path.read_bytes() for p in form.files] == [b"DICM-one", b"DICM-two" * 1000]
    assert [p.field for p in form.files] == ["file", "file"]
    form.close()


@pytest.mark.parametrize(
    "headers, data, status, code",
    [
        (CT, None, 415, "unsupported_media_type"),  # form-data where related is required
        (related(kind="application/dicom+json"), None, 415, "unsupported_media_type"),
        (related(), body(dicom_part(b"x", "application/octet-stream"), boundary=ORTHANC_B),
         415, "unsupported_media_type"),
        (related(), body(part("files", b"x", "a.dcm"), boundary=ORTHANC_B), 415,
         "unsupported_media_type"),  # a form-data part has no application/dicom type
        (related(), body(*[dicom_part(b"x")] * 11, boundary=ORTHANC_B), 413, "too_many_files"),
        (related(), body(dicom_part(b"x"), boundary=ORTHANC_B, close=False), 400, "bad_form"),
    ],
)  # fmt: skip
def test_stow_bodies_that_are_not_application_dicom_parts_are_refused(
    spool, headers, data, status, code
):
    data = data if data is not None else body(dicom_part(b"x"), boundary=ORTHANC_B)
    err = refused(spool, data, headers, RELATED_SPEC, kind=RELATED)
    assert (err.status, err.code) == (status, code)
