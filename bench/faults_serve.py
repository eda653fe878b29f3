"""Server faults, long variant: the real server SIGKILLed under load again and again recovers.

    python -m bench.faults_serve [--kills 10] [--clients 4] [--seed 0] [--models DIR] [--out DIR]

Issue #10, item 1 (the CI-sized test is ``tests/serve/test_faults.py``). Each round starts
``bentoml serve`` (``serve.launch``) on the same port over the exports in ``--models`` (default
./exports; the demo models are built there if missing), checks that a chest CR's classification
equals the exported model run directly, keeps ``--clients`` threads posting classifications, and
at a seeded random moment 1-6 s into the load SIGKILLs every process of the server at once, as a
crash or the OOM killer would; then no process of it may survive. Reported: restart time (start
to ``/readyz`` 200, p50 and max), requests answered 200, requests cut off by a kill (connection
errors: expected), and what must stay 0 — answers other than 200 while up, 5xx, wrong answers,
orphaned processes, tracebacks in the server logs. Writes ``<out>/results.json``. Not in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.demo_exports import ensure_demo_exports
from export.runtime import load
from imaging.dicom import read_image
from imaging.preprocess import prepare_radiograph, radiograph_to_unit
from serve import launch

ROOT = Path(__file__).resolve().parents[1]
FILM = "RG1_UNCR.dcm"  # pydicom-data's full-size chest CR


def _film() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(FILM)).read_bytes()


def _post(client: httpx.Client, url: str, data: bytes) -> httpx.Response:
    files = [("files", (FILM, data, "application/dicom"))]
    return client.post(url + "/v1/cxr/classify", files=files)


def expected(models: Path, model_id: str, data: bytes) -> dict[str, np.ndarray]:
    """The exported classifier run directly (no server) on the same file: probs per label set."""
    rt = load(models / model_id)
    x, _ = prepare_radiograph(radiograph_to_unit(read_image(data)), rt.manifest.preprocessing)
    out = rt.predict(x[None])
    return {
        o.head or o.name: out[o.name][0]
        for o in rt.manifest.outputs
        if o.meaning == "probabilities"
    }


def _correct(answer: dict, want: dict[str, np.ndarray]) -> bool:
    got = answer["results"][0]["findings"]
    return set(got) == set(want) and all(
        np.allclose(list(got[k].values()), want[k], atol=1e-4) for k in want
    )


def _load(url: str, data: bytes, stop: threading.Event, outcomes: list, want) -> None:
    with httpx.Client(timeout=120) as client:  # one client per thread (shared ones break uploads)
        while not stop.is_set():
            try:
                r = _post(client, url, data)
                ok = r.status_code == 200 and _correct(r.json(), want)
                outcomes.append(("ok" if ok else f"wrong {r.status_code}", time.monotonic()))
            except httpx.HTTPError as exc:
                outcomes.append((f"cut {type(exc).__name__}", time.monotonic()))


def run_round(models: Path, port: int, log: Path, clients: int, delay: float, want, data):
    """One start, check, load and SIGKILL; returns the round's record."""
    t0 = time.monotonic()
    srv = launch.start(models, log, port=port)
    ready_s = time.monotonic() - t0
    with httpx.Client(timeout=120) as client:
        first = _post(client, srv.url, data)
    first_ok = first.status_code == 200 and _correct(first.json(), want)
    stop, outcomes = threading.Event(), []
    threads = [
        threading.Thread(target=_load, args=(srv.url, data, stop, outcomes, want))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    time.sleep(delay)
    procs = srv.processes()
    stop.set()  # no new requests after the kill: those in flight are the ones it cuts off
    killed_at = time.monotonic()
    srv.kill()
    for t in threads:
        t.join(timeout=150)
    orphans = [p.pid for p in procs if p.is_running() and p.status() != "zombie"]
    before = [o for o, at in outcomes if at < killed_at]
    after = [o for o, at in outcomes if at >= killed_at]
    text = log.read_text(errors="replace")
    return {
        "ready_s": round(ready_s, 2),
        "kill_after_s": round(delay, 2),
        "processes": len(procs),
        "first_answer_correct": first_ok,
        "ok": before.count("ok") + after.count("ok"),
        # a wrong answer counts wherever it lands; only a failed connection after the kill is
        # the expected cut-off
        "not_ok_while_up": [o for o in before if o != "ok"]
        + [o for o in after if o.startswith("wrong")],
        "cut_off": [o for o in after if o.startswith("cut")],
        "orphans": orphans,
        "traceback_in_log": "Traceback" in text,
        # BentoML's access log: "(status=200,type=application/json,...)"
        "answers_in_log": len(re.findall(r"status=\d{3}", text)),
        "status_5xx_in_log": len(re.findall(r"status=5\d\d", text)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", type=Path, default=ROOT / "exports")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "faults_serve")
    args = p.parse_args(argv)
    ensure_demo_exports(args.models)
    args.out.mkdir(parents=True, exist_ok=True)
    data, rng, port = _film(), random.Random(args.seed), launch.free_port()
    with launch.start(args.models, args.out / "probe.log", port=port) as srv:
        model_id = httpx.post(
            srv.url + "/v1/cxr/classify",
            files=[("files", (FILM, data, "application/dicom"))],
            timeout=120,
        ).json()["model"]
    want = expected(args.models, model_id, data)
    print(f"{args.kills} kills of the server classifying {FILM} with '{model_id}' under "
          f"{args.clients} clients, port {port}, {os.cpu_count()} cores", flush=True)  # fmt: skip
    rounds = []
    for k in range(args.kills):
        delay = rng.uniform(1.0, 6.0)
        rec = run_round(
            args.models, port, args.out / f"round{k:02d}.log", args.clients, delay, want, data
        )
        rounds.append(rec)
        print(
            f"round {k:2d}: ready {rec['ready_s']:5.1f} s, killed {rec['kill_after_s']:.1f} s "
            f"into the load ({rec['processes']} processes), {rec['ok']} answers ok, "
            f"{len(rec['cut_off'])} cut off, orphans {len(rec['orphans'])}",
            flush=True,
        )
    # the last restart, after the last kill, must serve correctly too
    t0 = time.monotonic()
    with launch.start(args.models, args.out / "final.log", port=port) as srv:
        final_ready = time.monotonic() - t0
        with httpx.Client(timeout=120) as client:
            r = _post(client, srv.url, data)
        final_ok = r.status_code == 200 and _correct(r.json(), want)
    ready = [r["ready_s"] for r in rounds] + [final_ready]
    summary = {
        "kills": args.kills,
        "clients": args.clients,
        "seed": args.seed,
        "restart_ready_s_p50": round(statistics.median(ready), 2),
        "restart_ready_s_max": round(max(ready), 2),
        "answers_ok": sum(r["ok"] for r in rounds),
        "cut_off_by_kills": sum(len(r["cut_off"]) for r in rounds),
        "not_ok_while_up": sum(len(r["not_ok_while_up"]) for r in rounds),
        "wrong_first_answers": sum(not r["first_answer_correct"] for r in rounds),
        "orphans": sum(len(r["orphans"]) for r in rounds),
        "logs_with_traceback": sum(r["traceback_in_log"] for r in rounds),
        "logs_with_5xx": sum(bool(r["status_5xx_in_log"]) for r in rounds),
        "answers_in_logs": sum(r["answers_in_log"] for r in rounds),
        "final_restart_correct": final_ok,
    }
    (args.out / "results.json").write_text(
        json.dumps({"summary": summary, "rounds": rounds}, indent=1)
    )
    print(json.dumps(summary, indent=1))
    bad = (
        summary["not_ok_while_up"] + summary["wrong_first_answers"] + summary["orphans"]
        + summary["logs_with_traceback"] + summary["logs_with_5xx"]
    )  # fmt: skip
    return 0 if bad == 0 and final_ok else 1


if __name__ == "__main__":
    sys.exit(main())
