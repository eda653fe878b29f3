"""The training loop shared by every method: one process or DistributedDataParallel, resumable.

Determinism is what makes resume exact: the data order of an epoch comes from a
``DistributedSampler`` seeded by ``(seed, epoch)``, and every step's augmentation randomness from
a generator seeded by ``(seed, epoch, step, rank)``. A checkpoint therefore only needs the weights,
the optimiser and scheduler states and the counters, and a resumed run replays exactly the steps an
uninterrupted run would have taken.

What the loop calls on a method (every hook, with its default): :class:`train.method.Method`.
Checkpoints, their write protocol and what a resume checks: :mod:`train.checkpoints`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from models.checkpoint import atomic_write_bytes, save_weights

from .checkpoints import (
    Progress,
    remove_uncommitted,
    restore,
    save_checkpoint,
)
from .config import dump_config
from .method import Method, StepContext
from .optim import build_optimizer, build_scheduler


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
        prog = restore(ckpt_root, model, optimizer, scheduler, device)
    elif (ckpt_root / "latest").is_file():
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume or a new --run-dir")
    if ddp.main:
        remove_uncommitted(ckpt_root)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
        _truncate_metrics(run_dir / "metrics.jsonl", prog.global_step)

    train_sets, val_set = method.datasets()
    phases = list(train_sets) if isinstance(train_sets, (list, tuple)) else [train_sets]
    net = DistributedDataParallel(model, **method.ddp_kwargs) if ddp.world > 1 else model
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
    autocast = _autocast(loop.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=loop.amp == "fp16" and device.type == "cuda")
    metrics = _MetricsLog(run_dir / "metrics.jsonl", enabled=ddp.main)

    def checkpoint() -> None:
        if ddp.main:
            save_checkpoint(
                ckpt_root,
                model,
                model_name,
                model_args,
                optimizer,
                scheduler,
                prog,
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
                loss = method.loss(net, batch, gen, ctx)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ctx.last_in_phase:
                _sync_buffers(model, ddp)
            method.after_step(model, ctx)
            if ctx.last_in_phase:
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
        extra = method.val_metrics(net, val_set, device)
        scheduler.step()
        improved = val < prog.best_val
        if improved:
            prog.best_val, prog.bad_epochs = val, 0
            if ddp.main:
                best, best_name, best_args = method.export_model(model) or (
                    model,
                    model_name,
                    model_args,
                )
                card = method.inference_card()
                card = {} if card is None else {"inference": card}
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
def evaluate(method: Method, net, val_set, loop, device, autocast) -> float:
    """Mean validation loss with fixed per-batch randomness (every rank computes all of it)."""
    net.eval()
    total, count = 0.0, 0
    for b, start in enumerate(range(0, len(val_set), loop.batch_size)):
        idx = list(range(start, min(start + loop.batch_size, len(val_set))))
        batch = to_device(val_set.batch(idx), device)
        gen = step_generator(loop.seed, -1, b)
        with autocast:
            loss = method.loss(net, batch, gen, None)
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
