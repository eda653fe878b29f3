"""Ark: schedules, EMA, label policies through the sources, masked loss, a tiny run and resume."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from models.checkpoint import load_torch_file, load_weights
from tests.imaging.datasets.fixtures import make_chexpert
from train.ark.config import ArkConfig, ArkDataConfig, ArkDatasetConfig
from train.ark.data import build_source
from train.ark.method import ArkMethod, masked_bce
from train.config import load_config
from train.engine import fit
from train.teacher import StudentTeacher, cosine_value


def test_cosine_schedule_hand_values():
    # DINO-style table: end + (start - end) * (1 + cos(pi * i / total)) / 2, i = 0 .. total-1
    assert cosine_value(0.9, 1.0, 8, 0) == pytest.approx(0.9)
    assert cosine_value(0.9, 1.0, 8, 4) == pytest.approx(0.95)  # cos(pi/2) = 0
    assert cosine_value(0.9, 1.0, 8, 7) == pytest.approx(1.0 - 0.05 * (1 - 0.9238795325))
    assert cosine_value(0.9, 1.0, 8, 8) == 1.0  # past the table: the end value
    assert cosine_value(0.0, 0.5, 8, 0) == 0.0
    assert cosine_value(0.0, 0.5, 8, 4) == pytest.approx(0.25)
    assert cosine_value(0.0, 0.5, 8, 7) == pytest.approx(0.5 - 0.25 * (1 - 0.9238795325))


def test_method_schedules_index_rounds_times_datasets():
    cfg = ArkConfig()
    cfg.loop.epochs = 4  # rounds; 3 datasets -> 12 entries
    method = ArkMethod(cfg, "unused")
    assert method.schedule_index(epoch=1, phase=2) == 5
    assert method.momentum(0) == pytest.approx(0.9)
    assert method.momentum(6) == pytest.approx(0.95)
    assert method.consistency(0) == 0.0
    assert method.consistency(6) == pytest.approx(0.25)
    assert method.consistency(11) == pytest.approx(0.5 - 0.25 * (1 - math.cos(math.pi / 12)))


def test_ema_update_hand_computed():
    torch.manual_seed(0)
    pair = StudentTeacher(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))
    t0 = pair.teacher[0].weight.detach().clone()
    with torch.no_grad():
        pair.student[0].weight.add_(1.0)
        pair.student[1].running_mean.fill_(0.5)
    s = pair.student[0].weight.detach().clone()
    pair.ema_update(0.9)
    torch.testing.assert_close(pair.teacher[0].weight, 0.9 * t0 + 0.1 * s)
    torch.testing.assert_close(pair.teacher[1].running_mean, torch.full((2,), 0.5))
    assert not any(p.requires_grad for p in pair.teacher.parameters())
    pair.train()
    assert pair.student.training and not pair.teacher.training


def test_masked_label_contributes_no_gradient():
    logits = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    loss = masked_bce(logits, target, mask)
    loss.backward()
    assert logits.grad[0, 1] == 0.0 and logits.grad[0, 0] != 0.0
    # equals the mean BCE over the two known labels, computed by hand
    p = torch.sigmoid(torch.tensor([2.0, 0.5]))
    assert loss.item() == pytest.approx(float(-(torch.log(p)).mean()), rel=1e-6)
    ones = torch.ones_like(mask)
    full = nn.BCEWithLogitsLoss()(logits, target)
    assert masked_bce(logits, target, ones).item() == pytest.approx(full.item(), rel=1e-6)


def test_chexpert_policies_through_the_ark_source(tmp_path):
    root = make_chexpert(tmp_path)
    data = ArkDataConfig(load_size=32)

    def source(missing):
        ds = ArkDatasetConfig(
            name="chexpert", root=str(root), reader={"uncertain": "lsr_ones"}, missing=missing
        )
        return build_source(ds, 1, "train", data, tmp_path / "cache", False)

    # row 1: Cardiomegaly 0, Edema -1, Atelectasis -1, Pleural Effusion 1, every other cell blank
    published = source("zero")
    target, mask = published.target[1], published.mask[1]
    names = published.label_names
    col = {n: names.index(n) for n in ("Cardiomegaly", "Edema", "Atelectasis", "Pleural Effusion")}
    assert target[col["Pleural Effusion"]] == 1.0 and target[col["Cardiomegaly"]] == 0.0
    for k in ("Edema", "Atelectasis"):
        assert 0.55 <= target[col[k]] <= 0.85  # LSR-Ones
    blanks = [i for i in range(len(names)) if i not in col.values()]
    assert np.all(target[blanks] == 0.0) and np.all(mask == 1.0)  # blank -> trained negative
    masked = source("mask")
    np.testing.assert_array_equal(masked.mask[1][blanks], 0.0)  # blank -> out of the loss
    np.testing.assert_array_equal(masked.mask[1][list(col.values())], 1.0)
    np.testing.assert_array_equal(masked.target[1][list(col.values())], target[list(col.values())])
    images, t, m, head = published.batch([0, 1])
    assert images.shape == (2, 1, 32, 32) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert head.tolist() == [1, 1]
    torch.testing.assert_close(t, torch.from_numpy(published.target[[0, 1]]))


def _tiny(tmp_path, overrides=()):
    base = [
        "loop.epochs=2",
        "loop.progress=false",
        "loop.checkpoint_every=3",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    cfg = load_config(ArkConfig, "configs/ark/tiny.yaml", base + list(overrides))
    cfg.data.datasets = cfg.data.datasets[:2]  # 2 synthetic datasets x 2 rounds
    return cfg


@pytest.mark.slow
@pytest.mark.timeout(900)  # renders 640 phantom films, then ~240 steps: minutes on 2 loaded cores
def test_tiny_run_learns_and_resumes_identically(tmp_path):
    # Two rounds leave the teacher barely past chance, and where it lands moves with the thread
    # count (same seed, 2-core machine: val mean AUROC 0.609 on one thread, 0.532 on two), so
    # the run is pinned to one thread: the same figure on every CI machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _learns_and_resumes(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _learns_and_resumes(tmp_path):
    cfg = _tiny(tmp_path)
    full = tmp_path / "full"
    fit(ArkMethod(cfg, full), full)
    log = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in log if "auroc_mean" in r][-1]
    assert last["auroc_mean"] > 0.56, last  # held-out (val split) mean AUROC, chance is 0.5

    # Resuming is checked on a shorter run (48 films per dataset, 24 steps): identity after a
    # resume does not depend on the length, and a second full run cost ~2 CI minutes.
    short = [f"data.datasets.{i}.{k}" for i in (0, 1) for k in ("reader.n=48", "per_split.val.n=8")]
    full = tmp_path / "short"
    fit(ArkMethod(_tiny(tmp_path, short), full), full)
    cut = tmp_path / "cut"
    fit(ArkMethod(_tiny(tmp_path, short), cut), cut, stop_after_steps=9)  # round 1, 2nd dataset
    fit(ArkMethod(_tiny(tmp_path, short), cut), cut, resume=True)
    a = load_torch_file(sorted((full / "checkpoints").glob("step_*"))[-1] / "state.pt")
    b = load_torch_file(sorted((cut / "checkpoints").glob("step_*"))[-1] / "state.pt")
    assert a["progress"] == b["progress"]
    wa, _ = load_weights(full / "model.safetensors")
    wb, _ = load_weights(cut / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.slow
def test_torchrun_two_processes_with_unused_heads(tmp_path):
    """DDP over 2 processes (gloo): only one head is used per step; replicas stay identical."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cache = tmp_path / "cache"
    small = (
        [
            "loop.epochs=1",
            "loop.batch_size=4",
            "loop.progress=false",
            f"data.cache_dir={cache}",
        ]
        + [
            f"data.datasets.{i}.reader={{n: 16, size: [40, 40], ct_shape: [48, 64, 64]}}"
            for i in range(3)
        ]
        + [f"data.datasets.{i}.per_split={{val: {{n: 8}}}}" for i in range(3)]
        + [
            "views.size=32",
            "data.load_size=40",
        ]
    )
    cfg = load_config(ArkConfig, root / "configs/ark/tiny.yaml", small)
    from train.ark.data import build_sources

    build_sources(cfg.data, cache, show=False)  # render once, before the ranks start
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "train.run", "pretrain", "--method", "ark", "--config",
           str(root / "configs/ark/tiny.yaml"), "--run-dir", str(run)]  # fmt: skip
    for item in small:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=root, timeout=600, env=env)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["replica_max_abs_diff"] for r in records if "replica_max_abs_diff" in r] == [0.0]
    assert any("auroc_mean" in r for r in records)
