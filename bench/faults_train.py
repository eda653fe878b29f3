"""Crash safety of training: a tiny Models Genesis run SIGKILLed at many random moments.

    python -m bench.faults_train [--kills 20] [--seed 0] [--epochs 8] [--out DIR] [--keep-runs]

The long variant of ``tests/train/test_faults.py``. One uninterrupted CLI run (``python -m
train.run pretrain --method genesis``, the tiny preset with the tests' small overrides: 3 steps
per epoch, a checkpoint after every step) is the reference; it also calibrates the kill times:
how long a launch takes to start training and how long a step takes. Then the same run is
launched again and again and SIGKILLed after a seeded random delay, uniform from 80 % of the
reference's start-up time to the time a resumed launch takes to log its first step (measured on
the launches so far: the restore and data loading make it longer) + 2 steps, so kills land in
the restore, the data loading, the steps, validation and checkpoint writes. After each kill the
run directory is inspected (before the next launch cleans it up):

- where the kill landed: inside a checkpoint write (a ``.step_N.tmp`` directory, a checkpoint
  renamed into place that ``latest`` does not name yet, a ``.latest`` temp file, or old
  checkpoints being pruned), another atomic write, the start-up, or training;
- that ``latest`` names a complete checkpoint (checksums match, both files load) and never goes
  back.

Each relaunch passes ``--resume`` once ``checkpoints/latest`` exists (a run killed before its
first checkpoint starts afresh). After ``--kills`` kills the run is resumed to the end and its
final weights and per-step losses are compared with the reference. Everything runs on one
thread (``OMP_NUM_THREADS=1``) so that the weights agree exactly. Writes ``results.json`` and
``RESULTS_SECTION.md`` under ``--out``; the run directories are deleted unless ``--keep-runs``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from models.checkpoint import load_torch_file, load_weights
from train.checkpoints import checkpoint_key, verify_checksums

ROOT = Path(__file__).resolve().parents[1]
KEEP = 2  # loop.keep_checkpoints of the run (the default)
# The tests' small run (tests/train/genesis_small.py SMALL), without loop.epochs.
OVERRIDES = [
    "data.synthetic_train=2",
    "data.synthetic_val=1",
    "data.phantom_shape=[24, 32, 32]",
    "data.phantom_spacing=[10.0, 10.0, 10.0]",
    "data.cube_size=[16, 16, 16]",
    "data.cubes_per_volume=4",
    "data.border_xy=2",
    "data.border_z=1",
    "data.dense_max=1.0",
    "transform.shuffle_blocks=50",
    "loop.batch_size=2",
    "loop.steps_per_epoch=3",
    "loop.checkpoint_every=1",
    f"loop.keep_checkpoints={KEEP}",
    "loop.log_every=1",
    "loop.progress=false",
    "optim.lr=0.01",
]


def command(run: Path, cache: Path, epochs: int, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "train.run", "pretrain", "--method", "genesis"]
    cmd += ["--config", str(ROOT / "configs/genesis/tiny.yaml"), "--run-dir", str(run)]
    for item in OVERRIDES + [f"loop.epochs={epochs}", f"data.cache_dir={cache}"]:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ) | {"OMP_NUM_THREADS": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def logged(run: Path) -> list[dict]:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # being written
    return out


def reference_run(run: Path, cache: Path, epochs: int, log: Path) -> dict:
    """The uninterrupted run, timed: start-up (launch → config.yaml) and the step interval."""
    t0 = time.time()
    proc = launch(command(run, cache, epochs, resume=False), log)
    started, seen = None, {}
    while proc.poll() is None:
        now = time.time() - t0
        if started is None and (run / "config.yaml").is_file():
            started = now
        for r in logged(run):
            if "loss" in r:
                seen.setdefault(r["step"], now)
        time.sleep(0.01)
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed ({proc.returncode}); see {log}")
    steps = sorted(seen)
    gaps = [seen[b] - seen[a] for a, b in zip(steps, steps[1:], strict=False) if b == a + 1]
    return {"wall_s": time.time() - t0, "startup_s": started, "step_s": statistics.median(gaps)}


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def latest_name(run: Path) -> str | None:
    pointer = run / "checkpoints" / "latest"
    return pointer.read_text().strip() if pointer.is_file() else None


def check_latest(run: Path) -> tuple[str | None, str | None]:
    """(name ``latest`` gives, None or why that checkpoint is not complete)."""
    name = latest_name(run)
    if name is None:
        return None, None
    ckpt = run / "checkpoints" / name
    try:
        verify_checksums(ckpt)
        load_weights(ckpt / "model.safetensors")
        load_torch_file(ckpt / "state.pt")
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        return name, f"{type(exc).__name__}: {exc}"
    return name, None


def where_killed(run: Path, since_ns: int, config_before: int | None) -> str:
    """Where the kill landed, from what it left in the run directory (new since the launch)."""
    ckpts = run / "checkpoints"

    def new(p: Path) -> bool:
        try:
            return p.lstat().st_ctime_ns >= since_ns
        except FileNotFoundError:
            return False

    if ckpts.is_dir():
        if any(new(p) for p in ckpts.glob(".step_*.tmp")):
            return "checkpoint: writing the .tmp directory"
        current = checkpoint_key(latest_name(run) or "step_-1")
        dirs = [p for p in ckpts.iterdir() if p.is_dir() and checkpoint_key(p.name)]
        if any(current is None or checkpoint_key(p.name) > current for p in dirs if new(p)):
            return "checkpoint: renamed, not yet named by latest"
        if any(new(p) for p in ckpts.glob(".latest.*.tmp")):
            return "checkpoint: replacing latest"
        older = [p for p in dirs if current is not None and checkpoint_key(p.name) <= current]
        if len(older) > KEEP and new(ckpts / "latest"):
            return "checkpoint: pruning old checkpoints"
    if any(new(p) for p in run.glob(".*.tmp")):
        return "other atomic write (best weights, config, log)"
    config = run / "config.yaml"
    after = config.stat().st_mtime_ns if config.is_file() else None
    if after == config_before:
        return "start-up (imports, restore)"
    return "training, validation or data loading"


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_weights(run / "checkpoints" / latest_name(run) / "model.safetensors")[0]


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in logged(run) if "loss" in r]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8, help="3 steps each")
    p.add_argument("--out", type=Path, default=ROOT / "bench/out/faults_train")
    p.add_argument("--keep-runs", action="store_true")
    args = p.parse_args(argv)
    out = args.out
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache, log = work / "cache", work / "runs.log"
    t_all = time.time()

    print("reference run ...", flush=True)
    ref = reference_run(work / "reference", cache, args.epochs, log)
    print(f"  {ref['wall_s']:.1f} s, start-up {ref['startup_s']:.1f} s, step {ref['step_s']:.2f} s")
    lo = 0.8 * ref["startup_s"]
    first_steps = []  # per launch that got there: seconds from the launch to its first new step
    hi = lo

    rng = random.Random(args.seed)
    run = work / "killed"
    kills, records = 0, []
    launches = resumes = fresh = 0
    incomplete, backwards, previous = [], False, (-1, -1)
    while kills < args.kills:
        resume = latest_name(run) is not None
        config = run / "config.yaml"
        config_before = config.stat().st_mtime_ns if config.is_file() else None
        first = statistics.median(first_steps) if first_steps else lo + 3 * ref["step_s"]
        hi = first + 2 * ref["step_s"]
        delay = rng.uniform(lo, hi)
        committed = checkpoint_key(latest_name(run))[0] if resume else 0
        old_log = inode(run / "metrics.jsonl")
        since, t0 = time.time_ns(), time.time()
        proc = launch(command(run, cache, args.epochs, resume), log)
        launches += 1
        resumes += resume
        fresh += not resume
        seen_first = False
        while proc.poll() is None and time.time() < t0 + delay:
            if not seen_first and inode(run / "metrics.jsonl") not in (None, old_log):
                if any("loss" in r and r["step"] > committed for r in logged(run)):
                    first_steps.append(time.time() - t0)
                    seen_first = True
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == 0:
            print("  the run finished before the kill: stopping the kills early")
            break
        if proc.returncode != -signal.SIGKILL:
            raise SystemExit(f"a launch failed ({proc.returncode}); see {log}")
        kills += 1
        where = where_killed(run, since, config_before)
        name, problem = check_latest(run)
        key = checkpoint_key(name) if name else (-1, -1)
        backwards |= key < previous
        previous = max(previous, key)
        if problem:
            incomplete.append(f"kill {kills}: {name}: {problem}")
        window = [round(lo, 2), round(hi, 2)]
        records.append(
            dict(kill=kills, resume=resume, delay_s=round(delay, 2), window_s=window, where=where)
            | dict(latest=name, latest_complete=problem is None)
        )
        print(f"  kill {kills:2d} after {delay:5.2f} s: {where}; latest {name}", flush=True)

    print("final resume ...", flush=True)
    final_launch = launch(command(run, cache, args.epochs, latest_name(run) is not None), log)
    launches += 1
    resumes += latest_name(run) is not None
    if final_launch.wait() != 0:
        raise SystemExit(f"the final resume failed; see {log}")
    a, b = final_weights(work / "reference"), final_weights(run)
    same_keys = a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a) if same_keys else float("inf")
    during_write = sum(r["where"].startswith("checkpoint:") for r in records)
    by_place: dict[str, int] = {}
    for r in records:
        by_place[r["where"]] = by_place.get(r["where"], 0) + 1
    results = {
        "command": f"python -m bench.faults_train --kills {args.kills} --seed {args.seed} "
        f"--epochs {args.epochs}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "steps": 3 * args.epochs,
        "checkpoint_mb": round(
            sum(f.stat().st_size for f in (run / "checkpoints" / latest_name(run)).iterdir()) / 1e6,
            1,
        ),
        "reference": {k: round(v, 2) for k, v in ref.items()},
        "kill_window_s": [round(lo, 2), round(hi, 2)],  # the last one
        "first_step_after_launch_s": round(statistics.median(first_steps or [math.nan]), 2),
        "kills": kills,
        "latest_at_last_kill": records[-1]["latest"] if records else None,
        "kills_during_checkpoint_write": during_write,
        "kills_by_place": dict(sorted(by_place.items(), key=lambda kv: -kv[1])),
        "launches": launches,
        "resumes": resumes,
        "fresh_starts": fresh,
        "latest_complete_after_every_kill": not incomplete,
        "incomplete": incomplete,
        "latest_went_backwards": backwards,
        "final_weights_equal": same_keys and diff == 0.0,
        "final_max_abs_diff": diff,
        "losses_equal": losses(run) == losses(work / "reference"),
        "total_wall_s": round(time.time() - t_all, 1),
        "kill_log": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS_SECTION.md").write_text(section(results))
    print(json.dumps({k: v for k, v in results.items() if k != "kill_log"}, indent=2))
    if not args.keep_runs:
        shutil.rmtree(work / "reference", ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
    ok = results["final_weights_equal"] and not incomplete and not backwards
    return 0 if ok and results["losses_equal"] else 1


def section(r: dict) -> str:
    rows = "\n".join(f"| {place} | {n} |" for place, n in r["kills_by_place"].items())
    ref = r["reference"]
    complete, forward = r["latest_complete_after_every_kill"], not r["latest_went_backwards"]
    verdict = "identical" if r["final_weights_equal"] else f"max |Δ| {r['final_max_abs_diff']:g}"
    return f"""## Training survives SIGKILL at random moments — `bench/faults_train.py`

A tiny Models Genesis pretraining run ({r["steps"]} steps of batch 2, 16³ cubes, a checkpoint of
{r["checkpoint_mb"]} MB — weights + SGD state — after every step, 2 kept) through the real CLI,
SIGKILLed {r["kills"]} times at seeded random moments: each launch is killed after a delay drawn
uniformly from 80 % of the uninterrupted run's start-up ({ref["startup_s"]} s) to the median time
a launch took to log its first new step ({r["first_step_after_launch_s"]} s) + 2 steps of
{ref["step_s"]} s (last window: {r["kill_window_s"][0]}–{r["kill_window_s"][1]} s), then
relaunched with `--resume` (afresh while no checkpoint exists), and resumed to the end after the
last kill; {r["latest_at_last_kill"]} was the last checkpoint before that final resume. One
thread per process. Machine: {r["machine"]}, {r["date"]}; {r["total_wall_s"]} s in all.
Command: `.venv/bin/{r["command"]}`

| where the kill landed (from what it left behind) | kills |
|---|---|
{rows}

- kills inside a checkpoint write (any stage: `.tmp` directory, renamed but not yet named by
  `latest`, replacing `latest`, pruning): **{r["kills_during_checkpoint_write"]} of {r["kills"]}**
- launches {r["launches"]}: {r["resumes"]} with `--resume`, {r["fresh_starts"]} fresh (the first
  one, and any after a kill before the first checkpoint)
- `latest` named a complete checkpoint (checksums match, both files load) after every kill:
  **{complete}**; it never went back: **{forward}**
- final weights vs the uninterrupted run: **{verdict}**; per-step losses identical:
  **{r["losses_equal"]}**
"""


if __name__ == "__main__":
    sys.exit(main())
