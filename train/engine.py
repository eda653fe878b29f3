"""The training loop shared by every method: one process or DistributedDataParallel, resumable.

Determinism is what makes resume exact: the data order of an epoch comes from a
``DistributedSampler`` seeded by ``(seed, epoch)``, and every step's augmentation randomness from
a generator seeded by ``(seed, epoch, step, rank)``. A checkpoint therefore only needs the weights,
the optimiser and scheduler states and the counters, and a resumed run replays exactly the steps an
uninterrupted run would have taken.

Run directory::

    config.yaml                 the resolved config
    metrics.jsonl               one JSON object per log step / epoch
    model.safetensors           best-validation weights (what export reads)
    checkpoints/latest          name of the newest complete checkpoint
    checkpoints/step_00000120/  model.safetensors + state.pt (optimiser, scheduler, counters)
                                + checksums.json (size and SHA-256 of both, checked on resume)

Crash safety. A checkpoint is written into ``checkpoints/.step_N.tmp/``, renamed to ``step_N``
when complete, and only then named by ``latest`` (itself replaced atomically); old checkpoints
are pruned after that, never the one ``latest`` names. A process killed at any moment (SIGKILL
included) therefore leaves ``latest`` naming a complete checkpoint, and ``--resume`` continues
from it: leftovers of the interrupted write (a ``.tmp`` directory, a renamed checkpoint that
``latest`` never named) are removed, and the replayed steps rewrite them identically.

A checkpoint that ``latest`` names but that is damaged (truncated, bit-flipped, edited, a file
missing, or a ``state.pt`` that would need unsafe unpickling) is refused with a
:class:`~models.checkpoint.CheckpointError` naming the file. The engine deliberately does *not*
fall back to an older checkpoint on its own: the write protocol never leaves ``latest`` naming an
incomplete checkpoint, so damage there means the disk or someone changed it after the fact, which
an operator must hear about rather than have hidden by a silent rollback. The message lists the
earlier checkpoints; writing one's name into ``checkpoints/latest`` resumes from it (and, like
any resume, deletes the checkpoints after the one ``latest`` names: they belong to the history
being replayed). The checksums detect damage, not an attacker (who can rewrite them too); what
keeps a crafted ``state.pt`` from running code is that it is only ever read with
``weights_only=True``. Checkpoints written before ``checksums.json`` existed still resume, checked
by the loaders alone (which catch truncation but not a flipped bit in tensor data).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from models.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    atomic_path,
    atomic_write_bytes,
    load_torch_file,
    load_weights,
    save_weights,
)

from .config import dump_config
from .optim import build_optimizer, build_scheduler
from .settings import RunConfig


class CubeSource(Protocol):
    def __len__(self) -> int: ...
    def batch(self, indices: list[int]) -> torch.Tensor | tuple[torch.Tensor, ...]: ...


class Method(Protocol):
    """What a method gives the engine (see ``train/genesis/method.py`` for an example).

    ``datasets()`` may return a *list* of training sources: each epoch then visits them in order,
    one full pass each (a "phase"; Ark's cyclic visit of its datasets), and a resumed run
    continues inside the right phase.

    Optional members, used when present:

    - ``wants_context = True``: ``loss`` is called as ``loss(model, batch, generator, ctx)`` with a
      :class:`StepContext` while training and ``ctx=None`` for validation.
    - ``after_step(model, ctx)``: after every optimiser step (e.g. a per-iteration EMA teacher).
    - ``after_phase(model, ctx)``: after the last step of each phase (Ark's per-dataset EMA).
    - ``export_model(model) -> (module, name, args)``: what ``model.safetensors`` holds (e.g. the
      teacher of a student-teacher pair); checkpoints always hold the whole ``model``.
    - ``ddp_kwargs``: extra ``DistributedDataParallel`` arguments (e.g.
      ``find_unused_parameters=True`` when some heads are unused in a step).
    - ``val_metrics(net, val_set, device) -> dict``: logged with each epoch's val loss.
    - ``inference_card() -> dict``: what inference needs (task, preprocessing, labels; see
      :mod:`train.cards`), stored in ``model.safetensors``'s metadata for ``export``.

    Hooks run before the checkpoint that records their step, so a resumed run neither repeats
    nor skips one.
    """

    cfg: RunConfig

    def build_model(self) -> tuple[torch.nn.Module, str, dict]: ...
    def datasets(self) -> tuple[CubeSource | list[CubeSource], CubeSource]: ...
    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepContext:
    """Where a training step sits: epoch, phase (training source) and step counters."""

    epoch: int
    phase: int  # index of the training source (0 when there is one)
    step_in_phase: int
    steps_in_phase: int
    global_step: int  # before this step's optimiser update
    epochs: int
    phases: int

    @property
    def last_in_phase(self) -> bool:
        return self.step_in_phase == self.steps_in_phase - 1


@dataclass
class Progress:
    """Counters saved in ``state.pt``."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # steps of ``epoch`` already taken
    global_step: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    finished: bool = False


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the process group when started by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def pick_device(choice: str) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("loop.device=cuda but no CUDA device is available")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator whose seed depends only on ``seed`` and ``parts`` (resume-safe)."""
    value = seed
    for p in parts:
        value = (value * 1_000_003 + p + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def fit(
    method: Method,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after_steps: int | None = None,
) -> Progress:
    """Train ``method`` into ``run_dir``; returns the final counters.

    Args:
        resume: continue from ``checkpoints/latest``; where there is none yet (a run killed
            before its first checkpoint), start from step 0 and say so.
        stop_after_steps: checkpoint and return once ``global_step`` reaches this (used to test
            interruption; a real kill loses at most the steps since the last checkpoint).
    """
    cfg = method.cfg
    loop = cfg.loop
    run_dir = Path(run_dir)
    device = pick_device(loop.device)
    ddp = setup_distributed(device)

    torch.manual_seed(loop.seed)  # identical initial weights on every rank
    model, model_name, model_args = method.build_model()
    model.to(device)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, loop.epochs)
    prog = Progress()

    ckpt_root = run_dir / "checkpoints"
    if resume and not (ckpt_root / "latest").is_file():
        # A run killed before its first checkpoint (or a retry loop's first attempt) has nothing
        # to resume: start it from step 0, as the same command without --resume would.
        if ddp.main:
            print(
                f"--resume: no checkpoint in {ckpt_root} yet: starting from step 0",
                file=sys.stderr,
                flush=True,
            )
        resume = False
    if resume:
        prog = _restore(ckpt_root, model, optimizer, scheduler, device)
    elif (ckpt_root / "latest").is_file():
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume or a new --run-dir")
    if ddp.main:
        _remove_uncommitted(ckpt_root)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
        _truncate_metrics(run_dir / "metrics.jsonl", prog.global_step)

    train_sets, val_set = method.datasets()
    phases = list(train_sets) if isinstance(train_sets, (list, tuple)) else [train_sets]
    net = (
        DistributedDataParallel(model, **getattr(method, "ddp_kwargs", {}))
        if ddp.world > 1
        else model
    )
    samplers = [
        DistributedSampler(
            range(len(source)),
            num_replicas=ddp.world,
            rank=ddp.rank,
            shuffle=True,
            seed=loop.seed + 7919 * p,  # phase 0 keeps the single-source order
            drop_last=True,
        )
        for p, source in enumerate(phases)
    ]
    plan = _phase_plan(phases, samplers, loop)
    per_epoch = len(plan)
    phase_steps = [sum(1 for q, _ in plan if q == p) for p in range(len(phases))]
    with_ctx = getattr(method, "wants_context", False)
    export = getattr(method, "export_model", lambda m: (m, model_name, model_args))
    has_card = hasattr(method, "inference_card")
    autocast = _autocast(loop.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=loop.amp == "fp16" and device.type == "cuda")
    metrics = _MetricsLog(run_dir / "metrics.jsonl", enabled=ddp.main)

    def checkpoint() -> None:
        _save(
            ckpt_root,
            model,
            model_name,
            model_args,
            optimizer,
            scheduler,
            prog,
            ddp,
            loop.keep_checkpoints,
        )

    while prog.epoch < loop.epochs and not prog.finished:
        orders = []
        for sampler in samplers:
            sampler.set_epoch(prog.epoch)
            orders.append(list(sampler))
        net.train()
        bar = tqdm(
            range(prog.step_in_epoch, per_epoch),
            total=per_epoch,
            initial=prog.step_in_epoch,
            desc=f"epoch {prog.epoch + 1}/{loop.epochs}",
            disable=not (ddp.main and loop.progress),
            dynamic_ncols=True,
        )
        tick, seen = time.perf_counter(), 0
        for b in bar:
            phase, bp = plan[b]
            idx = orders[phase][bp * loop.batch_size : (bp + 1) * loop.batch_size]
            batch = to_device(phases[phase].batch(idx), device)
            gen = step_generator(loop.seed, prog.epoch, b, ddp.rank)
            ctx = StepContext(
                epoch=prog.epoch,
                phase=phase,
                step_in_phase=bp,
                steps_in_phase=phase_steps[phase],
                global_step=prog.global_step,
                epochs=loop.epochs,
                phases=len(phases),
            )
            with autocast:
                loss = (
                    method.loss(net, batch, gen, ctx) if with_ctx else method.loss(net, batch, gen)
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ctx.last_in_phase:
                _sync_buffers(model, ddp)
            if hasattr(method, "after_step"):
                method.after_step(model, ctx)
            if ctx.last_in_phase and hasattr(method, "after_phase"):
                method.after_phase(model, ctx)
            prog.global_step += 1
            prog.step_in_epoch = b + 1
            seen += len(idx) * ddp.world
            if prog.global_step % loop.log_every == 0:
                rate = seen / max(time.perf_counter() - tick, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.1f}")
                metrics.write(
                    step=prog.global_step,
                    epoch=prog.epoch,
                    loss=loss.item(),
                    lr=optimizer.param_groups[0]["lr"],
                    samples_per_s=rate,
                )
            if stop_after_steps is not None and prog.global_step >= stop_after_steps:
                checkpoint()
                bar.close()
                _barrier(ddp)
                return prog
            if prog.global_step % loop.checkpoint_every == 0 and prog.step_in_epoch < per_epoch:
                checkpoint()
        bar.close()

        val = evaluate(method, net, val_set, loop, device, autocast)
        extra = method.val_metrics(net, val_set, device) if hasattr(method, "val_metrics") else {}
        scheduler.step()
        improved = val < prog.best_val
        if improved:
            prog.best_val, prog.bad_epochs = val, 0
            if ddp.main:
                best, best_name, best_args = export(model)
                card = {"inference": method.inference_card()} if has_card else {}
                save_weights(
                    best,
                    run_dir / "model.safetensors",
                    model_name=best_name,
                    model_args=best_args,
                    metadata={"epoch": str(prog.epoch), "val_loss": f"{val:.6g}"} | card,
                )
        else:
            prog.bad_epochs += 1
        metrics.write(
            step=prog.global_step,
            epoch=prog.epoch,
            val_loss=val,
            best_val_loss=prog.best_val,
            **extra,
        )
        prog.epoch, prog.step_in_epoch = prog.epoch + 1, 0
        if loop.patience is not None and prog.bad_epochs >= loop.patience:
            prog.finished = True  # early stopping
        checkpoint()
    prog.finished = True
    if ddp.world > 1:
        diff = replica_divergence(model)
        metrics.write(step=prog.global_step, epoch=prog.epoch, replica_max_abs_diff=diff)
    _barrier(ddp)
    return prog


def _sync_buffers(model: torch.nn.Module, ddp: Dist) -> None:
    """Give every replica rank 0's buffers (e.g. BatchNorm running statistics).

    DDP broadcasts them at the start of each forward, but the forward then updates them from the
    local batch, so after a phase's last step they differ; a teacher copying them, validation and
    the checkpoint need the same values everywhere.
    """
    if ddp.world <= 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def replica_divergence(model: torch.nn.Module) -> float:
    """Largest difference between any rank's weights and rank 0's (0.0 when DDP kept them equal)."""
    device = next(model.parameters()).device
    worst = torch.zeros((), dtype=torch.float64, device=device)
    for tensor in model.state_dict().values():
        if not tensor.is_floating_point():
            continue
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (tensor.detach() - reference).abs().max().double())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


@torch.no_grad()
def evaluate(method, net, val_set, loop, device, autocast) -> float:
    """Mean validation loss with fixed per-batch randomness (every rank computes all of it)."""
    net.eval()
    total, count = 0.0, 0
    for b, start in enumerate(range(0, len(val_set), loop.batch_size)):
        idx = list(range(start, min(start + loop.batch_size, len(val_set))))
        batch = to_device(val_set.batch(idx), device)
        gen = step_generator(loop.seed, -1, b)
        with autocast:
            if getattr(method, "wants_context", False):
                loss = method.loss(net, batch, gen, None)
            else:
                loss = method.loss(net, batch, gen)
        total += float(loss) * len(idx)
        count += len(idx)
    return total / max(count, 1)


def _phase_plan(phases, samplers, loop) -> list[tuple[int, int]]:
    """The steps of one epoch as (phase, batch index in phase), phases in order."""
    plan = []
    for p, (source, sampler) in enumerate(zip(phases, samplers, strict=True)):
        steps = len(sampler) // loop.batch_size
        if loop.steps_per_epoch is not None:
            steps = min(steps, loop.steps_per_epoch)
        if steps == 0:
            raise ValueError(
                f"{len(source)} training samples (source {p}) give no batch of "
                f"{loop.batch_size} per process"
            )
        plan.extend((p, b) for b in range(steps))
    return plan


def to_device(batch, device: torch.device):
    """Move a tensor, or a tuple/list of tensors, to ``device``."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch.to(device, non_blocking=True)


def _autocast(amp: str, device: torch.device):
    if amp == "off" or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _barrier(ddp: Dist) -> None:
    if ddp.world > 1:
        dist.barrier()


#: Test-only fault injection (see ``tests/train/test_faults.py``): with
#: ``ANATOMIX_FAULT_KILL_IN_SAVE=<step>`` the process SIGKILLs itself while writing the checkpoint
#: of global step ``<step>``, once ``model.safetensors`` is in the temporary directory and before
#: ``state.pt``; with ``<step>:renamed``, after the directory is renamed into place and before
#: ``latest`` names it. Unset (always, outside tests), it costs one environment lookup per
#: checkpoint.
FAULT_ENV = "ANATOMIX_FAULT_KILL_IN_SAVE"

CHECKSUMS = "checksums.json"
_CKPT_FILES = ("model.safetensors", "state.pt")
_CKPT_NAME = re.compile(r"step_(\d+)(?:_(\d+))?")


def _fault_point(where: str, step: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if spec:
        at, _, point = spec.partition(":")
        if int(at) == step and (point or "tmp") == where:
            os.kill(os.getpid(), signal.SIGKILL)


def _ckpt_key(name: str) -> tuple[int, int] | None:
    """``step_N`` → (N, 0), ``step_N_k`` → (N, k) (written order); None for other names."""
    m = _CKPT_NAME.fullmatch(name)
    return (int(m[1]), int(m[2] or 0)) if m else None


def _checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and _ckpt_key(p.name)]
    return sorted(found, key=lambda p: _ckpt_key(p.name))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _save(root: Path, model, model_name, model_args, optimizer, scheduler, prog, ddp, keep):
    """Write ``checkpoints/step_N`` completely, then point ``latest`` at it (atomic rename)."""
    if not ddp.main:
        return
    # A step checkpointed again (an epoch end right after a stop_after_steps checkpoint, a step
    # replayed after a refused checkpoint) gets the next suffix: never overwrite what ``latest``
    # may name, and keep names in written order (the order pruning relies on).
    name = f"step_{prog.global_step:08d}"
    keys = [_ckpt_key(p.name) for p in root.glob(f"{name}*")]
    taken = [key[1] for key in keys if key and key[0] == prog.global_step]
    if taken:
        name = f"{name}_{max(taken) + 1}"
    final = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors", model_name=model_name, model_args=model_args)
    _fault_point("tmp", prog.global_step)
    state = {
        "progress": asdict(prog),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    with atomic_path(tmp / "state.pt") as path:  # fsync'ed like the weights
        torch.save(state, path)
    sums = {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in _CKPT_FILES}
    atomic_write_bytes(tmp / CHECKSUMS, json.dumps(sums, indent=1).encode())
    os.replace(tmp, final)
    _fault_point("renamed", prog.global_step)
    atomic_write_bytes(root / "latest", name.encode())
    for old in _checkpoints(root)[: -max(keep, 1)]:
        if old.name != name:  # (it is the newest anyway; belt and braces)
            shutil.rmtree(old, ignore_errors=True)


def _remove_uncommitted(root: Path) -> None:
    """Delete what an interrupted ``_save`` left: ``.tmp`` entries and checkpoints newer than
    ``latest`` (renamed into place but never named by it; the resumed run rewrites them)."""
    if not root.is_dir():
        return
    for tmp in root.glob(".*.tmp"):  # .step_N.tmp/ directories, .latest.*.tmp files
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    pointer = root / "latest"
    current = _ckpt_key(pointer.read_text().strip()) if pointer.is_file() else (-1, -1)
    if current is None:  # an unreadable pointer: touch nothing (resuming refuses it anyway)
        return
    for ckpt in _checkpoints(root):
        if _ckpt_key(ckpt.name) > current:
            shutil.rmtree(ckpt, ignore_errors=True)


def _verify_checksums(ckpt: Path) -> None:
    """Compare ``model.safetensors`` and ``state.pt`` with the sizes and SHA-256 recorded when the
    checkpoint was written (checkpoints from before ``checksums.json`` existed are not checked)."""
    listing = ckpt / CHECKSUMS
    if not listing.is_file():
        return
    try:
        expected = json.loads(listing.read_text())
        entries = {f: (int(expected[f]["bytes"]), str(expected[f]["sha256"])) for f in _CKPT_FILES}
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{listing} is corrupt ({exc!r})") from exc
    for fname, (size, digest) in entries.items():
        path = ckpt / fname
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the checkpoint")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"{path} is {actual} bytes but was {size} when written: truncated or modified"
            )
        if _sha256(path) != digest:
            raise CheckpointError(
                f"{path} does not match the SHA-256 recorded in {listing} when it was written: "
                "corrupted or modified"
            )


def _restore(root: Path, model, optimizer, scheduler, device) -> Progress:
    """Load the checkpoint ``latest`` names; a damaged one raises (see the module docstring)."""
    pointer = root / "latest"
    if not pointer.is_file():
        raise FileNotFoundError(f"nothing to resume: {pointer} does not exist")
    name = pointer.read_text().strip()
    ckpt = root / name
    try:
        if not _ckpt_key(name) or not ckpt.is_dir():
            raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint in {root}")
        return _load_checkpoint(ckpt, model, optimizer, scheduler, device)
    except (CheckpointError, FileNotFoundError) as exc:
        earlier = [p.name for p in _checkpoints(root) if p.name != name]
        hint = (
            f"; earlier checkpoints: {', '.join(earlier)} (to resume from one, write its name "
            f"into {pointer}; the checkpoints after it are then deleted, so move {ckpt.name} "
            "elsewhere first to keep it)"
            if earlier
            else ""
        )
        cls = type(exc) if isinstance(exc, CheckpointError) else CheckpointError
        raise cls(f"cannot resume from {ckpt}: {exc}{hint}") from exc


def _load_checkpoint(ckpt: Path, model, optimizer, scheduler, device) -> Progress:
    _verify_checksums(ckpt)
    weights, _ = load_weights(ckpt / "model.safetensors")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(
            f"{ckpt / 'model.safetensors'} does not fit the configured model: {exc}"
        ) from exc
    state = load_torch_file(ckpt / "state.pt")
    try:
        optimizer.load_state_dict(state["optimizer"])
        for group_state in optimizer.state.values():  # optimiser buffers onto the model's device
            for k, v in group_state.items():
                if torch.is_tensor(v):
                    group_state[k] = v.to(device)
        scheduler.load_state_dict(state["scheduler"])
        return Progress(**state["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{ckpt / 'state.pt'} does not hold a usable training state ({exc!r})"
        ) from exc


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint (they will be written again)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if _logged_step(ln) <= step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def _logged_step(line: str) -> float:
    """A log line's step; infinity (dropped) for a line torn by a crash mid-write."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class _MetricsLog:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
