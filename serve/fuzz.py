"""A request-level fuzzer for the running service: hostile HTTP requests, sent as raw bytes.

Beside :mod:`imaging.fuzz` (which mutates DICOM files for the decoder), this mutates whole
*requests*: multipart framing and boundaries, headers and lengths, transfer encodings, field names
and counts, archives (bombs, links, escaping paths), compressed files and DICOM lengths, with
distinctive identifiers planted in every text element of every uploaded file. Each case is a pure
function of ``(seed, iteration)``. :func:`run_campaign` sends them to a real server and checks
that no answer is a 5xx, no refusal takes longer than its budget, and no planted identifier
appears in an answer; the callers (the test and ``python -m bench.fuzz_serve``) also watch the
server's memory and log.
"""

from __future__ import annotations

import functools
import gzip
import io
import random
import socket
import struct
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: every planted identifier starts with this; it must never reach an answer or a log line
MARKER = "QZXMARK"
#: text value representations that may carry identifiers (UI is planted with digits only)
TEXT_VRS = ("PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "CS", "DA", "TM", "DT", "AS", "IS",
            "DS")  # fmt: skip
ENDPOINTS = ("/v1/cxr/classify", "/v1/embed", "/v1/ct/segment", "/v1/ct/segment.dcm",
             "/v1/cxr/correspond")  # fmt: skip


# --- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    error: str = ""  # a transport error instead of an answer (the server closed early, ...)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def send(
    url: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes | Iterable[bytes],
    *,
    method: str = "POST",
    chunked: bool = False,
    content_length: int | None = None,
    timeout: float = 120.0,
) -> Answer:
    """Send one HTTP/1.1 request exactly as given (``content_length`` may lie) and read the
    answer. A server that answers before the body is sent (a 413, say) is read, not an error."""
    u = urlsplit(url)
    chunks = [body] if isinstance(body, (bytes, bytearray)) else body
    head = [f"{method} {path} HTTP/1.1", f"Host: {u.hostname}:{u.port}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
    elif content_length is not None:
        head.append(f"Content-Length: {content_length}")
    elif isinstance(body, (bytes, bytearray)):
        head.append(f"Content-Length: {len(body)}")
    start = time.monotonic()
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        try:
            for chunk in chunks:
                if chunked:
                    sock.sendall(b"%x\r\n" % len(chunk) + bytes(chunk) + b"\r\n")
                else:
                    sock.sendall(chunk)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read what it said
        raw = _read_all(sock)
    except (TimeoutError, OSError) as exc:
        return Answer(0, {}, b"", time.monotonic() - start, f"{type(exc).__name__}")
    finally:
        sock.close()
    return _parse(raw, time.monotonic() - start)


def _read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return bytes(out)


def _parse(raw: bytes, seconds: float) -> Answer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return Answer(0, {}, b"", seconds, "no answer" if not raw else "malformed answer")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        return Answer(0, {}, b"", seconds, "malformed status line")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Answer(status, headers, body, seconds)


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


# --- request bodies ------------------------------------------------------------------------------


@dataclass
class Part:
    name: str
    data: bytes
    filename: str | None = "file.dcm"
    content_type: str | None = "application/dicom"
    extra: list[tuple[str, str]] = field(default_factory=list)


def multipart(parts: list[Part], boundary: str) -> bytes:
    """A multipart/form-data body (RFC 7578) of ``parts``."""
    out = io.BytesIO()
    for p in parts:
        out.write(f"--{boundary}\r\n".encode())
        disp = f'form-data; name="{p.name}"'
        if p.filename is not None:
            disp += f'; filename="{p.filename}"'
        out.write(f"Content-Disposition: {disp}\r\n".encode("utf-8", "surrogateescape"))
        if p.content_type:
            out.write(f"Content-Type: {p.content_type}\r\n".encode())
        for k, v in p.extra:
            out.write(f"{k}: {v}\r\n".encode("utf-8", "surrogateescape"))
        out.write(b"\r\n" + p.data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@functools.lru_cache(maxsize=8)  # bombs are slow to build and reused
def zeros_zip(inflated: int, name: str = "ct/0.dcm") -> bytes:
    """A zip whose one member inflates to ``inflated`` zero bytes (~1,000:1), built in pieces."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(inflated >> 20):
                member.write(block)
    return buf.getvalue()


@functools.lru_cache(maxsize=8)  # bombs are slow to build and reused
def gzip_bomb(inflated: int) -> bytes:
    """``inflated`` zero bytes behind a DICOM-looking gzip file (``.dcm.gz``)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
        block = bytes(1 << 20)
        for _ in range(inflated >> 20):
            gz.write(block)
    return buf.getvalue()


@functools.lru_cache(maxsize=8)  # bombs are slow to build and reused
def deflate_bomb(data: bytes, inflated: int, *, preamble: bool) -> bytes:
    """``data`` re-encoded as a deflated dataset padded with ``inflated`` zeros; without the
    128-byte preamble and ``DICM`` when ``preamble`` is false (the case that once escaped)."""
    from imaging.fuzz.mutators import deflated

    out = deflated(data, padding=inflated)
    return out if preamble else out[132:]


def plant(data: bytes, rng: random.Random) -> bytes:
    """``data`` with every text element (nested ones too) set to a distinctive identifier that
    starts with :data:`MARKER` (UIDs keep digit-only values: they are returned on purpose)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    keep = {"Modality", "PhotometricInterpretation", "BitsAllocated", "TransferSyntaxUID",
            "ImageType", "PixelSpacing", "ImagerPixelSpacing", "SliceThickness",
            "ImagePositionPatient", "ImageOrientationPatient", "RescaleSlope",
            "RescaleIntercept", "WindowCenter", "WindowWidth", "InstanceNumber",
            "NumberOfFrames", "SpacingBetweenSlices", "RescaleType", "SpecificCharacterSet",
            "PatientSex"}  # fmt: skip
    k = 0

    def visit(dataset, elem):
        nonlocal k
        if elem.VR in TEXT_VRS and elem.keyword not in keep:
            k += 1
            if elem.VR == "PN":
                elem.value = f"{MARKER}{k}^{MARKER}GIVEN"
            elif elem.VR in ("DA", "TM", "DT", "AS", "IS", "DS"):
                return  # numeric-looking VRs cannot hold the marker legally; left as they are
            else:
                elem.value = f"{MARKER}{k}"[: 16 if elem.VR in ("SH", "CS", "AE") else 64]

    ds.walk(visit)
    for keyword in ("PatientName", "PatientID", "InstitutionName", "ReferringPhysicianName",
                    "StudyDescription", "SeriesDescription", "PatientAddress",
                    "OperatorsName", "AccessionNumber"):  # fmt: skip
        vr = pydicom.datadict.dictionary_VR(keyword)
        if keyword not in ds:
            setattr(ds, keyword, f"{MARKER}{keyword}"[: 16 if vr in ("SH", "CS") else 64])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def swallow(data: bytes, keyword: str, rng: random.Random) -> bytes:
    """Stretch the length of ``keyword``'s element so its value swallows the elements after it
    (identifiers included): what a damaged or hostile file does to make a server echo them."""
    from pydicom.datadict import tag_for_keyword

    from imaging.fuzz.elements import set_length, walk_elements

    tag = tag_for_keyword(keyword)
    for el in walk_elements(data):
        if el.tag == tag and el.length_size == 2:
            extra = rng.choice([64, 200, 400, 1000])
            return set_length(data, el, min(el.length + extra, 0xFFFE) & ~1)
    return data


# --- cases ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """One request: where, the raw pieces, and what is acceptable."""

    name: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes | list[bytes]
    chunked: bool = False
    content_length: int | None = None
    method: str = "POST"
    #: the request is a refusal by construction: it must be a 4xx within the refusal budget
    refused: bool = False


class Corpus:
    """Good inputs: phantom radiographs and a small phantom CT series with identifiers planted."""

    def __init__(self, seed: int = 0):
        from imaging.fuzz.corpus import phantom_series, seed_corpus

        rng = random.Random(f"serve-fuzz-corpus:{seed}")
        corpus = dict(seed_corpus())
        self.cr = plant(corpus["phantom_cr.dcm"], rng)
        self.ct_slices = [plant(b, rng) for b in phantom_series()]
        self.ct_small = plant(corpus["CT_small.dcm"], rng)
        self.seed_files = list(corpus.values())


def _good_parts(path: str, corpus: Corpus) -> tuple[list[Part], dict[str, str]]:
    if path in ("/v1/ct/segment", "/v1/ct/segment.dcm"):
        parts = [Part("files", zip_of({f"ct/{i}.dcm": b for i, b in enumerate(corpus.ct_slices)}),
                      "study.zip", "application/zip")]  # fmt: skip
        return parts, {}
    if path == "/v1/cxr/correspond":
        return [Part("image_a", corpus.cr, "a.dcm"), Part("image_b", corpus.cr, "b.dcm")], {}
    return [Part("files", corpus.cr, "cr.dcm")], {}


def _form(parts, fields, boundary) -> bytes:
    texts = [Part(k, v.encode(), None, None) for k, v in fields.items()]
    return multipart(parts + texts, boundary)


def good_case(path: str, corpus: Corpus, auth: list[tuple[str, str]]) -> Case:
    parts, fields = _good_parts(path, corpus)
    boundary = "anatomixfuzz0123456789"
    ct = [("Content-Type", f"multipart/form-data; boundary={boundary}")]
    return Case(f"good {path}", path, auth + ct, _form(parts, fields, boundary))


#: mutation families; each takes (rng, path, corpus, auth) and returns a Case
FAMILIES: dict[str, Callable] = {}


def family(fn):
    FAMILIES[fn.__name__] = fn
    return fn


def _ct(boundary: str) -> tuple[str, str]:
    return ("Content-Type", f"multipart/form-data; boundary={boundary}")


@family
def framing(rng, path, corpus, auth):
    """Multipart damage: wrong, missing or invalid boundary, garbage, truncation, no parts."""
    parts, fields = _good_parts(path, corpus)
    body = _form(parts, fields, "realboundary42")
    kind = rng.choice(["wrong", "missing", "invalid", "garbage", "truncated", "empty", "no_end",
                       "bit_flips"])  # fmt: skip
    headers = auth + [_ct("realboundary42")]
    if kind == "wrong":
        headers = auth + [_ct("otherboundary")]
    elif kind == "missing":
        headers = auth + [("Content-Type", "multipart/form-data")]
    elif kind == "invalid":
        headers = auth + [_ct("x" * rng.choice([71, 200, 5000]))]
    elif kind == "garbage":
        body = rng.randbytes(rng.choice([0, 10, 1000, 100_000]))
    elif kind == "truncated":
        body = body[: rng.randrange(1, len(body))]
    elif kind == "empty":
        body = b"--realboundary42--\r\n"
    elif kind == "no_end":
        body = body[: body.rfind(b"--realboundary42--")]
    elif kind == "bit_flips":
        head = bytearray(body[:400])
        for _ in range(rng.randint(1, 8)):
            head[rng.randrange(len(head))] ^= 1 << rng.randrange(8)
        body = bytes(head) + body[400:]
    refused = kind not in ("bit_flips",)
    return Case(f"framing:{kind}", path, headers, body, refused=refused)


@family
def fields_and_names(rng, path, corpus, auth):
    """Unknown field names, text where files are expected, long names, many parts, big values."""
    parts, fields = _good_parts(path, corpus)
    b = "fieldsboundary7"
    kind = rng.choice(["unknown_file_field", "text_as_file", "file_as_text", "long_filename",
                       "many_parts", "big_points", "long_digits", "bad_flag", "garbage_model",
                       "duplicate_text", "huge_part_headers", "control_chars_name",
                       "url_as_value"])  # fmt: skip
    refused = True
    if kind == "unknown_file_field":
        parts = [Part("file", p.data, p.filename) for p in parts]
    elif kind == "text_as_file":
        parts = [Part(parts[0].name, b"http://169.254.169.254/latest", None, None)]
    elif kind == "file_as_text":
        parts += [Part("model", b"cxr", "model.txt", "text/plain")]
    elif kind == "long_filename":
        parts = [Part(p.name, p.data, "a" * rng.choice([300, 5000]) + ".dcm") for p in parts]
        refused = False
    elif kind == "many_parts":
        parts = [Part("files", b"x", f"{i}.dcm") for i in range(rng.choice([1100, 3000]))]
    elif kind == "big_points":
        fields = {"points": "1," * (1 << 20)}
    elif kind == "long_digits":
        fields = {"points": "9" * rng.choice([4301, 60000]) + ",1"}
    elif kind == "bad_flag":
        fields = {"allow_any_modality": "maybe"}
    elif kind == "garbage_model":
        fields = {"model": rng.randbytes(64).decode("latin-1")}
    elif kind == "duplicate_text":
        texts = [Part("model", b"a", None, None), Part("model", b"b", None, None)]
        return Case(f"fields:{kind}", path, auth + [_ct(b)], multipart(parts + texts, b),
                    refused=True)  # fmt: skip
    elif kind == "huge_part_headers":
        parts = [Part(p.name, p.data, p.filename, extra=[("X-Pad", "p" * 70_000)]) for p in parts]
    elif kind == "control_chars_name":
        parts = [Part(p.name, p.data, "../../\x01\x7fé.dcm") for p in parts]
        refused = False
    elif kind == "url_as_value":
        fields = {"model": "http://127.0.0.1:1/x"}
    body = _form(parts, fields, b)
    if path.endswith("correspond") and kind in ("big_points", "long_digits"):
        refused = True
    elif kind in ("big_points", "long_digits") and not path.endswith("correspond"):
        refused = True  # an unknown field elsewhere
    return Case(f"fields:{kind}", path, auth + [_ct(b)], body, refused=refused)


@family
def encodings(rng, path, corpus, auth):
    """Content types and transfer encodings: urlencoded, JSON, gzip-encoded, chunked, lying
    lengths, an over-limit body without a length."""
    parts, fields = _good_parts(path, corpus)
    b = "encboundary99"
    body = _form(parts, fields, b)
    kind = rng.choice(["urlencoded", "json", "content_encoding", "chunked_good", "short_length",
                       "chunked_over_limit", "declared_over_limit"])  # fmt: skip
    if kind == "urlencoded":
        return Case(f"enc:{kind}", path, auth + [("Content-Type",
                    "application/x-www-form-urlencoded")], b"files=http%3A%2F%2Fexample.org",
                    refused=True)  # fmt: skip
    if kind == "json":
        return Case(f"enc:{kind}", path, auth + [("Content-Type", "application/json")],
                    b'{"files": ["x"]}', refused=True)  # fmt: skip
    if kind == "content_encoding":
        return Case(f"enc:{kind}", path, auth + [_ct(b), ("Content-Encoding", "gzip")],
                    gzip.compress(body), refused=True)  # fmt: skip
    if kind == "chunked_good":
        pieces = [body[i : i + 7919] for i in range(0, len(body), 7919)]
        return Case(f"enc:{kind}", path, auth + [_ct(b)], pieces, chunked=True)
    if kind == "short_length":
        return Case(f"enc:{kind}", path, auth + [_ct(b)], body,
                    content_length=rng.randrange(1, len(body)), refused=True)  # fmt: skip
    if kind == "chunked_over_limit":
        # the body limit is set low for the campaign; these chunks go far past it
        pieces = (bytes(1 << 20) for _ in range(64))
        head = f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="a"\r\n\r\n'
        return Case(f"enc:{kind}", path, auth + [_ct(b)],
                    _prefixed(head.encode(), pieces), chunked=True, refused=True)  # fmt: skip
    return Case(f"enc:{kind}", path, auth + [_ct(b)], body[:100],
                content_length=10 << 30, refused=True)  # fmt: skip


def _prefixed(head: bytes, pieces):
    yield head
    yield from pieces


@family
def archives(rng, path, corpus, auth):
    """Zip and gzip bombs, deflated-DICOM bombs with and without preamble, escaping and linked
    members, nested and broken archives."""
    b = "zipboundary5"
    kind = rng.choice(["zip_zeros", "gzip_bomb", "deflate_bomb", "deflate_bomb_no_preamble",
                       "escaping", "symlink", "nested", "broken_central",
                       "stored_big"])  # fmt: skip
    name, ctype = "study.zip", "application/zip"
    if kind == "zip_zeros":
        data = zeros_zip(rng.choice([256, 1024]) << 20)
    elif kind == "gzip_bomb":
        data, name, ctype = gzip_bomb(rng.choice([256, 1024]) << 20), "x.dcm.gz", "application/gzip"
    elif kind in ("deflate_bomb", "deflate_bomb_no_preamble"):
        data = deflate_bomb(corpus.ct_small, rng.choice([512, 2048]) << 20,
                            preamble=kind == "deflate_bomb")  # fmt: skip
        name, ctype = "x.dcm", "application/dicom"
    elif kind == "escaping":
        data = zip_of({"ok.dcm": corpus.ct_small, "../../etc/evil": b"x"})
    elif kind == "symlink":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo("link.dcm")
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
        data = buf.getvalue()
    elif kind == "nested":
        data = zip_of({"inner.zip": zip_of({"a.dcm": corpus.ct_small})})
    elif kind == "broken_central":
        data = zip_of({"a.dcm": corpus.ct_small})
        data = data[:-22] + rng.randbytes(22)
    else:  # stored (uncompressed) member larger than the body limit: refused while streaming
        data = zip_of({"a.dcm": bytes(40 << 20)}, zipfile.ZIP_STORED)
    field = "image_a" if path.endswith("correspond") else "files"
    parts = [Part(field, data, name, ctype)]
    if path.endswith("correspond"):
        parts.append(Part("image_b", corpus.cr, "b.dcm"))
    body = multipart(parts, b)
    return Case(f"archive:{kind}", path, auth + [_ct(b)], body, refused=kind != "nested")


@family
def dicom(rng, path, corpus, auth):
    """DICOM damage: imaging.fuzz's mutators over the seed corpus, swallowing lengths on
    Modality and the UIDs, and images declaring huge dimensions."""
    from imaging.fuzz.mutators import mutate

    b = "dicomboundary3"
    kind = rng.choice(["mutated", "swallow_modality", "swallow_sop_uid", "swallow_series_uid",
                       "huge_dimensions"])  # fmt: skip
    ct = path.startswith("/v1/ct")
    base = rng.choice(corpus.ct_slices) if ct else corpus.cr
    if kind == "mutated":
        data, _ = mutate(plant(rng.choice(corpus.seed_files), rng), rng, rng.randint(1, 3))
    elif kind == "swallow_modality":
        data = swallow(base, "Modality", rng)
    elif kind == "swallow_sop_uid":
        data = swallow(base, "SOPInstanceUID", rng)
    elif kind == "swallow_series_uid":
        data = swallow(base, "SeriesInstanceUID", rng)
    else:
        data = _huge(base, rng)
    field = "image_a" if path.endswith("correspond") else "files"
    parts = [Part(field, data, "d.dcm")]
    if path.endswith("correspond"):
        parts.append(Part("image_b", corpus.cr, "b.dcm"))
    fields = {"allow_any_modality": "true"} if rng.random() < 0.5 else {}
    return Case(f"dicom:{kind}", path, auth + [_ct(b)], _form(parts, fields, b),
                refused=kind == "huge_dimensions")  # fmt: skip


def _huge(data: bytes, rng) -> bytes:
    """Rows and Columns set to 9000 (or 65535): 81 Mpx declared in a file of a few kB."""
    from imaging.fuzz.elements import walk_elements

    side = rng.choice([9000, 65535])
    out = bytearray(data)
    for el in walk_elements(data):
        if el.tag in (0x00280010, 0x00280011) and el.length == 2:
            fmt = ">H" if el.big_endian else "<H"
            out[el.value_offset : el.value_offset + 2] = struct.pack(fmt, side)
    return bytes(out)


def make_case(seed: int, iteration: int, corpus: Corpus, auth: list[tuple[str, str]]) -> Case:
    """The request of ``(seed, iteration)``: one family, one endpoint."""
    rng = random.Random(f"anatomix-serve-fuzz:{seed}:{iteration}")
    name = rng.choice(sorted(FAMILIES))
    path = rng.choice(ENDPOINTS)
    return FAMILIES[name](rng, path, corpus, auth)


# --- the campaign --------------------------------------------------------------------------------


@dataclass
class Report:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    slowest_refusal_s: float = 0.0
    slowest_s: float = 0.0
    by_family: dict[str, int] = field(default_factory=dict)

    def add(self, case: Case, ans: Answer, problem: str | None) -> None:
        self.cases += 1
        self.statuses[ans.status] = self.statuses.get(ans.status, 0) + 1
        fam = case.name.split(" ")[0]
        self.by_family[fam] = self.by_family.get(fam, 0) + 1
        self.slowest_s = max(self.slowest_s, ans.seconds)
        if case.refused:
            self.slowest_refusal_s = max(self.slowest_refusal_s, ans.seconds)
        if problem:
            self.failures.append(f"{case.name} {case.path}: {problem}")


def check_answer(case: Case, ans: Answer, refusal_budget_s: float, budget_s: float) -> str | None:
    """What is wrong with ``ans`` for ``case`` (None when it is acceptable)."""
    if ans.error:
        # a server may close the connection after refusing an over-limit body it will not read;
        # that is only acceptable when the request is a refusal by construction
        return None if case.refused and ans.error in ("no answer",) else f"transport: {ans.error}"
    if ans.status >= 500:
        return f"status {ans.status}: {ans.text[:200]}"
    # a DICOM SEG answer carries the source's patient and study modules by design (it must join the
    # patient's record in the PACS); everything else must not hold a planted identifier
    is_seg = ans.headers.get("content-type", "").startswith("application/dicom")
    if not is_seg and (MARKER.encode() in ans.body or MARKER.lower().encode() in ans.body.lower()):
        return "a planted identifier is in the answer"
    if case.refused and not 400 <= ans.status < 500:
        return f"expected a 4xx, got {ans.status}"
    if 400 <= ans.status < 500 and ans.status != 499:
        try:
            import json

            body = json.loads(ans.body)
            if not (isinstance(body, dict) and body.get("error") and body.get("detail")):
                return "a 4xx without {error, detail}"
        except ValueError:
            return "a 4xx that is not JSON"
    limit = refusal_budget_s if 400 <= ans.status < 500 and ans.status != 408 else budget_s
    if ans.seconds > limit:
        return f"took {ans.seconds:.2f} s (budget {limit:.1f} s)"
    return None


def log_5xx(log: str) -> int:
    """Server-log request lines with a 5xx other than 503 ``busy`` (a full lane's deliberate
    refusal, counted apart)."""
    return sum(1 for line in log.splitlines() if "status=5" in line and "status=503" not in line)


def run_campaign(
    url: str,
    seed: int,
    iterations: int,
    *,
    auth: list[tuple[str, str]],
    corpus: Corpus | None = None,
    refusal_budget_s: float = 1.0,
    budget_s: float = 60.0,
    on_case: Callable[[int, Case, Answer], None] | None = None,
    start: int = 0,
) -> Report:
    """Send ``iterations`` cases of ``seed`` one at a time and check each answer."""
    corpus = corpus or Corpus()
    report = Report()
    for i in range(start, start + iterations):
        case = make_case(seed, i, corpus, auth)
        ans = send(url, case.path, case.headers, case.body, chunked=case.chunked,
                   content_length=case.content_length, method=case.method)  # fmt: skip
        report.add(case, ans, check_answer(case, ans, refusal_budget_s, budget_s))
        if on_case is not None:
            on_case(i, case, ans)
    return report
