"""A sandboxed decoding process, ``python -m serve.decode_worker``, one child of a
:class:`serve.decoder.DecoderPool`.

It reads and decodes the upload files the server names, under the request's limits
(:mod:`serve.inputs`), in an address space capped with ``RLIMIT_AS``, and dies with the server
(``PR_SET_PDEATHSIG``). The server kills it on a timeout or a cancelled request; whatever a
hostile file does to a codec stays in here. It is single-threaded and does one job at a time.

Protocol, no pickle (all integers big-endian): the server sends a frame, ``u32 length`` + UTF-8
JSON ``{"op": "images" | "series", "files": [[name, path], ...], "limits": {...}}``; the worker
answers with a frame of a JSON header, then the raw bytes of each array the header describes
(``{"dtype", "shape", "nbytes"}`` in order). The first frame it sends is a hello, once ready.
"""

from __future__ import annotations

import json
import os
import struct
import sys

#: the dtypes an answer's arrays may have (the server refuses others)
DTYPES = ("<f4", "<f8", "<i2", "<u2", "|u1")
#: bound on a frame's JSON (either way): many slices' metadata fit many times over
MAX_HEADER_BYTES = 16 << 20
_LEN = struct.Struct(">I")
_HOOKS_ENV = "ANATOMIX_DECODER_TEST_HOOKS"


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None at end of file (the server closed our stdin)."""
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def send(fd: int, header: dict, arrays=()) -> None:
    """One answer: the JSON header (with the arrays' descriptions added), then the arrays.

    Everything is prepared before the first byte goes out; a failure after that (the frame is
    half sent and nothing could follow it) ends the process, which the server sees."""
    import numpy as np

    arrays = [np.ascontiguousarray(a) for a in arrays]
    header["arrays"] = [
        {"dtype": a.dtype.str, "shape": list(a.shape), "nbytes": int(a.nbytes)} for a in arrays
    ]
    body = json.dumps(header).encode()
    frame = [_LEN.pack(len(body)) + body] + [a.reshape(-1).view(np.uint8) for a in arrays]
    try:
        for part in frame:
            _write_all(fd, part)
    except BaseException:
        os._exit(1)


def _jsonable(value):
    """Meta values as plain JSON types (tuples → lists, numpy and pydicom numbers → Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _image_fields(image) -> dict:
    return {
        "spacing": None if image.spacing is None else [float(s) for s in image.spacing],
        "modality": image.modality,
        "photometric": image.photometric,
        "window_center": image.window_center,
        "window_width": image.window_width,
        "study_uid": image.study_uid,
        "series_uid": image.series_uid,
        "sop_uid": image.sop_uid,
        "meta": _jsonable(image.meta),
    }


def _volume_fields(volume) -> dict:
    return {
        "spacing": [float(s) for s in volume.spacing],
        "affine": [[float(v) for v in row] for row in volume.affine],
        "modality": volume.modality,
        "series_uid": volume.series_uid,
        "study_uid": volume.study_uid,
        "meta": _jsonable(volume.meta),
    }


def _status(field: bytes) -> int | None:
    """A size from Linux's ``/proc/self/status`` in bytes (None elsewhere)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(field + b":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _max_rss() -> int:
    """Peak RSS of this process: Linux's VmHWM, since ``ru_maxrss`` starts at the parent's
    (it survives fork and exec)."""
    peak = _status(b"VmHWM")
    if peak is not None:
        return peak
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # KiB elsewhere


def _job(fd: int, request: dict) -> dict | None:
    """Run one request and send its answer; returns an error header instead of sending it."""
    import numpy as np

    from serve.inputs import (
        decode_files,
        decode_radiographs,
        decode_series_files,
        series_headers,
    )
    from serve.limits import Limits

    op = request.get("op")
    limits = Limits(**request.get("limits", {}))
    files = [(str(name), str(path)) for name, path in request.get("files", [])]
    if op == "images":
        images = decode_files(files, limits)
        header = {"ok": True, "rss": _max_rss(), "images": []}
        for i, (name, image) in enumerate(images):
            header["images"].append({"name": name, "array": i, **_image_fields(image)})
        send(fd, header, [image.pixels for _, image in images])
    elif op == "radiographs":
        pre = request.get("preprocessing")
        timing: dict = {}
        items = decode_radiographs(files, limits, pre if isinstance(pre, dict) else None, timing)
        header = {"ok": True, "rss": _max_rss(), "radiographs": [],
                  "prepare_ms": timing.get("prepare_ms", 0.0)}  # fmt: skip
        for i, (name, image, feats, hw) in enumerate(items):
            header["radiographs"].append({"name": name, "array": i, "features": feats,
                                          "hw": list(hw), **_image_fields(image)})  # fmt: skip
        send(fd, header, [image.pixels for _, image, _, _ in items])
    elif op == "series":
        rules, uid = request.get("rules"), request.get("series_uid")
        volume = decode_series_files(
            files, limits, rules=rules if isinstance(rules, dict) else None,
            series_uid=uid if isinstance(uid, str) else None,
        )  # fmt: skip
        header = {"ok": True, "rss": _max_rss(), "volume": _volume_fields(volume)}
        # with "headers": each file's header without pixel data, for a DICOM SEG (so that the
        # server never parses an upload itself), of the chosen series only
        chosen = volume.meta["selection"]["chosen"]
        heads = series_headers(files, limits, chosen) if request.get("headers") is True else []
        arrays = [volume.voxels] + [np.frombuffer(h, dtype=np.uint8) for h in heads]
        send(fd, header, arrays)
    elif op in ("sleep", "alloc") and os.environ.get(_HOOKS_ENV) == "1":
        _test_hook(op, request)
        send(fd, {"ok": True, "rss": _max_rss(), "images": []})
    else:
        return {"ok": False, "status": 400, "code": "bad_op", "detail": "unknown operation"}
    return None


def _test_hook(op: str, request: dict) -> None:
    """Tests only (``ANATOMIX_DECODER_TEST_HOOKS=1``): a slow job, or one that needs memory."""
    import time

    if op == "sleep":
        print("stray output")  # must not reach the protocol stream
        os.write(1, b"stray bytes on fd 1\n")
        time.sleep(float(request["seconds"]))
    else:
        block = bytearray(int(request["bytes"]))  # zero-filled: every page is touched
        del block


def _serve(fd_in: int, fd_out: int) -> None:
    from serve.errors import RequestError

    while True:
        head = _read_exact(fd_in, _LEN.size)
        if head is None:
            return  # the server is done with us
        (length,) = _LEN.unpack(head)
        body = _read_exact(fd_in, length) if length <= MAX_HEADER_BYTES else None
        if body is None:
            return
        retire = False
        try:
            error = _job(fd_out, json.loads(body))
        except RequestError as exc:
            error = {"ok": False, "status": exc.status, "code": exc.code, "detail": exc.detail}
        except MemoryError:
            retire = True  # the heap may stay fragmented: the server starts a fresh process
            error = {
                "ok": False, "status": 413, "code": "image_too_large",
                "detail": "decoding needs more memory than the per-request limit",
            }  # fmt: skip
        except Exception as exc:  # a bug or a damaged input past the imaging layer's checks
            retire = True
            error = {
                "ok": False, "status": 422, "code": "undecodable",
                "detail": f"the upload could not be decoded ({type(exc).__name__})",
            }  # fmt: skip
        if error is not None:
            send(fd_out, {**error, "rss": _max_rss(), "retire": retire})


def die_with_parent(parent: int = 0) -> None:
    """Linux: SIGKILL when the server dies; if it died before that was set, exit now."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            pass
    if parent and os.getppid() != parent:  # reparented before the prctl: nobody to serve
        os._exit(0)


def _silence() -> None:
    """No warning or log record may leave this process: they can quote attribute values."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


def _preload() -> None:
    """Import the decoding code and codec plugins now, before the address space is capped."""
    from pydicom import uid

    import imaging.dicom  # noqa: F401 - imported for its side effects (pydicom, numpy)
    import serve.inputs  # noqa: F401
    from imaging.dicom import _decoder

    for syntax in (uid.JPEG2000Lossless, uid.JPEGBaseline8Bit, uid.RLELossless,
                   uid.JPEGLSLossless, uid.JPEGLosslessSV1):  # fmt: skip
        decoder = _decoder(syntax)
        if decoder is not None:
            decoder.is_available  # noqa: B018 - loads the plugins


def main(argv: list[str] | None = None) -> None:
    import argparse
    import signal

    args = argparse.ArgumentParser(prog="serve.decode_worker")
    args.add_argument("--memory", type=int, default=0, help="RLIMIT_AS in bytes (0: none)")
    args.add_argument("--parent", type=int, default=0, help="the server's pid")
    opts = args.parse_args(argv)

    # The protocol goes to a private copy of fd 1; fd 1 and sys.stdout then point at stderr
    # (the server makes it /dev/null), so a stray print cannot corrupt the stream.
    fd_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the server's to handle
    _silence()
    _preload()
    die_with_parent(opts.parent)
    if opts.memory > 0:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = opts.memory if hard == resource.RLIM_INFINITY else min(hard, opts.memory)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    send(fd_out, {"ok": True, "hello": True, "pid": os.getpid(), "vm": _status(b"VmSize")})
    _serve(0, fd_out)


if __name__ == "__main__":
    main()
