"""Soak test: the real server under steady load for ten minutes — memory growth, errors, drift.

    python -m bench.soak [--minutes 10] [--clients 4] [--models DIR]

Issue #10, item 3. Starts ``bentoml serve`` (``serve.launch``) on the exports in ``--models``
(default: the demo models ``make serve`` builds in ./exports; built here if missing) and keeps
``--clients`` async clients busy for ``--minutes`` with a mix of ten kinds of request: chest
radiograph classification (pydicom-data's two full-size CRs, two phantom CRs), embedding (phantom
CRs), CT segmentation of a 32-slice phantom study (as a zip) and a truncated upload, which must
be a 4xx. Client k sends kinds k, k + c, k + 2c, ... (mod 10, c clients): with the default 4,
two clients alternate classification with segmentation and two alternate embedding with the
truncated upload, so CT segmentation runs steadily beside fast 2D traffic, and the truncated
uploads are about a fifth of all requests.
Every ``--sample`` seconds it records the resident memory of the server's processes (the manager
and its workers) and the requests finished since the last sample.

Reported: resident memory at the end of the first minute (after warm-up) and at the end, and its
growth per 10 minutes by a least-squares line over the samples after the first minute; errors
(5xx, connection failures, or a good request not answered 200); p50/p99 latency of the first and
the last minute per endpoint (drift). Writes ``<out>/results.json``. Not part of the test suite.

``--fuzz-clients N`` (issue #16) adds N clients that send :mod:`serve.fuzz`'s hostile requests
one after another (seed 7, consecutive iterations) with the upload limit at 16 MiB; each of their
answers must pass :func:`serve.fuzz.check_answer` (no 5xx, a 4xx within 1 s, no planted
identifier), or it counts as an error. They are reported as the route ``fuzz``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from bench.demo_exports import ensure_demo_exports  # noqa: E402
from serve import launch  # noqa: E402
from serve.fuzz import log_5xx  # noqa: E402


def _requests() -> list[tuple[str, list[tuple[str, bytes]], bool]]:
    """The request mix: (route, files, expected good)."""
    from pydicom.data import get_testdata_file

    from imaging.phantoms import make_chest_ct, make_radiograph
    from imaging.writers import ct_series_bytes, radiograph_bytes, study_zip

    real = [(n, Path(get_testdata_file(n)).read_bytes()) for n in ("RG1_UNCR.dcm", "RG3_UNCR.dcm")]
    films = []
    for seed in range(2):
        film = make_radiograph(make_chest_ct(seed, shape=(48, 96, 96)), size=(512, 512))
        films.append((f"film{seed}.dcm", radiograph_bytes(film.pixels, modality="CR")))
    ct = make_chest_ct(3, shape=(32, 64, 64), findings=("nodule",))
    study = [("study.zip", study_zip(ct_series_bytes(ct.volume)))]
    mix = []
    for i, f in enumerate(real + films):
        mix.append(("/v1/cxr/classify", [f], True))
        mix.append(("/v1/embed", [films[i % 2]], True))
    mix.append(("/v1/ct/segment", study, True))
    mix.append(("/v1/cxr/classify", [("bad.dcm", real[0][1][:5000])], False))  # truncated
    return mix


def _rss_mb(server: launch.Server) -> float:
    total = 0
    for p in server.processes():
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001 - a process that just exited
            pass
    return total / 2**20


async def _soak(server: launch.Server, mix, clients: int, seconds: float, sample_s: float,
                fuzz_clients: int = 0):  # fmt: skip
    records, samples = [], []
    t0 = time.perf_counter()
    end = t0 + seconds

    def fuzzer(k: int) -> None:
        from serve.fuzz import Corpus, check_answer, make_case, send

        corpus, i = Corpus(seed=7), k
        while time.perf_counter() < end:
            case = make_case(7, i, corpus, [])
            i += fuzz_clients
            start = time.perf_counter()
            ans = send(server.url, case.path, case.headers, case.body, chunked=case.chunked,
                       content_length=case.content_length)  # fmt: skip
            # under the soak's load (CT segmentations on the same 2 cores) a refusal's time is
            # reported (fuzz_refusals_over_1s), not counted as an error: errors are 5xx, transport
            # failures, planted identifiers in an answer and 4xx without {error, detail}
            ok = check_answer(case, ans, 300.0, 300.0) is None
            records.append((start - t0, time.perf_counter() - start, "fuzz", ans.status, ok))

    async def worker(k: int, client: httpx.AsyncClient) -> None:
        i = k
        while time.perf_counter() < end:
            route, files, good = mix[i % len(mix)]
            i += clients
            start = time.perf_counter()
            try:
                parts = [("files", (n, d, "application/dicom")) for n, d in files]
                r = await client.post(server.url + route, files=parts)
                status = r.status_code
            except httpx.HTTPError:
                status = -1
            ok = status == 200 if good else 400 <= status < 500
            records.append((start - t0, time.perf_counter() - start, route, status, ok))

    async def sampler() -> None:
        while time.perf_counter() < end:
            samples.append((time.perf_counter() - t0, _rss_mb(server), len(records)))
            await asyncio.sleep(sample_s)
        samples.append((time.perf_counter() - t0, _rss_mb(server), len(records)))

    async with httpx.AsyncClient(timeout=300) as client:
        fuzz = [asyncio.to_thread(fuzzer, k) for k in range(fuzz_clients)]
        await asyncio.gather(sampler(), *(worker(k, client) for k in range(clients)), *fuzz)
    return records, samples


def _window(records, lo: float, hi: float) -> dict:
    out = {}
    for route in sorted({r[2] for r in records}):
        lat = sorted(
            r[1] * 1000 for r in records if r[2] == route and lo <= r[0] < hi and r[3] == 200
        )  # fmt: skip  (the malformed uploads' fast 4xx left out)
        if lat:
            out[route] = {"n": len(lat), "p50_ms": statistics.median(lat),
                          "p99_ms": lat[max(0, int(np.ceil(0.99 * len(lat))) - 1)]}  # fmt: skip
    return out


def _half_change(samples) -> float:
    """Resident memory at the end minus at the middle of the run: ~0 once it has plateaued."""
    mid = samples[len(samples) // 2][1]
    return float(samples[-1][1] - mid)


def summarise(records, samples, seconds: float) -> dict:
    after = [(t, m) for t, m, _ in samples if t >= 60.0] or [(t, m) for t, m, _ in samples]
    t, m = np.array([a[0] for a in after]), np.array([a[1] for a in after])
    slope = float(np.polyfit(t, m, 1)[0]) if len(t) >= 2 else 0.0  # MB per second
    late = [(t_, m_) for t_, m_, _ in samples if t_ >= seconds / 2.0]
    late_slope = 0.0
    if len(late) >= 2:
        late_slope = float(np.polyfit([a[0] for a in late], [a[1] for a in late], 1)[0])
    bad = [r for r in records if not r[4]]
    return {
        "requests": len(records),
        "errors": len(bad),
        "error_statuses": sorted({r[3] for r in bad}),
        "malformed_refused_4xx": sum(1 for r in records if r[4] and r[3] >= 400),
        "rss_mb_first_minute": float(m[0]),
        "rss_mb_end": float(m[-1]),
        "rss_mb_max": float(max(s[1] for s in samples)),
        "rss_growth_mb_per_10min": slope * 600.0,
        # the measure: the least-squares slope over the second half (the last 30 of 60 min)
        "rss_growth_mb_per_10min_second_half": late_slope * 600.0,
        "rss_mb_change_second_half": _half_change(samples),
        "first_minute": _window(records, 0.0, 60.0),
        "last_minute": _window(records, seconds - 60.0, seconds + 1.0),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    p.add_argument("--fuzz-clients", type=int, default=0, help="clients sending serve.fuzz cases")
    p.add_argument("--models", type=Path, default=ROOT / "exports")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak")
    args = p.parse_args(argv)
    ensure_demo_exports(args.models)
    args.out.mkdir(parents=True, exist_ok=True)
    mix = _requests()
    seconds = args.minutes * 60.0
    print(f"soak: {args.minutes:g} min, {args.clients} clients, {len(mix)} request kinds, "
          f"models {args.models}, {os.cpu_count()} cores", flush=True)  # fmt: skip
    env = {"ANATOMIX_MAX_UPLOAD_MB": "16"} if args.fuzz_clients else {}
    with launch.start(args.models, args.out / "server.log", env=env) as server:
        records, samples = asyncio.run(
            _soak(server, mix, args.clients, seconds, args.sample, args.fuzz_clients)
        )
        log = server.log()
    summary = summarise(records, samples, seconds)
    summary["server_log_tracebacks"] = log.count("Traceback")
    summary["server_log_5xx"] = log_5xx(log)
    summary["server_log_503_busy"] = log.count("status=503")
    summary["fuzz_requests"] = sum(1 for r in records if r[2] == "fuzz")
    fuzz_4xx = sorted(r[1] for r in records if r[2] == "fuzz" and 400 <= r[3] < 500)
    summary["fuzz_refusals_over_1s"] = sum(1 for d in fuzz_4xx if d > 1.0)
    summary["fuzz_refusal_p50_p99_max_s"] = (
        [fuzz_4xx[len(fuzz_4xx) // 2], fuzz_4xx[int(0.99 * (len(fuzz_4xx) - 1))], fuzz_4xx[-1]]
        if fuzz_4xx else []
    )  # fmt: skip
    print(json.dumps(summary, indent=1))
    (args.out / "results.json").write_text(json.dumps(
        {"argv": sys.argv, "summary": summary, "samples": samples}, indent=1))  # fmt: skip
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
