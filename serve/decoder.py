"""Decoding of untrusted uploads in a pool of killable, memory-capped processes (issue #16).

The server never parses an upload itself: it spools the files to disk and a
:class:`DecoderPool` child (:mod:`serve.decode_worker`) reads and decodes them under the request's
:class:`~serve.limits.Limits`, in an address space capped by ``decode_memory_bytes``. The server
waits on the child's pipe in short slices, so a request that runs past its time or whose client
went away kills its child, and a child that dies (a codec crash, the kernel's OOM killer) costs
one request a 4xx, never the server. Dead, killed and worn children are replaced in the
background, so the pool keeps its size. Answers are JSON plus raw arrays, checked here as
untrusted input: no pickle anywhere.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from imaging.image import Image, Volume

from .decode_worker import _LEN, DTYPES, MAX_HEADER_BYTES
from .errors import Cancelled, RequestError
from .limits import ConfigError, Limits

log = logging.getLogger("anatomix.decoder")

ROOT = Path(__file__).resolve().parents[1]  # the children run ``-m serve.decode_worker`` here
SLICE_S = 0.1  # how often a waiting request looks at its cancellation event
HELLO_TIMEOUT_S = 60.0  # a child's start-up (imports) on a loaded machine
MIN_HEADROOM = 64 << 20  # address space a child needs beyond its start-up size to decode
_MAX_NDIM = 4


class _Timeout(Exception):
    pass


class _Died(Exception):
    """The child closed its pipe (it died) or broke the protocol."""


class _Child:
    """One decoding process and the parent's ends of its pipes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.jobs = proc, 0
        self.fd_in, self.fd_out = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(self.fd_out, False)  # read in slices, see _read_into
        for fd in (self.fd_in, self.fd_out):
            _grow_pipe(fd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL and reap (a killed child is gone from the process table on return)."""
        try:
            self.proc.kill()
        except OSError:  # pragma: no cover - already reaped
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep
            log.warning("decoder process %d did not exit after SIGKILL", self.pid)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def _grow_pipe(fd: int) -> None:
    """Linux: 1 MiB pipe buffers (the unprivileged maximum) for fewer wake-ups per image."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


class DecoderPool:
    """``size`` decoding processes shared by the server's request threads.

    Args:
        size: processes kept running (each takes one request at a time).
        limits: the per-request bounds; ``decode_memory_bytes`` caps each process's address
            space, ``decode_timeout_s`` each request's decoding.
        name: for log lines.
        max_jobs: requests a process serves before it is replaced.
        recycle_rss_bytes: a process whose peak RSS passed this after a request is replaced (a
            big study's heap goes back to the system).
    """

    def __init__(
        self,
        size: int,
        limits: Limits,
        *,
        name: str = "decode",
        max_jobs: int = 200,
        recycle_rss_bytes: int = 768 << 20,
    ):
        if size < 1:
            raise ValueError("a decoder pool needs at least one process")
        self.size, self.limits, self.name = size, limits, name
        self.max_jobs, self.recycle_rss_bytes = max_jobs, recycle_rss_bytes
        self._cond = threading.Condition()
        self._idle: collections.deque[_Child] = collections.deque()
        self._all: set[_Child] = set()
        self._closed = False
        # PR_SET_PDEATHSIG fires when the *thread* that started a child ends, so every child is
        # started by this one long-lived thread, never by a request's or a replacement's.
        self._tasks: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._spawner = threading.Thread(target=self._spawn_loop, name=f"{name}-spawner",
                                         daemon=True)  # fmt: skip
        self._spawner.start()
        try:
            started = [self._popen() for _ in range(size)]  # they import in parallel
            deadline = time.monotonic() + HELLO_TIMEOUT_S
            for child in started:
                self._hello(child, deadline)
        except BaseException:
            self.close()
            raise
        with self._cond:
            self._idle.extend(started)

    # -- public API ----------------------------------------------------------------------------

    def images(
        self,
        files: list[tuple[str, str | Path]],
        *,
        timeout: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> list[tuple[str, Image]]:
        """Decode every file (zip archives expanded to ``archive.zip/member.dcm``, gzip
        inflated) → ``(name, Image)`` in order.

        Raises:
            RequestError: the upload's 4xx; 503 ``busy`` when no process frees up in time;
                504 ``decode_timeout`` past ``timeout`` (at most ``limits.decode_timeout_s``).
            Cancelled: ``cancelled`` was set (the process is killed).
        """
        header, arrays = self._run("images", files, timeout=timeout, cancelled=cancelled)
        try:
            return [self._image(item, arrays) for item in self._field(header, "images", list)]
        except (TypeError, ValueError, KeyError, IndexError):
            raise _undecodable() from None

    def radiographs(
        self,
        files: list[tuple[str, str | Path]],
        preprocessing: dict | None,
        *,
        timeout: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> tuple[list[tuple[str, Image, dict, tuple[int, int]]], float]:
        """Decode radiographs and prepare them for one model in the process
        (:func:`serve.inputs.decode_radiographs`) → ``([(name, image, guard features, (H, W))],
        milliseconds the process spent preparing)``; ``image.pixels`` is the model input
        ``(C, S, S)`` given ``preprocessing``, else the ``(H, W)`` [0, 1] image. Raises as
        :meth:`images`."""
        header, arrays = self._run(
            "radiographs", files, timeout=timeout, cancelled=cancelled, preprocessing=preprocessing
        )
        ndim = 2 if preprocessing is None else 3
        try:
            out = []
            for item in self._field(header, "radiographs", list):
                name, image = self._image(item, arrays)
                if image.pixels.ndim != ndim or image.pixels.dtype != np.float32:
                    raise ValueError("pixels")
                out.append((name, image, _features(item["features"]), _hw(item["hw"])))
            prepare_ms = _number(header.get("prepare_ms", 0.0))
            return out, min(max(prepare_ms or 0.0, 0.0), 1e7)
        except (TypeError, ValueError, KeyError, IndexError):
            raise _undecodable() from None

    def series(
        self,
        files: list[tuple[str, str | Path]],
        *,
        timeout: float | None = None,
        cancelled: threading.Event | None = None,
        headers: bool = False,
        rules: dict | None = None,
        series_uid: str | None = None,
    ):
        """Decode the files of one series or a whole study (or zips of them) → :class:`Volume`
        in HU, ``(D, H, W)``, of the series ``rules`` choose or ``series_uid`` names
        (:func:`serve.inputs.decode_series_files`), at most ``limits.max_files`` slices; raises
        as :meth:`images`. With ``headers``: ``(volume, [each file's header as Part-10 bytes
        without pixel data])``."""
        extra = {"headers": True} if headers else {}
        if rules is not None:
            extra["rules"] = rules
        if series_uid is not None:
            extra["series_uid"] = series_uid
        header, arrays = self._run("series", files, timeout=timeout, cancelled=cancelled, **extra)
        try:
            volume = self._volume(self._field(header, "volume", dict), arrays[:1])
            heads = [a.tobytes() for a in arrays[1:]]
            if any(a.dtype != np.uint8 or a.ndim != 1 for a in arrays[1:]):
                raise ValueError("headers")
        except (TypeError, ValueError, KeyError, IndexError):
            raise _undecodable() from None
        if headers:
            return volume, heads
        if heads:
            raise _undecodable()
        return volume

    def close(self) -> None:
        """Kill every process; requests in flight get 422 ``undecodable``, later ones 503."""
        with self._cond:
            self._closed = True
            children = list(self._all)
            self._idle.clear()
            self._cond.notify_all()
        with self._wake:
            self._tasks.append(None)
            self._wake.notify()
        for child in children:
            child.kill()

    def pids(self) -> list[int]:
        """The processes' ids (for tests and diagnostics)."""
        with self._cond:
            return sorted(c.pid for c in self._all)

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request ---------------------------------------------------------------------------

    def _run(self, op: str, files, *, timeout=None, cancelled=None, **extra) -> tuple[dict, list]:
        """Send one request to an idle process and read its answer (header, arrays)."""
        limit = self.limits.decode_timeout_s
        if timeout is not None:
            limit = min(limit, timeout)
        if not limit > 0:
            raise _timed_out(limit)
        request = {"op": op, "files": [[str(n), str(p)] for n, p in files],
                   "limits": self.limits.to_json(), **extra}  # fmt: skip
        deadline = time.monotonic() + limit
        while True:
            child = self._acquire(deadline, cancelled)
            try:
                _send(child, request)
                break
            except OSError:  # it died while idle (a broken pipe): nothing was done, try another
                self._discard(child)
        ok = False
        try:
            header, arrays = self._answer(child, deadline, cancelled)
            ok = True
        except _Timeout:
            raise _timed_out(limit) from None
        except (_Died, OSError):  # EOF, a broken pipe, a frame out of bounds
            raise _undecodable() from None
        finally:
            if not ok:  # its stream is in an unknown state: it goes (Cancelled included)
                self._discard(child)
        child.jobs += 1
        rss = header.get("rss")
        worn = child.jobs >= self.max_jobs or header.get("retire") is True
        if worn or not isinstance(rss, int) or rss > self.recycle_rss_bytes:
            self._discard(child)
        else:
            self._release(child)
        if header.get("ok") is True:
            return header, arrays
        status, code, detail = header.get("status"), header.get("code"), header.get("detail")
        if type(status) is not int or not 400 <= status < 600:
            raise _undecodable()
        if not (isinstance(code, str) and isinstance(detail, str)):
            raise _undecodable()
        raise RequestError(status, code[:64], detail[:1000])

    def _answer(self, child: _Child, deadline: float, cancelled) -> tuple[dict, list]:
        """Read and check one answer: a bounded JSON header, then arrays it describes whose
        dtypes are allowed, whose sizes add up and stay within the request's pixel bound."""
        header = _read_frame(child, deadline, cancelled)
        specs = header.get("arrays")
        if not isinstance(specs, list):
            raise _Died()
        shapes, elements = [], 0
        for spec in specs:
            try:
                dtype, shape, nbytes = spec["dtype"], spec["shape"], spec["nbytes"]
                ok = (dtype in DTYPES and isinstance(shape, list) and len(shape) <= _MAX_NDIM
                      and all(type(n) is int and n >= 0 for n in shape)
                      and type(nbytes) is int
                      and math.prod(shape) * np.dtype(dtype).itemsize == nbytes)  # fmt: skip
            except (TypeError, KeyError):
                ok = False
            if not ok:
                raise _Died()
            elements += math.prod(shape)
            shapes.append((np.dtype(dtype), tuple(shape)))
        if elements > self.limits.max_study_pixels:
            raise _Died()
        arrays = []
        for dtype, shape in shapes:
            array = np.empty(shape, dtype)
            _read_into(child, memoryview(array.reshape(-1).view(np.uint8)), deadline, cancelled)
            arrays.append(array)
        return header, arrays

    @staticmethod
    def _field(header: dict, key: str, kind: type):
        value = header.get(key)
        if not isinstance(value, kind):
            raise TypeError(key)
        return value

    @staticmethod
    def _image(item: dict, arrays: list) -> tuple[str, Image]:
        pixels = arrays[_index(item["array"], arrays)]
        if pixels.ndim not in (2, 3):
            raise ValueError("pixels")
        return _text(item["name"]), Image(
            pixels=pixels,
            spacing=_pair(item["spacing"], 2),
            modality=_text(item["modality"]),
            photometric=_text(item["photometric"]),
            window_center=_number(item["window_center"]),
            window_width=_number(item["window_width"]),
            study_uid=_text(item["study_uid"]),
            series_uid=_text(item["series_uid"]),
            sop_uid=_text(item["sop_uid"]),
            meta=_dict(item["meta"]),
        )

    @staticmethod
    def _volume(item: dict, arrays: list) -> Volume:
        if len(arrays) != 1 or arrays[0].ndim != 3:
            raise ValueError("voxels")
        affine = np.asarray(item["affine"], dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError("affine")
        return Volume(
            voxels=arrays[0],
            spacing=_pair(item["spacing"], 3),
            affine=affine,
            modality=_text(item["modality"]),
            series_uid=_text(item["series_uid"]),
            study_uid=_text(item["study_uid"]),
            meta=_dict(item["meta"]),
        )

    # -- the processes -------------------------------------------------------------------------

    def _acquire(self, deadline: float, cancelled) -> _Child:
        """An idle live process, waiting in slices until one frees or ``deadline`` passes."""
        with self._cond:
            while True:
                if self._closed:
                    raise _busy("the decoder pool is closed")
                if cancelled is not None and cancelled.is_set():
                    raise Cancelled()
                while self._idle:
                    child = self._idle.popleft()
                    if child.proc.poll() is None:
                        return child
                    self._discard(child)  # killed while idle: reaped (at once) and replaced
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _busy("every decoding process is busy; retry shortly")
                self._cond.wait(min(SLICE_S, left))

    def _release(self, child: _Child) -> None:
        with self._cond:
            if self._closed:
                child.kill()
                return
            self._idle.append(child)
            self._cond.notify()

    def _discard(self, child: _Child) -> None:
        """Kill ``child`` (reaped before return) and start its replacement in the background."""
        child.kill()
        with self._cond:
            self._all.discard(child)
            if self._closed:
                return
        with self._wake:
            self._tasks.append("replace")
            self._wake.notify()

    def _popen(self) -> _Child:
        """Start a process from the spawner thread (see ``__init__``)."""
        future: Future = Future()
        with self._wake:
            self._tasks.append(future)
            self._wake.notify()
        return future.result()

    def _spawn_loop(self) -> None:
        while True:
            with self._wake:
                while not self._tasks:
                    self._wake.wait()
                task = self._tasks.popleft()
            if task is None:
                return
            if isinstance(task, Future):
                try:
                    task.set_result(self._start())
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    task.set_exception(exc)
            else:
                self._replace()

    def _replace(self) -> None:
        """Start a process and add it to the idle ones once it says hello; retried with a
        growing pause while starting fails (the pool stays short meanwhile)."""
        pause = 1.0
        while not self._closed:
            child = None
            try:
                child = self._start()
                self._hello(child, time.monotonic() + HELLO_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - logged, retried
                if child is not None:
                    child.kill()
                    with self._cond:
                        self._all.discard(child)
                if self._closed:
                    return
                log.warning("%s: a decoding process failed to start (%s); retrying in %.0f s",
                            self.name, type(exc).__name__, pause)  # fmt: skip
                time.sleep(pause)
                pause = min(pause * 2, 30.0)
                continue
            self._release(child)
            return

    def _start(self) -> _Child:
        with self._cond:
            if self._closed:
                raise RuntimeError("the decoder pool is closed")
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")  # one thread: no per-thread arenas under the memory cap
        env.setdefault("MALLOC_ARENA_MAX", "2")
        cmd = [sys.executable, "-m", "serve.decode_worker",
               "--memory", str(int(self.limits.decode_memory_bytes)),
               "--parent", str(os.getpid())]  # fmt: skip
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                stderr=subprocess.DEVNULL, cwd=ROOT, env=env)  # fmt: skip
        child = _Child(proc)
        with self._cond:
            self._all.add(child)
            if self._closed:  # close() ran meanwhile and did not see it
                child.kill()
                raise RuntimeError("the decoder pool is closed")
        return child

    def _hello(self, child: _Child, deadline: float) -> None:
        try:
            header = _read_frame(child, deadline, None)
        except (_Timeout, _Died, OSError):
            code = child.proc.poll()
            raise RuntimeError(
                f"{self.name}: a decoding process did not start"
                + (f" (exit status {code})" if code is not None else " in time")
            ) from None
        if header.get("hello") is not True or header.get("pid") != child.pid:
            raise RuntimeError(f"{self.name}: a decoding process answered no hello")
        vm = header.get("vm")
        if type(vm) is int and self.limits.decode_memory_bytes < vm + MIN_HEADROOM:
            raise ConfigError(
                f"ANATOMIX_DECODE_MEMORY_MB is {self.limits.decode_memory_bytes >> 20} MiB but a "
                f"decoding process takes {vm >> 20} MiB of address space before it decodes "
                f"anything: set at least {(vm + MIN_HEADROOM) >> 20}"
            )


# -- the wire ----------------------------------------------------------------------------------


def _send(child: _Child, request: dict) -> None:
    body = json.dumps(request).encode()
    data = memoryview(_LEN.pack(len(body)) + body)
    while data:  # a few kB: an idle process is blocked reading them
        data = data[os.write(child.fd_in, data) :]


def _read_into(child: _Child, view: memoryview, deadline: float, cancelled) -> None:
    """Fill ``view`` from the child's pipe, watching the deadline and ``cancelled`` between
    reads and every :data:`SLICE_S` while it is silent."""
    pos, n = 0, len(view)
    while pos < n:
        if cancelled is not None and cancelled.is_set():
            raise Cancelled()
        if time.monotonic() > deadline:
            raise _Timeout()
        try:
            got = os.readv(child.fd_out, [view[pos:]])
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout() from None
            _wait_readable(child.fd_out, min(SLICE_S, left))
            continue
        if got == 0:
            raise _Died()
        pos += got


def _wait_readable(fd: int, seconds: float) -> None:
    """poll(), not select(): a busy server's descriptors pass select's FD_SETSIZE (1024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(max(1, math.ceil(seconds * 1000)))


def _read_frame(child: _Child, deadline: float, cancelled) -> dict:
    head = bytearray(_LEN.size)
    _read_into(child, memoryview(head), deadline, cancelled)
    (length,) = _LEN.unpack(head)
    if length > MAX_HEADER_BYTES:
        raise _Died()
    body = bytearray(length)
    _read_into(child, memoryview(body), deadline, cancelled)
    try:
        header = json.loads(body)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        raise _Died() from None
    if not isinstance(header, dict):
        raise _Died()
    return header


# -- checking what a child says ------------------------------------------------------------------


def _index(value, arrays: list) -> int:
    if type(value) is not int or not 0 <= value < len(arrays):
        raise ValueError("array index")
    return value


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError("text")
    return value


def _number(value) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float):
        raise TypeError("number")
    return float(value)


def _pair(value, n: int) -> tuple | None:
    if value is None and n == 2:
        return None
    if not isinstance(value, list) or len(value) != n:
        raise ValueError("spacing")
    return tuple(float(_number(v)) for v in value)


def _features(value) -> dict[str, float]:
    if not isinstance(value, dict) or len(value) > 16:
        raise ValueError("features")
    out = {_text(k): _number(v) for k, v in value.items()}
    if any(v is None or not math.isfinite(v) for v in out.values()):
        raise ValueError("features")
    return out


def _hw(value) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError("hw")
    if not all(type(v) is int and 0 < v < 1 << 20 for v in value):
        raise ValueError("hw")
    return value[0], value[1]


def _dict(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError("meta")
    return value


def _timed_out(limit: float) -> RequestError:
    return RequestError(
        504, "decode_timeout", f"decoding took longer than {limit:g} s and was stopped"
    )


def _busy(detail: str) -> RequestError:
    return RequestError(503, "busy", detail, headers={"Retry-After": "1"})


def _undecodable() -> RequestError:
    return RequestError(422, "undecodable", "the upload could not be decoded (the decoder stopped)")
