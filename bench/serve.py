"""Load benchmark of the REST service: served throughput beside the raw runtime's, in one run.

    python -m bench.serve [--sizes tiny paper ct] [--clients 8] [--seconds 30] [--inputs real]

Issues #9 and #17. For the chest X-ray classifier (Ark; ``tiny`` = the CPU preset the demo
serves, ResNet-18 at 64 px; ``paper`` = the published Swin-B at 224 px; random weights, since
speed does not depend on them) the export is built once (shared with ``python -m bench.export``)
and then:

1. **raw**: ``export.runtime.load(...).predict`` on preprocessed batches of ``--clients`` images,
   in this process, with the server stopped: the model's own throughput, the ceiling.
2. **served**: the real ``bentoml serve`` (``serve.launch``), ``--clients`` concurrent async
   clients each posting one DICOM file per request to ``/v1/cxr/classify`` for ``--seconds``
   after a warm-up, per ``--preprocess`` mode (default ``auto``: NumPy on a CPU); then one client
   alone, for the unloaded latency. Each response's ``Server-Timing`` header gives the time spent
   decoding DICOM, preprocessing and in the model (waiting for its batch included).
3. **raw** again: the two raw phases bracket the served ones; their mean is the reference.
4. **preprocessing alone**: NumPy (and DALI's CPU pipeline where installed) on the same decoded
   images, alternating, in this process.

``ct``: ``/v1/ct/segment`` on a ``--ct-shape`` phantom study (default 128 × 256 × 256, sent as a
zip of DICOM slices) with a Models Genesis U-Net export at the paper's 64 × 64 × 32 cube, timed by
the client (upload, decoding and answer included), against what a MONAI user runs on the same
ONNX model: ``monai.inferers.sliding_window_inference`` with the manifest's roi, overlap and
blend and the same windows per call, in this process before and after the served runs; the
server's resident memory is sampled every 50 ms during each study (peak reported).

Inputs (``--inputs``): ``real`` = pydicom-data's full-size chest CRs RG1_UNCR (1955 x 1841) and
RG3_UNCR, alternating; ``phantom`` = synthetic 1024 x 1024 CRs (``imaging.phantoms``).
The clients run on the same machine as the server, so they take some of its CPU.

Targets, printed as PASS/MISS: served >= 0.85 x raw throughput at 8 clients with zero errors;
decode + preprocessing <= 10 % of request time; a served CT study no slower than MONAI's.
Writes ``<out>/results.json``. Not part of the test suite.
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
    """Milliseconds per image: the NumPy preprocessing, and DALI's CPU pipeline where DALI is
    installed, alternating."""

    def numpy_ref(items):
        return np.stack([prepare_radiograph(x, pp)[0] for x in items])

    fns = {"numpy": numpy_ref}
    diff = None
    try:
        from serve.preprocess import DaliPreprocessor

        fns["dali_cpu"] = DaliPreprocessor(pp, max_batch=len(images), device="cpu")
        diff = float(np.abs(fns["dali_cpu"](images) - numpy_ref(images)).max())
    except ImportError:
        pass
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
    dali = (f", DALI CPU {pre['dali_cpu']:.2f} (max |diff| {pre['max_abs_diff']:.1e})"
            if "dali_cpu" in pre else ", DALI not installed")  # fmt: skip
    print(f"  preprocessing alone (ms/image): NumPy {pre['numpy']:.2f}{dali}")
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


# -- CT segmentation: the served study against MONAI's sliding window on the same ONNX -------------


def ct_study(shape: tuple[int, int, int]):
    """A phantom CT of ``shape`` (D, H, W) → (volume, zip of its DICOM slices)."""
    from imaging.phantoms import make_chest_ct
    from imaging.writers import ct_series_bytes, study_zip

    ct = make_chest_ct(7, shape=shape, findings=("nodule",))
    return ct.volume, study_zip(ct_series_bytes(ct.volume))


def monai_seconds(export_dir: Path, volume) -> float:
    """What a MONAI user runs: the same preprocessing, then ``sliding_window_inference`` with the
    manifest's roi, overlap and blend, the server's windows per call, on the same ONNX Runtime
    session settings (``export.runtime.load``, fp32)."""
    import torch
    from monai.inferers import sliding_window_inference

    from export.segmentation import WINDOWS_PER_CALL, window_spec
    from imaging.preprocess import prepare_volume

    rt = load(export_dir)
    out_name = rt.manifest.outputs[0].name

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(rt.predict(windows.numpy())[out_name])

    start = time.perf_counter()
    x = prepare_volume(volume, rt.manifest.preprocessing)
    spec = window_spec(rt.manifest, x.shape[1:])
    with torch.inference_mode():
        probs = sliding_window_inference(
            torch.from_numpy(x)[None], spec.roi, WINDOWS_PER_CALL, predictor,
            overlap=spec.overlap, mode=spec.blend, cval=spec.pad_value,
        )  # fmt: skip
    masks = (probs[0] >= float(rt.manifest.inference.get("threshold", 0.5))).numpy()
    assert masks.shape[1:] == x.shape[1:]
    return time.perf_counter() - start


def _peak_rss_reset(procs) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of each process; False where Linux refuses."""
    ok = True
    for p in procs:
        try:
            Path(f"/proc/{p.pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def _peak_rss_mb(procs) -> float:
    """Sum over processes of each one's peak RSS since the reset (an upper bound of their peak
    together: the peaks may not coincide)."""
    total = 0
    for p in procs:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmHWM:"))  # fmt: skip
    return total / 1024


def _served_study(srv, data: bytes, sample_s: float = 1.0) -> tuple[float, int, float]:
    """One ``/v1/ct/segment`` request → (seconds, status, peak server RSS in MB).

    The peak is the kernel's (VmHWM, reset before the request), so nothing polls the server
    while it works: a 20 Hz RSS sampler in this process took ~8 s of CPU per 128-slice study
    from the two cores the server's ONNX Runtime threads use. Where the mark cannot be reset,
    RSS is sampled every ``sample_s`` seconds instead.
    """
    import threading

    from bench.soak import _rss_mb

    procs = srv.processes()
    exact = _peak_rss_reset(procs)
    peak, done = [_rss_mb(srv)], threading.Event()

    def sample():
        while not done.wait(sample_s):
            peak.append(_rss_mb(srv))

    thread = threading.Thread(target=sample, daemon=True)
    if not exact:
        thread.start()
    start = time.perf_counter()
    files = [("files", ("study.zip", data, "application/zip"))]
    r = httpx.post(srv.url + "/v1/ct/segment", files=files, timeout=1800)
    seconds = time.perf_counter() - start
    done.set()
    if exact:
        peak.append(_peak_rss_mb(procs))
    else:
        thread.join()
    if r.status_code != 200:
        print(f"  served CT: {r.status_code} {r.text[:300]}", flush=True)
    return seconds, r.status_code, max(peak)


def bench_ct(out: Path, args) -> dict:
    """Seconds per study: served (client-measured, upload and decoding included) vs MONAI's
    sliding window in this process (bracketing the served runs), and the server's peak RSS."""
    from bench.export import _genesis_specs
    from bench.soak import _rss_mb

    shape = tuple(args.ct_shape)
    spec = _genesis_specs(tuple(args.ct_roi))[0]  # the U-Net
    print(f"\n== CT segmentation: {spec.key}, study {shape} (D, H, W) ==", flush=True)
    _, export_dir, _ = prepare(spec, ROOT / "bench" / "out" / "export")
    volume, data = ct_study(shape)
    from export.segmentation import window_spec

    inf = load(export_dir).manifest.inference
    win = window_spec(load(export_dir).manifest, tuple(reversed(shape)))
    print(f"  roi {list(win.roi)}, overlap {win.overlap}, blend {win.blend}; "
          f"upload {len(data) / 2**20:.1f} MB", flush=True)  # fmt: skip
    monai = [monai_seconds(export_dir, volume)]
    print(f"  MONAI sliding_window_inference: {monai[0]:.1f} s", flush=True)
    models = out / "ct" / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = models / "ct_seg"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(export_dir.resolve(), target_is_directory=True)
    env = {"ANATOMIX_MAX_UPLOAD_MB": "256", "ANATOMIX_CT_TIMEOUT_S": "1800"}
    runs = []
    with launch.start(models, out / "ct" / "server.log", env=env) as srv:
        _, small = ct_study((16, 64, 64))
        _served_study(srv, small)  # warm-up: sessions, decoder pool
        idle = _rss_mb(srv)
        for _ in range(args.ct_repeat):
            seconds, status, peak = _served_study(srv, data)
            runs.append({"seconds": seconds, "status": status, "peak_rss_mb": peak})
            print(f"  served: {seconds:.1f} s (status {status}), server RSS peak {peak:.0f} MB "
                  f"(idle {idle:.0f} MB)", flush=True)  # fmt: skip
    monai.append(monai_seconds(export_dir, volume))
    print(f"  MONAI again: {monai[1]:.1f} s", flush=True)
    served_s = statistics.fmean(r["seconds"] for r in runs)
    ratio = served_s / statistics.fmean(monai)
    return {
        "model": spec.key,
        "study_dhw": list(shape),
        "inference": inf,
        "upload_mb": len(data) / 2**20,
        "monai_s": monai,
        "served": runs,
        "idle_rss_mb": idle,
        "served_over_monai": ratio,
        "ct_ok": ratio <= 1.0 and all(r["status"] == 200 for r in runs),
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
    p.add_argument(
        "--sizes", nargs="+", choices=("tiny", "paper", "ct"), default=["tiny", "paper", "ct"],
        help="Ark tiny / paper classification, and CT segmentation against MONAI",
    )  # fmt: skip
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    p.add_argument("--raw-seconds", type=float, default=10.0, help="per raw-runtime phase")
    p.add_argument("--pre-rounds", type=int, default=20, help="preprocessing-alone rounds")
    p.add_argument("--inputs", choices=("real", "phantom"), default="real")
    p.add_argument(
        "--preprocess", nargs="+", choices=("auto", "dali", "numpy"), default=["auto"],
        help="server preprocessing modes to measure (ANATOMIX_PREPROCESS; the first one is "
        "the target's; auto = NumPy on a CPU)",
    )  # fmt: skip
    p.add_argument(
        "--ct-shape", type=int, nargs=3, default=[128, 256, 256], metavar=("D", "H", "W")
    )
    p.add_argument(
        "--ct-roi",
        type=int,
        nargs=3,
        default=[64, 64, 32],
        metavar=("X", "Y", "Z"),
        help="Models Genesis cube of the CT export (the paper's 64x64x32)",
    )
    p.add_argument("--ct-repeat", type=int, default=2, help="served CT studies (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "serve")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = real_inputs() if args.inputs == "real" else phantom_inputs()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {_loadavg():.2f}; "
          f"inputs: {args.inputs} ({', '.join(n for n, _ in inputs)})", flush=True)  # fmt: skip
    results = [bench_size(size, inputs, args.out, args) for size in args.sizes if size != "ct"]
    ct = bench_ct(args.out, args) if "ct" in args.sizes else None
    print("\n" + table(results) + "\n")
    for r in results:
        print(f"{r['model']}: served/raw {r['served_over_raw']:.2f} "
              f"({'PASS' if r['served_ok'] else 'MISS'} >= {SERVED_TARGET} with 0 errors); "
              f"decode+preprocess {100 * r['phases'][0]['decode_preprocess_share']:.1f} % "
              f"({'PASS' if r['share_ok'] else 'MISS'} <= {100 * SHARE_TARGET:.0f} %)")  # fmt: skip
    if ct is not None:
        runs = ", ".join(f"{r['seconds']:.1f}" for r in ct["served"])
        peak = max(r["peak_rss_mb"] for r in ct["served"])
        print(f"CT {ct['study_dhw']}: served {runs} s vs MONAI "
              f"{' / '.join(f'{s:.1f}' for s in ct['monai_s'])} s: ratio "
              f"{ct['served_over_monai']:.2f} ({'PASS' if ct['ct_ok'] else 'MISS'} <= 1.00); "
              f"server RSS peak {peak:.0f} MB, idle {ct['idle_rss_mb']:.0f} MB")  # fmt: skip
    meta = {"argv": sys.argv, "inputs": args.inputs, "cores": os.cpu_count(),
            "load_end": _loadavg()}  # fmt: skip
    body = {"meta": meta, "results": results, "ct": ct}
    (args.out / "results.json").write_text(json.dumps(body, indent=1))
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
