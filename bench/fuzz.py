"""Long mutation-fuzzing campaigns against the imaging layer (issue 10, item 2).

    python -m bench.fuzz [--iterations N] [--seed S] [--targets read_image read_series ...]

The CI-sized variant is ``tests/imaging/test_fuzz.py``; this one runs the same targets
(``imaging.fuzz.targets``: ``read_image``, ``read_series`` on mutated phantom CT series, and
``radiograph_to_unit`` after a read) for longer: ``--iterations`` cases for ``read_image`` and a
tenth of that for the two others (a series case reads six files). Every case is a mutated real
file (pydicom / pydicom-data and phantoms, ``imaging.fuzz.seed_corpus``) run in a watched worker
process; outcomes are ok, a typed error (by code) or a failure (untyped exception, hang, crash or
peak memory past ``64 × input size + 256 MiB``), and each failure is printed with the seed and
iteration that reproduce it (``imaging.fuzz.reproduce``).

Prints the counts per outcome, typed-error code and mutator, and a markdown table; writes
``<out>/results.json`` and ``<out>/RESULTS_SECTION.md``. Exits 1 when a campaign had failures.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from imaging.fuzz import FuzzReport, run_campaign, seed_corpus  # noqa: E402
from imaging.fuzz.targets import TARGETS  # noqa: E402

#: share of ``--iterations`` each target gets
SHARES = {"read_image": 1.0, "read_series": 0.1, "radiograph_to_unit": 0.1}


def _progress(name: str, total: int):
    """A callback printing a running count every 10 % of the campaign."""
    step = max(1, total // 10)

    def show(report: FuzzReport) -> None:
        done = sum(report.outcomes.values())
        if done % step == 0 or done == total:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
            print(f"  {name}: {done}/{total} ({counts})", flush=True)

    return show


def run(name: str, iterations: int, seed: int, time_limit_s: float) -> FuzzReport:
    target, make = TARGETS[name]
    print(f"{name}: {iterations} cases, seed {seed}", flush=True)
    return run_campaign(
        target,
        iterations,
        seed,
        make=make,
        time_limit_s=time_limit_s,
        progress=_progress(name, iterations),
    )


def summary(name: str, report: FuzzReport) -> str:
    """What one campaign printed: totals, slowest case, peak memory and the tables."""
    n = sum(report.outcomes.values())
    rate = n / report.elapsed_s if report.elapsed_s else 0.0
    lines = [
        f"### `{name}`: {n} cases in {report.elapsed_s:.0f} s ({rate:.0f} cases/s), "
        f"{len(report.failures)} failures",
        "",
        f"Slowest case {report.slowest_s * 1e3:.0f} ms (iteration {report.slowest_iteration}); "
        f"largest peak allocation {report.peak_bytes / 2**20:.0f} MiB "
        f"(iteration {report.peak_iteration}).",
        "",
        report.markdown(),
    ]
    lines += [f"- failure: {f}" for f in report.failures[:20]]
    return "\n".join(lines)


def section(reports: dict[str, FuzzReport], command: str) -> str:
    """The markdown to add to bench/RESULTS.md."""
    corpus = ", ".join(name for name, _ in seed_corpus())
    head = [
        "## Mutation fuzzing of the imaging layer — `bench/fuzz.py`",
        "",
        "Seeded mutations (bit flips, interesting bytes, truncation, corrupt element lengths, "
        "huge Rows/Columns/NumberOfFrames/BitsAllocated/SamplesPerPixel, wrong transfer syntax "
        "UIDs, deflate re-encoding, duplicated/removed chunks, splices of two files; 1–3 per "
        "case) of real files fed to the imaging layer in a watched worker process. A failure is "
        "an exception other than a typed `ImagingError`, a hang (> 10 s), a worker crash, a "
        "peak allocation (tracemalloc or resident set) above 64 × input + 256 MiB, a result "
        "breaking its contract, or a patient identifier of the corpus in an error message.",
        f"Seed files: {corpus}.",
        f"Machine: the 2-core CPU dev/CI machine, {date.today().isoformat()}.",
        f"Command: `{command}`",
        "",
        "",
    ]
    return "\n".join(head) + "\n\n".join(summary(n, r) for n, r in reports.items()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000, help="read_image cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=list(SHARES))
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fuzz")
    args = parser.parse_args(argv)

    seed_corpus()  # built once here, inherited by the forked workers
    reports = {}
    for name in args.targets:
        iterations = max(1, round(args.iterations * SHARES[name]))
        reports[name] = run(name, iterations, args.seed, args.time_limit)
    command = "python -m bench.fuzz " + " ".join(argv if argv is not None else sys.argv[1:])
    text = section(reports, command.strip())
    print(text)

    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": command.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "campaigns": {n: r.to_dict() for n, r in reports.items()},
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (args.out / "RESULTS_SECTION.md").write_text(text, encoding="utf-8")
    print(f"results: {args.out / 'results.json'}")
    return 1 if any(r.failures for r in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
