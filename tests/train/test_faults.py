"""Crash safety of training checkpoints: SIGKILL at any moment, damaged and unsafe checkpoints.

The killed runs are the real CLI (``python -m train.run pretrain --method genesis``, the tiny
preset with ``SMALL``'s overrides: 2 epochs × 3 steps, a checkpoint after every step); the
uninterrupted reference and the last resume call ``fit`` (what the CLI runs) in this process to
save an interpreter start-up each. Every run uses one thread so that the weights agree exactly.
``python -m bench.faults_train`` is the long variant (many random kills on a longer run).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointError, UnsafeCheckpointError, load_weights
from train.checkpoints import CHECKSUMS, Progress, save_checkpoint
from train.engine import fit
from train.genesis.method import GenesisMethod

from .genesis_small import ROOT, assert_same_weights, cli, latest_weights, small_config

KILLED = -signal.SIGKILL
LAST_STEP = 6  # SMALL: 2 epochs of 3 steps


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ) | {"OMP_NUM_THREADS": "1", **extra}


def _latest(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def assert_same_losses(run: Path, full: Path) -> None:
    """Every step logged once, with the uninterrupted run's loss (to float32 rounding: the killed
    launches are separate processes, and the suite's earlier tests may leave this one's math
    library in another state, which moves the last bits of a reduction)."""
    got, want = _losses(run), _losses(full)
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), step


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run and the cube cache every test shares."""
    root = tmp_path_factory.mktemp("faults")
    _fit_one_thread(root / "full", root / "cache")
    return root / "full", root / "cache"


def _fit_one_thread(run: Path, cache: Path, **kw):
    """``fit`` in this process, on one thread like the CLI runs (``OMP_NUM_THREADS=1``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(GenesisMethod(small_config(cache.parent), run), run, **kw)
    finally:
        torch.set_num_threads(threads)


def _cli_run(run: Path, cache: Path, *args: str, env=None, kill_at: str | None = None) -> int:
    """The CLI run; ``kill_at``: SIGKILL inside that checkpoint write (kill_in_save.py)."""
    cmd = cli(run, cache) + list(args)
    if kill_at is not None:  # python -m train.run ... → python kill_in_save.py SPEC ...
        cmd = [cmd[0], str(Path(__file__).with_name("kill_in_save.py")), kill_at, *cmd[3:]]
    done = subprocess.run(cmd, cwd=ROOT, env=env or _env(), timeout=300, capture_output=True)
    if done.returncode not in (0, KILLED):
        pytest.fail(f"{cmd} failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    return done.returncode


@pytest.mark.slow
def test_kills_inside_checkpoint_writes_resume_to_the_same_weights(reference, tmp_path):
    full, cache = reference
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"

    # Killed while step 2's checkpoint is half written: weights in the .tmp dir, no state.pt yet.
    assert _cli_run(run, cache, kill_at="2") == KILLED
    assert _latest(run) == "step_00000001"
    assert (ckpts / ".step_00000002.tmp" / "model.safetensors").is_file()
    assert not (ckpts / ".step_00000002.tmp" / "state.pt").exists()

    # Resumed, then killed after step 4's checkpoint was renamed into place but before `latest`
    # named it (step 3 is the end of epoch 1).
    assert _cli_run(run, cache, "--resume", kill_at="4:renamed") == KILLED
    assert not (ckpts / ".step_00000002.tmp").exists()  # the first leftover was cleaned up
    assert _latest(run) == "step_00000003" and (ckpts / "step_00000004").is_dir()

    assert _fit_one_thread(run, cache, resume=True).finished  # the resume, in this process
    assert_same_weights(latest_weights(full), latest_weights(run))
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000005", "step_00000006"]
    assert_same_losses(run, full)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _logged_steps(path: Path) -> list[int]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line being written
    return steps


def _kill_at_random_moment(proc, run: Path, rng: random.Random, committed: int, old_log) -> bool:
    """SIGKILL ``proc`` a random fraction of a step after it logs a randomly chosen step.

    The target is one of the first two steps after the committed one; after its log line the
    process checkpoints it (and, at an epoch end, validates first), then computes the next step,
    so the kill lands anywhere from inside that checkpoint write to the end of the next step.
    Anchoring on steps rather than seconds keeps the kills where they are on any machine.
    ``old_log`` is the inode of the log before the launch: a resumed run replaces the log
    (dropping lines after its checkpoint) before it trains, so only a new inode is read.
    """
    target = min(committed + 1 + rng.randrange(2), LAST_STEP - 1)
    fraction = rng.random()
    log = run / "metrics.jsonl"
    seen: dict[int, float] = {}
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        now = time.time()
        if _inode(log) not in (None, old_log):
            seen.setdefault(committed, now)  # the log restarts: training starts about now
            for step in _logged_steps(log):
                seen.setdefault(step, now)
        if target in seen:
            time.sleep(fraction * (seen[target] - seen[target - 1]))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                return True
            return False
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_random_sigkills_resume_to_the_same_weights(reference, tmp_path):
    """Three SIGKILLs at seeded random moments (inside steps, checkpoint writes, validation)."""
    full, cache = reference
    run = tmp_path / "run"
    rng = random.Random(10)
    kills = 0
    while kills < 3:
        latest = run / "checkpoints" / "latest"
        committed = int(latest.read_text().split("_")[1]) if latest.is_file() else 0
        assert committed < LAST_STEP - 1, f"the run got too far for a third kill ({kills} kills)"
        old_log = _inode(run / "metrics.jsonl")
        proc = subprocess.Popen(
            cli(run, cache) + (["--resume"] if latest.is_file() else []),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        kills += _kill_at_random_moment(proc, run, rng, committed, old_log)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == KILLED, err.decode()[-3000:]
    assert _fit_one_thread(run, cache, resume=True).finished  # the last resume, in this process
    assert_same_weights(latest_weights(full), latest_weights(run))
    assert_same_losses(run, full)


# --------------------------------------------------------------------------------------------
# damaged checkpoints (in-process: resume refuses before it trains)


@pytest.fixture(scope="module")
def committed(reference, tmp_path_factory):
    """A run stopped after step 2: ``latest`` → step_00000002, step_00000001 kept too."""
    _, cache = reference
    run = tmp_path_factory.mktemp("committed") / "run"
    _fit_one_thread(run, cache, stop_after_steps=2)
    assert _latest(run) == "step_00000002"
    return run


def _copy(committed: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(committed, run)
    return run, run / "checkpoints" / "step_00000002"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the tensor data: no loader notices this on its own
    path.write_bytes(bytes(data))


def _resume(run: Path, reference, **kw):
    return _fit_one_thread(run, reference[1], resume=True, **kw)


@pytest.mark.parametrize(
    "fname, damage, with_checksums",
    [
        ("model.safetensors", _truncate, True),
        ("model.safetensors", _truncate, False),  # the loaders' own checks (older checkpoints)
        ("model.safetensors", _flip_bit, True),
        ("state.pt", _truncate, True),
        ("state.pt", _truncate, False),
        ("state.pt", _flip_bit, True),
        ("state.pt", Path.unlink, True),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_damaged_latest_checkpoint_is_refused_naming_the_file(
    committed, reference, tmp_path, fname, damage, with_checksums
):
    run, ckpt = _copy(committed, tmp_path)
    if not with_checksums:
        (ckpt / CHECKSUMS).unlink()
    damage(ckpt / fname)
    before = sorted(p.name for p in ckpt.parent.iterdir())
    with pytest.raises(CheckpointError) as err:
        _resume(run, reference)
    message = str(err.value)
    assert str(ckpt / fname) in message
    assert "step_00000001" in message and "latest" in message  # the way out
    assert sorted(p.name for p in ckpt.parent.iterdir()) == before  # nothing deleted


def test_refused_checkpoint_can_be_bypassed_by_pointing_latest_back(committed, reference, tmp_path):
    """The documented way out: name the earlier checkpoint in ``latest`` and resume from it."""
    run, ckpt = _copy(committed, tmp_path)
    # (cloned: the loaded tensors map the file, which _flip_bit rewrites in place)
    good = {k: v.clone() for k, v in load_weights(ckpt / "model.safetensors")[0].items()}
    _flip_bit(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError):
        _resume(run, reference)
    (run / "checkpoints" / "latest").write_text("step_00000001")
    assert _resume(run, reference, stop_after_steps=2).global_step == 2
    assert_same_weights(good, latest_weights(run))  # step 2 replayed identically
    assert _latest(run) == "step_00000002"  # the damaged one was deleted, as the message says


def test_latest_naming_a_missing_checkpoint_is_refused(committed, reference, tmp_path):
    run, ckpt = _copy(committed, tmp_path)
    shutil.rmtree(ckpt)
    with pytest.raises(CheckpointError, match="step_00000002"):
        _resume(run, reference)


class _Evil:
    """Unpickled unsafely, this runs a shell command (here: creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_state_with_a_code_running_pickle_is_refused_without_running_it(
    committed, reference, tmp_path
):
    run, ckpt = _copy(committed, tmp_path)
    marker = tmp_path / "pwned"
    state = ckpt / "state.pt"
    torch.save({"progress": _Evil(marker), "optimizer": {}, "scheduler": {}}, state)
    # A tamperer rewrites the checksums too: they detect damage, not an attack; weights_only does.
    sums = json.loads((ckpt / CHECKSUMS).read_text())
    sums["state.pt"] = {
        "bytes": state.stat().st_size,
        "sha256": hashlib.sha256(state.read_bytes()).hexdigest(),
    }
    (ckpt / CHECKSUMS).write_text(json.dumps(sums))
    with pytest.raises(UnsafeCheckpointError) as err:
        _resume(run, reference)
    assert str(state) in str(err.value) and "system" in str(err.value)
    assert not marker.exists()
    torch.load(state, weights_only=False)  # the control: unsafe loading does run it
    assert marker.exists()


def test_leftovers_of_an_interrupted_write_are_not_mistaken_for_checkpoints(
    committed, reference, tmp_path
):
    """A half-written .tmp dir, an orphan newer than ``latest`` and a pointer temp file."""
    full, _ = reference
    run, ckpt = _copy(committed, tmp_path)
    ckpts = ckpt.parent
    (ckpts / ".step_00000003.tmp").mkdir()
    (ckpts / ".step_00000003.tmp" / "model.safetensors").write_bytes(b"\0" * 10)
    shutil.copytree(ckpt, ckpts / "step_00000003")  # renamed, never named by latest
    _truncate(ckpts / "step_00000003" / "state.pt")
    (ckpts / ".latest.123.abcd1234.tmp").write_text("step_00000003")
    assert _resume(run, reference).finished
    assert_same_weights(latest_weights(full), latest_weights(run))
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000005", "step_00000006"]


def test_pruning_never_deletes_the_checkpoint_latest_names(tmp_path):
    """Even with a stray checkpoint that sorts after it, and suffixes past 9."""
    root = tmp_path / "checkpoints"
    for name in ("step_00000004", "step_00000004_9", "step_00000010"):
        (root / name).mkdir(parents=True)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    save_checkpoint(root, model, "linear", {}, opt, sched, Progress(global_step=4), keep=1)
    assert _latest(tmp_path) == "step_00000004_10"  # after _9 (not as text: "_10" < "_9")
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000004_10", "step_00000010"]
    save_checkpoint(root, model, "linear", {}, opt, sched, Progress(global_step=5), keep=1)
    assert _latest(tmp_path) == "step_00000005" and (root / "step_00000005" / "state.pt").is_file()
