"""The training engine on Models Genesis: overfitting, exact resume, DDP. Real SIGKILLs of the
CLI, inside checkpoint writes too, are in test_faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kernels.genesis import GenesisTransformConfig, transform_batch
from models.registry import build_model
from train.engine import fit
from train.genesis.method import GenesisMethod

from .genesis_small import ROOT, assert_same_weights, cli, latest_weights, small_config


def test_overfits_one_batch():
    """Restoration MSE on one fixed transformed batch falls by at least half."""
    torch.manual_seed(0)
    model = build_model("unet3d", norm="batch_stats")
    cubes = torch.rand(2, 1, 16, 16, 16)
    x, y = transform_batch(
        cubes, GenesisTransformConfig(shuffle_blocks=50), torch.Generator().manual_seed(0)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(40):
        loss = F.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert F.mse_loss(model(x), y).item() < 0.5 * first


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    cfg = small_config(tmp_path)
    full = tmp_path / "full"
    fit(GenesisMethod(cfg, full), full)
    part = tmp_path / "part"
    prog = fit(GenesisMethod(cfg, part), part, stop_after_steps=4)  # mid-epoch 2
    assert prog.global_step == 4 and not prog.finished
    with pytest.raises(FileExistsError):
        fit(GenesisMethod(cfg, part), part)  # an existing run is never overwritten silently
    final = fit(GenesisMethod(cfg, part), part, resume=True)
    assert final.finished and final.global_step == 6
    assert_same_weights(latest_weights(full), latest_weights(part))
    steps = [json.loads(ln)["step"] for ln in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # no duplicated log lines after the resume
    assert (part / "model.safetensors").is_file() and (part / "config.yaml").is_file()


def test_resume_before_the_first_checkpoint_starts_from_step_zero(tmp_path, capsys):
    """A job killed before its first checkpoint, retried with --resume: it runs from step 0 and
    ends where an uninterrupted run does; the dead attempt's log lines are not kept."""
    cfg = small_config(tmp_path, "loop.epochs=1")
    full, early = tmp_path / "full", tmp_path / "early"
    fit(GenesisMethod(cfg, full), full)
    early.mkdir()  # what the killed attempt left: its config and one log line, no checkpoint
    (early / "config.yaml").write_text((full / "config.yaml").read_text())
    (early / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    final = fit(GenesisMethod(cfg, early), early, resume=True)
    assert "no checkpoint in" in capsys.readouterr().err
    assert final.finished and final.global_step == 3
    assert_same_weights(latest_weights(full), latest_weights(early))
    logged = [_logged(run) for run in (early, full)]
    assert [r["step"] for r in logged[0]] == [r["step"] for r in logged[1]]
    for got, want in zip(*logged, strict=True):
        assert got == pytest.approx(want, rel=1e-6)


def _logged(run: Path) -> list[dict]:
    """The run's metrics lines without the wall-clock rate."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k != "samples_per_s"} for ln in lines]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "train.run",
    ] + cli(run, tmp_path / "cache")[3:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=600, env=env)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    divergence = [r["replica_max_abs_diff"] for r in records if "replica_max_abs_diff" in r]
    assert divergence == [0.0]
    assert any("val_loss" in r for r in records)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_on_gpu_trains(tmp_path, amp):
    """Mixed precision on CUDA: the run finishes and its losses are finite."""
    cfg = small_config(tmp_path, f"loop.amp={amp}", "loop.device=cuda")
    fit(GenesisMethod(cfg, tmp_path / "run"), tmp_path / "run")
    records = [json.loads(ln) for ln in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
