"""Load benchmark of the REST service: served throughput beside the raw runtime's, in one run.

    python -m bench.serve [--sizes tiny paper] [--clients 8] [--seconds 30] [--inputs real]

Issue #9, item 8. For the chest X-ray classifier (Ark; ``tiny`` = the CPU preset the demo serves,
ResNet-18 at 64 px; ``paper`` = the published Swin-B at 224 px; random weights, since speed does
not depend on them) the export is built once (shared with ``python -m bench.export``) and then:

1. **raw**: ``export.runtime.load(...).predict`` on preprocessed batches of ``--clients`` images,
   in this process, with the server stopped: the model's own throughput, the ceiling.
2. **served**: the real ``bentoml serve`` (``serve.launch``), ``--clients`` concurrent async
   clients each posting one DICOM file per request to ``/v1/cxr/classify`` for ``--seconds``
   after a warm-up, once with the DALI CPU pipeline and once with ``ANATOMIX_PREPROCESS=numpy``;
   then one client alone, for the unloaded latency. Each response's ``Server-Timing`` header gives
   the time spent decoding DICOM, preprocessing and in the model (waiting for its batch included).
3. **raw** again: the two raw phases bracket the served ones; their mean is the reference.
4. **preprocessing alone**: DALI CPU and the NumPy reference on the same decoded images,
   alternating, in this process.

Inputs (``--inputs``): ``real`` = pydicom-data's full-size chest CRs RG1_UNCR (1955 x 1841) and
RG3_UNCR, alternating; ``phantom`` = synthetic 1024 x 1024 CRs (``imaging.phantoms``).
The clients run on the same machine as the server, so they take some of its CPU.

Targets (issue #9), printed as PASS/MISS: served >= 0.85 x raw throughput at 8 clients with zero
errors; decode + preprocessing <= 10 % of request time. Writes ``<out>/results.json``. Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from bench.export import _ark_spec, _loadavg, prepare  # noqa: E402
from export.runtime import load  # noqa: E402
from imaging.dicom import read_image  # noqa: E402
from imaging.preprocess import prepare_radiograph, radiograph_to_unit  # noqa: E402
from serve import launch  # noqa: E402
from serve.timing import STAGES, parse_server_timing  # noqa: E402

SERVED_TARGET, SHARE_TARGET = 0.85, 0.10
ROUTE = "/v1/cxr/classify"


@dataclass
class Phase:
    """One load phase: requests completed inside the measured window, and what they report."""

    label: str
    clients: int
    seconds: float
    completed: int = 0
    errors: int = 0
    throughput: float = 0.0  # requests (= images) per second
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    stages_ms: dict = field(default_factory=dict)  # mean per request
    decode_preprocess_share: float = 0.0
    first_error: str = ""


def real_inputs() -> list[tuple[str, bytes]]:
    from pydicom.data import get_testdata_file

    return [(n, Path(get_testdata_file(n)).read_bytes()) for n in ("RG1_UNCR.dcm", "RG3_UNCR.dcm")]


def phantom_inputs(n: int = 4, size: int = 1024) -> list[tuple[str, bytes]]:
    from imaging.phantoms import make_chest_ct, make_radiograph
    from imaging.writers import radiograph_bytes

    out = []
    for seed in range(n):
        film = make_radiograph(make_chest_ct(seed, shape=(64, 128, 128)), size=(size, size))
        out.append((f"phantom{seed}.dcm", radiograph_bytes(film.pixels, modality="CR")))
    return out


def units(inputs: list[tuple[str, bytes]], n: int) -> list[np.ndarray]:
    """``n`` decoded images in [0, 1], cycling through the inputs as the clients do."""
    decoded = [radiograph_to_unit(read_image(data)) for _, data in inputs]
    return [decoded[i % len(decoded)] for i in range(n)]


def measure_raw(export_dir: Path, batch: np.ndarray, seconds: float) -> float:
    """Images per second of ``Runtime.predict`` on ``batch``, over at least ``seconds``."""
    rt = load(export_dir)
    rt.predict(batch)  # warm-up: session initialisation, allocations
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        rt.predict(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


async def _drive(url: str, inputs, clients: int, warmup: float, seconds: float, phase: Phase):
    records = []
    t0 = time.perf_counter()
    begin, end = t0 + warmup, t0 + warmup + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                name, data = inputs[i % len(inputs)]
                i += clients
                start = time.perf_counter()
                try:
                    files = [("files", (name, data, "application/dicom"))]
                    r = await client.post(url + ROUTE, files=files)
                    status, text = r.status_code, r.text[:200]
                    timing = parse_server_timing(r.headers.get("server-timing", ""))
                except httpx.HTTPError as exc:
                    status, text, timing = -1, repr(exc), {}
                records.append((start, time.perf_counter(), status, timing, text))

        await asyncio.gather(*(worker(k) for k in range(clients)))
    bad = [r for r in records if r[2] != 200]
    phase.errors = len(bad)
    phase.first_error = f"{bad[0][2]}: {bad[0][4]}" if bad else ""
    done = [r for r in records if r[2] == 200 and begin <= r[0] and r[1] <= end]
    phase.completed = sum(1 for r in records if r[2] == 200 and begin <= r[1] <= end)
    phase.throughput = phase.completed / seconds
    if done:
        lat = sorted((r[1] - r[0]) * 1000.0 for r in done)
        phase.p50_ms = statistics.median(lat)
        phase.p99_ms = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]
        phase.mean_ms = statistics.fmean(lat)
        phase.stages_ms = {s: statistics.fmean(r[3].get(s, 0.0) for r in done) for s in STAGES}
        spent = phase.stages_ms["decode"] + phase.stages_ms["preprocess"]
        phase.decode_preprocess_share = spent / phase.mean_ms


def served(export_dir: Path, out: Path, inputs, mode: str, args) -> list[Phase]:
    """Start the server with ``ANATOMIX_PREPROCESS=mode``; the loaded and the one-client phase."""
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = models / "cxr"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(export_dir.resolve(), target_is_directory=True)
    env = {
        "ANATOMIX_PREPROCESS": mode,
        "ANATOMIX_MAX_BATCH": str(args.clients),
        "ANATOMIX_CXR_CONCURRENCY": str(max(8, args.clients)),  # every client at once
        "ANATOMIX_MAX_UPLOAD_MB": "64",
    }
    phases = []
    with launch.start(models, out / f"server-{mode}.log", env=env) as srv:
        for clients, seconds in ((args.clients, args.seconds), (1, args.seconds / 2)):
            ph = Phase(f"served ({mode})", clients, seconds)
            asyncio.run(_drive(srv.url, inputs, clients, args.warmup, seconds, ph))
            share = 100 * ph.decode_preprocess_share
            print(f"  {ph.label}, {clients} client(s): {ph.throughput:.2f} img/s, "
                  f"p50 {ph.p50_ms:.0f} ms, p99 {ph.p99_ms:.0f} ms, errors {ph.errors}, "
                  f"decode+preprocess {share:.1f} %", flush=True)  # fmt: skip
            phases.append(ph)
    return phases


def preprocess_alone(pp, images: list[np.ndarray], rounds: int) -> dict:
    """Milliseconds per image: DALI CPU pipeline vs the NumPy reference, alternating."""
    from serve.preprocess import DaliPreprocessor

    dali = DaliPreprocessor(pp, max_batch=len(images), device="cpu")

    def numpy_ref(items):
        return np.stack([prepare_radiograph(x, pp)[0] for x in items])

    fns = {"dali_cpu": dali, "numpy": numpy_ref}
    diff = float(np.abs(dali(images) - numpy_ref(images)).max())
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in list(fns)[r % 2 :] + list(fns)[: r % 2]:
            start = time.perf_counter()
            fns[k](images)
            times[k].append((time.perf_counter() - start) * 1000.0 / len(images))
    return {k: statistics.median(v) for k, v in times.items()} | {"max_abs_diff": diff}


def bench_size(size: str, inputs, out: Path, args) -> dict:
    spec = _ark_spec(size)
    print(f"\n== ark_{size} ({spec.model_args['backbone']}, {spec.input_shape[-1]} px) ==")
    _, export_dir, _ = prepare(spec, ROOT / "bench" / "out" / "export")
    pp = load(export_dir).manifest.preprocessing
    images = units(inputs, args.clients)
    batch = np.stack([prepare_radiograph(x, pp)[0] for x in images])
    t0 = time.perf_counter()
    decoded = [radiograph_to_unit(read_image(data)) for _, data in inputs]
    decode_ms = (time.perf_counter() - t0) * 1000.0 / len(decoded)
    raw = [measure_raw(export_dir, batch, args.raw_seconds)]
    print(f"  raw runtime, batch {len(batch)}: {raw[0]:.2f} img/s", flush=True)
    phases = []
    for mode in args.preprocess:
        phases += served(export_dir, out / f"ark_{size}", inputs, mode, args)
    raw.append(measure_raw(export_dir, batch, args.raw_seconds))
    print(f"  raw runtime again: {raw[1]:.2f} img/s", flush=True)
    pre = preprocess_alone(pp, images, rounds=args.pre_rounds)
    print(f"  preprocessing alone (ms/image): DALI CPU {pre['dali_cpu']:.2f}, "
          f"NumPy {pre['numpy']:.2f} (max |diff| {pre['max_abs_diff']:.1e})")  # fmt: skip
    raw_mean = statistics.fmean(raw)
    main = phases[0]
    verdict = {
        "served_over_raw": main.throughput / raw_mean,
        "served_ok": main.throughput >= SERVED_TARGET * raw_mean and main.errors == 0,
        "share_ok": main.decode_preprocess_share <= SHARE_TARGET,
    }
    return {
        "model": f"ark_{size}",
        "backbone": spec.model_args["backbone"],
        "input_px": spec.input_shape[-1],
        "raw_img_s": raw,
        "decode_ms_per_image_in_process": decode_ms,
        "phases": [asdict(p) for p in phases],
        "preprocess_alone_ms": pre,
        **verdict,
    }


def table(results: list[dict]) -> str:
    """The markdown rows for bench/RESULTS.md."""
    lines = [
        "| model | phase | clients | img/s | served / raw | p50 ms | p99 ms | errors | "
        "decode ms | preprocess ms | model ms (incl. batch wait) | decode+pre share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        raw = statistics.fmean(r["raw_img_s"])
        before, after = r["raw_img_s"]
        lines.append(f"| {r['model']} | raw runtime, batch 8 (before / after) | - | "
                     f"{before:.2f} / {after:.2f} | 1.00 | | | | | | | |")  # fmt: skip
        for p in r["phases"]:
            s = p["stages_ms"]
            lines.append(
                f"| {r['model']} | {p['label']} | {p['clients']} | {p['throughput']:.2f} | "
                f"{p['throughput'] / raw:.2f} | {p['p50_ms']:.0f} | {p['p99_ms']:.0f} | "
                f"{p['errors']} | {s.get('decode', 0):.1f} | {s.get('preprocess', 0):.1f} | "
                f"{s.get('infer', 0):.1f} | {100 * p['decode_preprocess_share']:.1f} % |"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", choices=("tiny", "paper"), default=["tiny", "paper"])
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    p.add_argument("--raw-seconds", type=float, default=10.0, help="per raw-runtime phase")
    p.add_argument("--pre-rounds", type=int, default=20, help="preprocessing-alone rounds")
    p.add_argument("--inputs", choices=("real", "phantom"), default="real")
    p.add_argument(
        "--preprocess", nargs="+", choices=("dali", "numpy"), default=["dali", "numpy"],
        help="server preprocessing modes to measure (first one is the target's)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "serve")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = real_inputs() if args.inputs == "real" else phantom_inputs()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {_loadavg():.2f}; "
          f"inputs: {args.inputs} ({', '.join(n for n, _ in inputs)})", flush=True)  # fmt: skip
    results = [bench_size(size, inputs, args.out, args) for size in args.sizes]
    print("\n" + table(results) + "\n")
    for r in results:
        print(f"{r['model']}: served/raw {r['served_over_raw']:.2f} "
              f"({'PASS' if r['served_ok'] else 'MISS'} >= {SERVED_TARGET} with 0 errors); "
              f"decode+preprocess {100 * r['phases'][0]['decode_preprocess_share']:.1f} % "
              f"({'PASS' if r['share_ok'] else 'MISS'} <= {100 * SHARE_TARGET:.0f} %)")  # fmt: skip
    meta = {"argv": sys.argv, "inputs": args.inputs, "cores": os.cpu_count(),
            "load_end": _loadavg()}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
