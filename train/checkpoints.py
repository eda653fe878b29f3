"""Training checkpoints: written so that a kill at any moment leaves one to resume from.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    atomic_path,
    atomic_write_bytes,
    load_torch_file,
    load_weights,
    save_weights,
)


@dataclass
class Progress:
    """Counters saved in ``state.pt``."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # steps of ``epoch`` already taken
    global_step: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    finished: bool = False


CHECKSUMS = "checksums.json"
_CKPT_FILES = ("model.safetensors", "state.pt")
_CKPT_NAME = re.compile(r"step_(\d+)(?:_(\d+))?")


def checkpoint_key(name: str) -> tuple[int, int] | None:
    """``step_N`` → (N, 0), ``step_N_k`` → (N, k) (written order); None for other names."""
    m = _CKPT_NAME.fullmatch(name)
    return (int(m[1]), int(m[2] or 0)) if m else None


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and checkpoint_key(p.name)]
    return sorted(found, key=lambda p: checkpoint_key(p.name))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(root: Path, model, model_name, model_args, optimizer, scheduler, prog, keep):
    """Write ``root/step_N`` completely, then point ``latest`` at it (atomic rename); pruning
    keeps the newest ``keep``."""
    # A step checkpointed again (an epoch end right after a stop_after_steps checkpoint, a step
    # replayed after a refused checkpoint) gets the next suffix: never overwrite what ``latest``
    # may name, and keep names in written order (the order pruning relies on).
    name = f"step_{prog.global_step:08d}"
    keys = [checkpoint_key(p.name) for p in root.glob(f"{name}*")]
    taken = [key[1] for key in keys if key and key[0] == prog.global_step]
    if taken:
        name = f"{name}_{max(taken) + 1}"
    final = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors", model_name=model_name, model_args=model_args)
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
    atomic_write_bytes(root / "latest", name.encode())
    for old in list_checkpoints(root)[: -max(keep, 1)]:
        if old.name != name:  # (it is the newest anyway; belt and braces)
            shutil.rmtree(old, ignore_errors=True)


def remove_uncommitted(root: Path) -> None:
    """Delete what an interrupted :func:`save_checkpoint` left: ``.tmp`` entries and checkpoints
    newer than ``latest`` (renamed into place, never named by it; the resumed run rewrites them)."""
    if not root.is_dir():
        return
    for tmp in root.glob(".*.tmp"):  # .step_N.tmp/ directories, .latest.*.tmp files
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    pointer = root / "latest"
    current = checkpoint_key(pointer.read_text().strip()) if pointer.is_file() else (-1, -1)
    if current is None:  # an unreadable pointer: touch nothing (resuming refuses it anyway)
        return
    for ckpt in list_checkpoints(root):
        if checkpoint_key(ckpt.name) > current:
            shutil.rmtree(ckpt, ignore_errors=True)


def verify_checksums(ckpt: Path) -> None:
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


def restore(root: Path, model, optimizer, scheduler, device) -> Progress:
    """Load the checkpoint ``latest`` names; a damaged one raises (see the module docstring)."""
    pointer = root / "latest"
    if not pointer.is_file():
        raise FileNotFoundError(f"nothing to resume: {pointer} does not exist")
    name = pointer.read_text().strip()
    ckpt = root / name
    try:
        if not checkpoint_key(name) or not ckpt.is_dir():
            raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint in {root}")
        return _load_checkpoint(ckpt, model, optimizer, scheduler, device)
    except (CheckpointError, FileNotFoundError) as exc:
        earlier = [p.name for p in list_checkpoints(root) if p.name != name]
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
    verify_checksums(ckpt)
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
