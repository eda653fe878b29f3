"""Start ``bentoml serve`` for the anatomix service as a child process and wait until it is ready.

Used by the end-to-end tests and the benchmarks (``bench.serve``), which need the real server on a
free port rather than an in-process stand-in. BentoML's process manager starts each worker in a
session of its own, so neither a SIGKILL of the parent nor of its process group reaches them (an
orphaned worker keeps serving on the inherited socket): :meth:`Server.kill` and
:meth:`Server.stop` find the workers first and signal every process of the tree.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "serve.service:AnatomixService"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``bentoml serve``: its base URL, process and log file."""

    url: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def processes(self) -> list[psutil.Process]:
        """The server's process and all its descendants (workers) that are alive."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _signal(self, sig: int, procs: list[psutil.Process] | None = None) -> None:
        for p in procs if procs is not None else self.processes():
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (graceful: the manager stops its workers), then SIGKILL what is left."""
        procs = self.processes()
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM, procs[:1])
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        self._signal(signal.SIGKILL, alive)
        psutil.wait_procs(alive, timeout=10)

    def kill(self) -> None:
        """SIGKILL the server and every worker at once, as a crash or the OOM killer would."""
        procs = self.processes()
        self._signal(signal.SIGKILL, procs)
        psutil.wait_procs(procs, timeout=30)
        self.proc.wait(timeout=30)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(
    models: str | os.PathLike,
    log_path: str | os.PathLike,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    ready_timeout: float = 180.0,
    probe: str = "/readyz",
) -> Server:
    """Serve the exports under ``models`` on 127.0.0.1 and return once ``probe`` answers 200
    (``/livez`` for a server that is up but not ready, e.g. with no model).

    Args:
        models: the ``ANATOMIX_MODELS`` directory.
        log_path: the server's stdout and stderr go here.
        env: extra environment (``ANATOMIX_*`` settings).
        port: default a free one.
        ready_timeout: seconds to wait; then the server is killed and ``RuntimeError`` raised
            with the end of its log (also when it exits early).
    """
    port = port or free_port()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # MALLOC_ARENA_MAX=2 as `make serve` and the Bento set it (bentofile.yaml says why), unless
    # the caller's environment chooses otherwise.
    # the PACS inbox/outbox of a test or benchmark server beside its log, not in ./pacs
    full_env = (
        {"MALLOC_ARENA_MAX": "2", "ANATOMIX_PACS_DIR": str(log_path.parent / "pacs")}
        | os.environ | {"ANATOMIX_MODELS": str(models)} | (env or {})
    )  # fmt: skip
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,  # a Ctrl-C in the caller's terminal is not the server's
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"bentoml serve exited ({proc.returncode}):\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}{probe}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(
        f"bentoml serve not ready after {ready_timeout:.0f} s:\n{server.log()[-3000:]}"
    )
