"""Serving install size and cold start, full install vs the serving-only one (issue #17).

    python -m bench.cold_start [--models exports] [--rounds 3]

For each virtual environment (``.venv``: the full install, ``make install``; ``.venv-serve``: the
serving-only install, ``make install-serve``), its size on disk (``du``) and, ``--rounds`` times
alternately, the seconds from starting ``bentoml serve`` to ``/readyz`` answering 200 and to the
first classify answer (a 7 MB chest CR), on the same exports. Figures: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from bench.demo_exports import ensure_demo_exports  # noqa: E402
from serve.launch import free_port  # noqa: E402


def du_mb(path: Path) -> float:
    cmd = ["du", "-sk", str(path.resolve())]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1024


def cold_start(venv: Path, models: Path, film: bytes) -> tuple[float, float]:
    port = free_port()
    env = os.environ | {"ANATOMIX_MODELS": str(models), "MALLOC_ARENA_MAX": "2"}
    cmd = [str(venv / "bin" / "bentoml"), "serve", "serve.service:AnatomixService",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{venv}: bentoml serve exited ({proc.returncode})")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        ready = time.perf_counter() - start
        r = httpx.post(url + "/v1/cxr/classify", files={"files": ("a.dcm", film)}, timeout=120)
        r.raise_for_status()
        return ready, time.perf_counter() - start
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "exports")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--venvs", nargs="+", type=Path, default=[ROOT / ".venv", ROOT / ".venv-serve"])
    args = p.parse_args(argv)
    from pydicom.data import get_testdata_file

    models = ensure_demo_exports(args.models)
    film = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    times: dict[Path, list[tuple[float, float]]] = {v: [] for v in args.venvs}
    for _ in range(args.rounds):
        for v in args.venvs:
            times[v].append(cold_start(v, models, film))
    print(f"{'venv':<14} {'size MB':>9}  to /readyz s (median; all)  to first answer s (median)")
    for v in args.venvs:
        ready = [t[0] for t in times[v]]
        first = [t[1] for t in times[v]]
        runs = ", ".join(f"{x:.2f}" for x in ready)
        print(f"{v.name:<14} {du_mb(v):>9.0f}  {statistics.median(ready):.2f} ({runs})"
              f"  {statistics.median(first):.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
