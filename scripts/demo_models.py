"""Build the demo models ``make serve`` serves when ``./exports`` is empty.

Each family is pretrained on synthetic phantoms with its tiny preset (shortened), fine-tuned
where the family needs it, and exported with ``python -m export.run`` — the same commands a user
runs, so the demo is also a smoke test of the whole path. Every step is skipped when its output
already exists, so an interrupted build resumes (``make serve`` resumes it: ``.demo-incomplete``
marks the exports directory until the build finishes). Minutes on a 2-core CPU; progress is shown.

    python scripts/demo_models.py [--exports exports] [--runs runs/demo] [--only cxr,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def _steps(runs: Path) -> dict[str, list[tuple[str, list[str], Path]]]:
    """Per demo export: (what, command, the file that marks it done)."""
    g, seg, ark, peac = runs / "genesis", runs / "nodule_seg", runs / "ark", runs / "peac"
    return {
        "nodule_seg": [
            (
                "Models Genesis pretraining (1 epoch of the tiny preset)",
                [
                    PY,
                    "-m",
                    "train.run",
                    "pretrain",
                    "--method",
                    "genesis",
                    "--config",
                    "configs/genesis/tiny.yaml",
                    "--run-dir",
                    str(g),
                    "--set",
                    "loop.epochs=1",
                ],
                g / "model.safetensors",
            ),
            (
                "nodule segmentation fine-tuning",
                [
                    PY,
                    "-m",
                    "train.run",
                    "finetune",
                    "--config",
                    "configs/genesis/finetune_tiny.yaml",
                    "--init",
                    f"genesis:{g}",
                    "--run-dir",
                    str(seg),
                    "--set",
                    "loop.epochs=3",
                ],
                seg / "model.safetensors",
            ),
        ],
        "cxr_findings": [
            (
                "Ark pretraining on three synthetic chest X-ray datasets (1 round)",
                [
                    PY,
                    "-m",
                    "train.run",
                    "pretrain",
                    "--method",
                    "ark",
                    "--config",
                    "configs/ark/tiny.yaml",
                    "--run-dir",
                    str(ark),
                    "--set",
                    "loop.epochs=1",
                ],
                ark / "model.safetensors",
            ),
        ],
        "peac": [
            (
                "PEAC pretraining (1 epoch of the tiny preset)",
                [
                    PY,
                    "-m",
                    "train.run",
                    "pretrain",
                    "--method",
                    "peac",
                    "--config",
                    "configs/peac/tiny.yaml",
                    "--run-dir",
                    str(peac),
                    "--set",
                    "loop.epochs=1",
                ],
                peac / "model.safetensors",
            ),
        ],
    }


EXPORTS = {  # demo export → (run it comes from, export.run arguments)
    "nodule_seg": ("nodule_seg", ["--task", "segment"]),
    "cxr_findings": ("ark", ["--task", "classify"]),
    "peac": ("peac", ["--task", "correspond"]),
}


#: present while a demo build is unfinished: `make serve` then resumes it instead of serving a
#: partial set of exports
INCOMPLETE = ".demo-incomplete"


def _exported(folder: Path) -> bool:
    """A demo export of this anatomix's manifest schema is there (one written by an older
    anatomix, which the server would refuse, or an unreadable one is exported again)."""
    path = folder / "manifest.json"
    if not path.is_file():
        return False
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from export.manifest import SCHEMA_VERSION

    try:
        version = json.loads(path.read_text(encoding="utf-8")).get("schema_version")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        version = None
    if version != SCHEMA_VERSION:
        print(f"{folder.name}: manifest schema {version}, this anatomix writes "
              f"{SCHEMA_VERSION}: exporting again", flush=True)  # fmt: skip
        return False
    return True


def build(exports: Path, runs: Path, only: list[str]) -> int:
    steps = _steps(runs)
    todo = [name for name in EXPORTS if name in only]
    exports.mkdir(parents=True, exist_ok=True)
    (exports / INCOMPLETE).touch()
    for i, name in enumerate(todo, 1):
        if _exported(exports / name):
            print(f"[demo {i}/{len(todo)}] {name}: already exported", flush=True)
            continue
        for what, cmd, done in steps[name]:
            if done.is_file():
                print(f"[demo {i}/{len(todo)}] {what}: done before, kept", flush=True)
                continue
            print(f"[demo {i}/{len(todo)}] {what} …", flush=True)
            start = time.perf_counter()
            if subprocess.run(cmd).returncode != 0:
                print(f"demo build failed at: {' '.join(cmd)}", file=sys.stderr)
                return 1
            print(f"[demo {i}/{len(todo)}] {what}: {time.perf_counter() - start:.0f} s", flush=True)
        run, args = EXPORTS[name]
        cmd = [
            PY,
            "-m",
            "export.run",
            "--from",
            str(runs / run),
            "--out",
            str(exports / name),
            "--name",
            name,
            *args,
        ]
        print(f"[demo {i}/{len(todo)}] exporting {name} …", flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"demo export failed: {' '.join(cmd)}", file=sys.stderr)
            return 1
    (exports / INCOMPLETE).unlink(missing_ok=True)
    print(f"demo models ready in {exports}/", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exports", type=Path, default=Path("exports"), help="export directory")
    p.add_argument("--runs", type=Path, default=Path("runs/demo"), help="training run directory")
    p.add_argument(
        "--only", default=",".join(EXPORTS), help=f"comma-separated subset of {', '.join(EXPORTS)}"
    )
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(EXPORTS))
    if unknown:
        p.error(f"unknown demo model(s) {unknown}; valid: {', '.join(EXPORTS)}")
    return build(args.exports, args.runs, only)


if __name__ == "__main__":
    sys.exit(main())
