"""``run_campaign``: feed fuzz cases to a target in a watched worker and classify the outcomes."""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..errors import ImagingError
from .cases import Case, make_case

OUTCOMES = ("ok", "typed", "failure")


@dataclass
class Failure:
    """A case the target mishandled, with what is needed to reproduce it."""

    seed: int
    iteration: int
    origin: str
    mutators: list[str]
    kind: str  # "exception", "timeout", "memory" or "crash"
    error_type: str
    message: str
    where: str = ""  # innermost frames of the traceback
    elapsed_s: float = 0.0
    peak_bytes: int = 0
    input_size: int = 0

    def __str__(self) -> str:
        return (
            f"{self.kind} at seed={self.seed} iteration={self.iteration} ({self.origin}, "
            f"{'+'.join(self.mutators)}): "
            + (f"{self.error_type}: " if self.error_type else "")
            + self.message
            + (f" [{self.where}]" if self.where else "")
        )


@dataclass
class FuzzReport:
    """Counts per outcome, typed-error code, mutator and seed file; every failure in full."""

    seed: int
    iterations: int
    elapsed_s: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    by_mutator: dict[str, Counter] = field(default_factory=dict)
    by_origin: dict[str, Counter] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    slowest_s: float = 0.0
    slowest_iteration: int = -1
    peak_bytes: int = 0
    peak_iteration: int = -1

    def add(self, case: Case, outcome: str, code: str | None, elapsed: float, peak: int) -> None:
        self.outcomes[outcome] += 1
        if code is not None:
            self.codes[code] += 1
        for name in case.mutators or ["none"]:
            self.by_mutator.setdefault(name, Counter())[outcome] += 1
        self.by_origin.setdefault(case.origin, Counter())[outcome] += 1
        if elapsed > self.slowest_s:
            self.slowest_s, self.slowest_iteration = elapsed, case.iteration
        if peak > self.peak_bytes:
            self.peak_bytes, self.peak_iteration = peak, case.iteration

    def to_dict(self) -> dict:
        """Plain JSON-ready data (``dataclasses.asdict`` would mangle the Counters)."""
        out = {k: v for k, v in vars(self).items() if not isinstance(v, (Counter, dict, list))}
        out["outcomes"], out["codes"] = dict(self.outcomes), dict(self.codes)
        out["by_mutator"] = {k: dict(c) for k, c in sorted(self.by_mutator.items())}
        out["by_origin"] = {k: dict(c) for k, c in sorted(self.by_origin.items())}
        out["failures"] = [asdict(f) for f in self.failures]
        return out

    def markdown(self) -> str:
        """Tables of outcomes per mutator and of typed-error codes."""
        rows = ["| mutator | cases | ok | typed error | failure |", "|---|---|---|---|---|"]
        table = sorted(self.by_mutator.items()) + [("**all**", self.outcomes)]
        for name, c in table:
            rows.append(
                f"| {name} | {sum(c.values())} | {' | '.join(str(c[o]) for o in OUTCOMES)} |"
            )
        rows += ["", "| typed error code | count |", "|---|---|"]
        rows += [f"| {code} | {n} |" for code, n in self.codes.most_common()]
        return "\n".join(rows) + "\n"


def memory_bound(size: int, factor: float = 64, slack: int = 256 << 20) -> int:
    """Peak allocation allowed for an input of ``size`` bytes: ``factor × size + slack``."""
    return int(factor * size + slack)


def run_campaign(
    target: Callable[[bytes], object],
    iterations: int,
    seed: int,
    *,
    make: Callable[[int, int], Case] = make_case,
    time_limit_s: float = 10.0,
    memory_factor: float = 64,
    memory_slack: int = 256 << 20,
    expected: tuple[type[BaseException], ...] = (ImagingError,),
    isolate: bool = True,
    hard_rss_extra: int = 4 << 30,
    quiet: bool = True,
    progress: Callable[[FuzzReport], None] | None = None,
) -> FuzzReport:
    """Feed ``make(seed, i)`` for ``i < iterations`` to ``target`` and classify every outcome.

    Args:
        target: called with ``case.data``; returning is *ok*, raising one of ``expected`` is a
            *typed* error counted by its ``code``, anything else is a *failure*.
        make: the case generator (``make_case`` for single files, ``make_series_case``).
        time_limit_s: a call running longer is a failure ("timeout").
        memory_factor / memory_slack: a call whose peak traced allocation (tracemalloc, NumPy
            included) or resident-set growth exceeds ``memory_bound(size, ...)`` is a failure.
        isolate: run in a forked worker process, killed and restarted on a hang, a crash or a
            resident set more than ``hard_rss_extra`` bytes above its start; ``False`` runs in
            this process (hangs are then only measured, never interrupted).
        quiet: silence the worker's stderr (codec panics print Rust backtraces there).
        progress: called after each case (e.g. to print a running count).
    """
    report = FuzzReport(seed, iterations)
    bound = functools.partial(memory_bound, factor=memory_factor, slack=memory_slack)
    job = functools.partial(_run_case, target, make, seed, expected, bound, time_limit_s)
    runner = _Worker(job, time_limit_s, hard_rss_extra, quiet) if isolate else _InProcess(job)
    start = time.perf_counter()
    try:
        for i in range(iterations):
            result = runner.run(i)
            case = make(seed, i) if result.get("regenerate") else result.pop("case")
            if result.get("failure"):
                report.failures.append(Failure(**_failure_fields(case, result)))
            report.add(
                case, result["outcome"], result.get("code"), result["elapsed"], result["peak"]
            )
            if progress is not None:
                progress(report)
    finally:
        runner.close()
    report.elapsed_s = time.perf_counter() - start
    return report


def _failure_fields(case: Case, result: dict) -> dict:
    return dict(
        seed=case.seed,
        iteration=case.iteration,
        origin=case.origin,
        mutators=case.mutators,
        input_size=result.get("size", case.size),
        **result["failure"],
    )


def _run_case(target, make, seed, expected, bound, time_limit_s, iteration: int) -> dict:
    """Generate and run one case with its time and memory measured; the outcome as a dict."""
    case = make(seed, iteration)
    outcome, code, failure = "ok", None, None
    tracing = tracemalloc.is_tracing()  # traced only during the call: it slows Python down
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, rss_before = tracemalloc.get_traced_memory()[0], _reset_peak_rss()
    start = time.perf_counter()
    try:
        target(case.data)
    except expected as exc:
        outcome, code = "typed", getattr(exc, "code", type(exc).__name__)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a codec may even panic (pyo3 PanicException)
        failure = _describe(exc)
    finally:
        elapsed = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1] - base
        if not tracing:
            tracemalloc.stop()
    peak = max(traced, _peak_rss() - rss_before)
    if failure is None and elapsed > time_limit_s:
        failure = dict(kind="timeout", error_type="", message=f"took {elapsed:.1f} s")
    if failure is None and peak > bound(case.size):
        failure = dict(
            kind="memory",
            error_type="",
            message=f"peak {peak >> 20} MiB > bound {bound(case.size) >> 20} MiB ({outcome})",
        )
    if failure is not None:
        failure.update(elapsed_s=elapsed, peak_bytes=peak)
        outcome = "failure"
    return dict(
        outcome=outcome,
        code=code,
        failure=failure,
        elapsed=elapsed,
        peak=peak,
        size=case.size,
        case=case,
    )


def _describe(exc: BaseException) -> dict:
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in frames[::-1])
    return dict(
        kind="exception", error_type=type(exc).__name__, message=str(exc)[:300], where=where
    )


def _reset_peak_rss() -> int:
    """Reset this process's resident-set high-water mark (Linux); returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS") << 10


def _peak_rss() -> int:
    return _status_kib("VmHWM") << 10


def _status_kib(key: str, pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class _InProcess:
    """Runs cases in this process (for debugging: a hang cannot be interrupted)."""

    def __init__(self, job):
        self.job = job

    def run(self, iteration: int) -> dict:
        return self.job(iteration)

    def close(self) -> None:
        pass


class _Worker:
    """A forked worker running cases one at a time, watched for hangs, crashes and memory."""

    POLL_S = 0.05

    def __init__(self, job, time_limit_s: float, hard_rss_extra: int, quiet: bool):
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        self.job, self.time_limit_s, self.hard_rss_extra = job, time_limit_s, hard_rss_extra
        self.quiet = quiet
        self.proc = None

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_serve, args=(child, self.job, self.quiet), daemon=True)
        self.proc.start()
        child.close()
        self.conn.recv()  # ready
        self.rss_start = _status_kib("VmRSS", self.proc.pid) << 10

    def run(self, iteration: int) -> dict:
        if self.proc is None:
            self._start()
        self.conn.send(iteration)
        start = time.monotonic()
        deadline = start + 1.5 * self.time_limit_s + 0.5  # the worker times itself too
        while True:
            try:
                if self.conn.poll(self.POLL_S):
                    return _checked(self.conn.recv())
            except (EOFError, OSError):
                pass
            elapsed = time.monotonic() - start
            if not self.proc.is_alive():
                return self._lost("crash", f"worker died (exit code {self.proc.exitcode})", elapsed)
            rss = _status_kib("VmRSS", self.proc.pid) << 10
            if rss - self.rss_start > self.hard_rss_extra:
                return self._lost("memory", f"resident set grew by {rss >> 20} MiB", elapsed)
            if elapsed > deadline - start:
                return self._lost("timeout", f"no answer within {elapsed:.1f} s", elapsed)

    def _lost(self, kind: str, message: str, elapsed: float) -> dict:
        """The worker hung, crashed or blew up: kill it; the next case starts a fresh one."""
        self.close()
        failure = dict(kind=kind, error_type="", message=message, elapsed_s=elapsed)
        return dict(outcome="failure", failure=failure, elapsed=elapsed, peak=0, regenerate=True)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
            self.conn.close()
            self.proc = None


def _serve(conn, job, quiet: bool) -> None:
    """Worker loop: run each iteration received, send back its outcome (bytes stripped)."""
    if quiet:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    conn.send("ready")
    while True:
        try:
            iteration = conn.recv()
        except EOFError:
            return
        try:
            result = job(iteration)
        except Exception:  # a bug of the harness (a mutator, ``make``), not of the target
            conn.send({"harness_error": traceback.format_exc()})
            return
        result["case"].data = b""  # the parent needs the name and mutators, not the bytes
        conn.send(result)


def _checked(result: dict) -> dict:
    if "harness_error" in result:
        raise RuntimeError(f"the fuzz harness failed in its worker:\n{result['harness_error']}")
    return result
