"""A real Orthanc PACS as a child process of the test session, for the tests in tests/pacs.

:func:`start_orthanc` writes a config into a temporary ``workdir`` (storage and index there too),
starts the Debian ``Orthanc`` binary with the DICOMweb plugin on free loopback ports and returns an
:class:`Orthanc` handle: its REST API (``get``/``post``), helpers to upload and find instances, and
``stop()``/``start()`` to take it down ("destination down") and bring it back on the same ports
with its data intact. :func:`require_pacs` skips, saying why, where Orthanc is not installed, and
fails instead under ``ANATOMIX_REQUIRE_PACS=1`` (CI installs it: ``.ci/run``).

What Orthanc 1.10.1 / DICOMweb plugin 1.7 (Debian bookworm) do, checked by
test_orthanc_fixture.py where marked (*), which the tests rely on:

* DICOMweb client (STOW-RS push): ``POST /dicom-web/servers/{name}/stow`` with
  ``{"Resources": [orthanc ids of studies, series or instances]}`` POSTs to ``<Url>studies`` (*),
  ``<Url>`` being the registered URL with a ``/`` appended if it lacks one: a server registered
  as ``http://127.0.0.1:PORT/dicomweb/`` receives ``POST /dicomweb/studies`` with ``Content-Type:
  multipart/related; type="application/dicom"; boundary=...`` (*), ``Accept:
  application/dicom+json`` and ``Transfer-Encoding: chunked`` (no Content-Length). It is
  synchronous (a job polled every 0.5 s): ``{"InstancesCount": "1", ...}`` once done (*). It
  fails, answering a bare HTTP 500 "Error encountered within the plugin engine" (the reason is
  only in the log), unless the destination answers 2xx with DICOM JSON whose
  ReferencedSOPSequence ``00081199`` has one item per instance of that request and whose
  FailedSOPSequence ``00081198`` is absent or empty: ``{}``, an empty body, a 409 all fail, as
  does a refused connection. One push is one request, every instance a part (25 checked; plugin
  1.7 has no StowMaxInstances). ``"Synchronous": false`` returns a job whose ``Path`` is relative
  (``.././../jobs/{ID}``): poll ``/jobs/{ID}``.
* C-STORE push: ``POST /modalities/{name}/store`` with ``{"Resources": [ids]}`` (or one bare id)
  is synchronous by default: 200 ``{"InstancesCount": 1, "FailedInstancesCount": 0, ...}`` once
  the peer has acknowledged (*). A refused connection or a non-success DIMSE status (e.g. 0xA700)
  answers HTTP 500, ``OrthancError`` "Error in the network protocol", the cause in ``Details``;
  an unknown modality 404. ``{"Synchronous": false}`` returns a job ``{"ID", "Path": "/jobs/.."}``.
* Modalities and DICOMweb servers set through the REST API live in memory only (neither
  ``DicomModalitiesInDatabase`` nor ``DicomWeb.ServersInDatabase`` is set): the ``set_*`` methods
  also rewrite the config, so a restart keeps them (*). ``DicomWeb.Servers`` entries must be
  ``[url]`` or ``{"Url": url}``: a bare string makes the plugin ignore the whole section.
* Orthanc 1.10 has no option to bind its HTTP server to one interface: it listens on all of them,
  but ``RemoteAccessAllowed: false`` makes it refuse every client but the loopback ones. Its
  DICOM port listens on all interfaces too (accepting stores from any AET:
  ``DicomAlwaysAllowStore``, ``DicomCheckCalledAet: false``).
* A clean stop (SIGTERM) takes ~3 s (its HTTP and DICOM servers wind down); a start ~0.2 s.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from serve.launch import free_port

T = TypeVar("T")

BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
REQUIRE_ENV = "ANATOMIX_REQUIRE_PACS"
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb dcmtk"

# Orthanc's HTTP client (libcurl, for STOW-RS pushes) would send loopback requests to a proxy
# named in the environment: it must talk to the tests' servers directly.
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def missing() -> str | None:
    """Why the Orthanc tests cannot run on this machine, or None when they can."""
    lacking = []
    if shutil.which(BINARY) is None:
        lacking.append(f"the {BINARY} binary (Debian package orthanc)")
    if not DICOMWEB_PLUGIN.is_file():
        lacking.append(f"{DICOMWEB_PLUGIN} (Debian package orthanc-dicomweb)")
    if shutil.which("storescu") is None:
        lacking.append("dcmtk's storescu (Debian package dcmtk)")
    if not lacking:
        return None
    return f"a real PACS is needed: not found: {'; '.join(lacking)} ({INSTALL_HINT})"


def require_pacs() -> None:
    """Skip the calling test when Orthanc is missing, or fail it under ANATOMIX_REQUIRE_PACS=1
    (CI, where a skip would hide that the PACS tests never ran)."""
    reason = missing()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# Looked up here, not in the forked child (no dynamic loading between fork and exec).
_prctl = getattr(ctypes.CDLL(None), "prctl", None) if os.name == "posix" else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the process that started it dies, even by
    SIGKILL (which no finalizer survives). Linux only; a no-op elsewhere. The "parent" is the
    starting thread: start Orthanc from a thread that outlives it (the main one, in fixtures)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads, unless it has exited (and been reaped: its pid
    may be another's by now). Also the finalizer: no log, no grace."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Orthanc:
    """A started (or stopped) Orthanc: its REST base URL, DICOM port and AET, and its workdir
    (``orthanc.json``, ``storage/``, ``orthanc.log``)."""

    url: str
    dicom_port: int
    aet: str
    workdir: Path
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    dicomweb_servers: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _finalizer: weakref.finalize | None = field(default=None, repr=False)

    @property
    def http_port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "orthanc.out"

    # ---- configuration --------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this handle starts with."""
        return {
            "Name": f"anatomix-tests-{self.aet}",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "Plugins": [str(DICOMWEB_PLUGIN)],
            # No HTTP bind address exists in 1.10 (module docstring): refuse non-loopback clients.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {n: list(v) for n, v in self.modalities.items()},
            "DicomScuTimeout": 10,
            "HttpTimeout": 30,
            # "stable" events (Lua, plugins) after 1 s rather than 60; no job survives a restart.
            "StableAge": 1,
            "SaveJobs": False,
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Servers": {n: [u] for n, u in self.dicomweb_servers.items()},
            },
        }

    def _write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def set_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register (or change) the C-STORE peer ``name``: live, and in the config a restart
        reads (1.10 keeps REST-made modalities in memory only, without DicomModalitiesInDatabase).
        """
        self.modalities[name] = (aet, host, port)
        self._write_config()
        if self.running:
            body = {"AET": aet, "Host": host, "Port": port}
            self._checked(self._request("PUT", f"/modalities/{name}", json=body))

    def set_dicomweb_server(self, name: str, url: str) -> None:
        """Register (or change) the DICOMweb server ``name`` (STOW-RS goes to ``<url>studies``),
        live and in the config a restart reads."""
        self.dicomweb_servers[name] = url
        self._write_config()
        if self.running:
            self._checked(self._request("PUT", f"/dicom-web/servers/{name}", json={"Url": url}))

    # ---- process --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start Orthanc (again) with this handle's config, ports and storage; return once its
        REST API answers ``/system`` and its DICOM port accepts connections. A no-op if running.

        Raises RuntimeError, with the end of its log, when it exits or is not up in ``timeout``.
        """
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
        # --verbose: every REST call and DICOM association in the log, for failing tests to show.
        cmd = [BINARY, "--verbose", f"--logfile={self.log_path}", str(self.config_path)]
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the group
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        # A failing test (or an interrupted session) must not leave Orthanc running: SIGKILL its
        # group when this handle is collected or the interpreter exits, whichever comes first.
        self._finalizer = weakref.finalize(self, _kill_group, self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"Orthanc exited ({code}) on start:\n{self.log()[-3000:]}")
            if self._answers_system() and _listening(self.dicom_port):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc not up after {timeout:.0f} s:\n{self.log()[-3000:]}")

    def _answers_system(self) -> bool:
        """Whether this Orthanc answers ``/system`` (another process on the port would not be
        this one: its DicomPort differs)."""
        try:
            r = self._request("GET", "/system", timeout=2)
            return r.status_code == 200 and r.json().get("DicomPort") == self.dicom_port
        except (httpx.HTTPError, ValueError):
            return False

    def stop(self) -> None:
        """SIGTERM Orthanc's process group (a clean shutdown flushes its index), SIGKILL it after
        15 s; return once it has exited, its ports closed. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
        proc.wait(timeout=10)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def log(self) -> str:
        """Orthanc's log file, then whatever it wrote to stdout/stderr (start-up errors)."""
        parts = [p.read_text(errors="replace") for p in (self.log_path, self.stdout_path)]
        return "".join(p for p in parts if p)

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- REST API -------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("timeout", 60)
        # trust_env=False: never a proxy for loopback (tests/conftest.py: no network).
        return httpx.request(method, f"{self.url}{path}", trust_env=False, **kw)

    def _checked(self, response: httpx.Response) -> httpx.Response:
        """``response`` if 2xx, else HTTPStatusError with Orthanc's answer and the end of its log
        (a failed push answers a generic 500: the reason is only in the log)."""
        if response.is_success:
            return response
        request = response.request
        raise httpx.HTTPStatusError(
            f"Orthanc answered {response.status_code} to {request.method} {request.url.path}: "
            f"{response.text[:1000]}\nOrthanc's log ends:\n{self.log()[-2000:]}",
            request=request,
            response=response,
        )

    def get(self, path: str, **kw: Any) -> httpx.Response:
        """GET ``path`` of the REST API; raise ``httpx.HTTPStatusError`` unless 2xx."""
        return self._checked(self._request("GET", path, **kw))

    def post(
        self, path: str, json: Any = None, content: bytes | None = None, **kw: Any
    ) -> httpx.Response:
        """POST a JSON body (or raw ``content``) to ``path``; raise HTTPStatusError unless 2xx."""
        return self._checked(self._request("POST", path, json=json, content=content, **kw))

    def upload(self, data: bytes) -> str:
        """Store one DICOM file through ``POST /instances``; its Orthanc instance id."""
        return self.post("/instances", content=data).json()["ID"]

    def instances(self, **tags: Any) -> list[dict[str, Any]]:
        """Every stored instance as its simplified DICOM tags (keywords: ``SOPClassUID``,
        ``Modality``, ``SeriesInstanceUID``, sequences such as ``ReferencedSeriesSequence`` as
        lists of dicts; no pixel data) plus Orthanc's ``ID`` and ``ParentSeries``. Keyword
        arguments keep those whose tags equal them (compared as strings), e.g. Modality="SEG".
        """
        found = []
        for inst in self.get("/instances", params={"expand": ""}).json():
            item = self.get(f"/instances/{inst['ID']}/tags", params={"simplify": ""}).json()
            item |= {"ID": inst["ID"], "ParentSeries": inst["ParentSeries"]}
            if all(str(item.get(k)) == str(v) for k, v in tags.items()):
                found.append(item)
        return found

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of an instance, byte for byte as Orthanc keeps it."""
        return self.get(f"/instances/{orthanc_id}/file").content

    def wait_for(self, predicate: Callable[[], T], timeout: float = 60.0, what: str = "") -> T:
        """Call ``predicate`` every 0.2 s until it returns something truthy, and return that.

        A connection error counts as "not yet" (Orthanc may be restarting); on timeout raise
        AssertionError naming ``what``, with the last such error and the end of Orthanc's log.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except httpx.TransportError as e:
                last_error = e
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        error = f" (last error: {last_error!r})" if last_error else ""
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what or predicate!r}{error}; "
            f"Orthanc's log ends:\n{self.log()[-3000:]}"
        )


def start_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    dicomweb_servers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Orthanc:
    """Start Orthanc on two free loopback ports with its config, storage and log in ``workdir``.

    Args:
        workdir: created if missing; reuse one (and its ports, via :meth:`Orthanc.start`) to
            find the same data again.
        aet: Orthanc's own AE title.
        modalities: C-STORE peers, name -> (AET, host, port); see :meth:`Orthanc.set_modality`.
        dicomweb_servers: STOW-RS peers, name -> base URL ending in ``/`` (Orthanc posts to
            ``<URL>studies``); see :meth:`Orthanc.set_dicomweb_server`.
        timeout: seconds to wait for it to be up; then RuntimeError with the end of its log.
    """
    http_port = free_port()
    while (dicom_port := free_port()) == http_port:  # two probes may draw the same port
        pass
    orthanc = Orthanc(
        url=f"http://127.0.0.1:{http_port}",
        dicom_port=dicom_port,
        aet=aet,
        workdir=Path(workdir),
        modalities=dict(modalities or {}),
        dicomweb_servers=dict(dicomweb_servers or {}),
    )
    orthanc.start(timeout=timeout)
    return orthanc
