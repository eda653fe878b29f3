"""Fine-tuning: Genesis initialisation, a short run per task kind, evaluation, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train.finetune.evaluate as ev
from models.checkpoint import load_weights, save_weights
from models.registry import build_model
from train.config import dump_config, load_config
from train.engine import fit
from train.finetune.config import FinetuneConfig
from train.finetune.evaluate import evaluate_run
from train.finetune.init import initialise
from train.finetune.method import FinetuneMethod
from train.genesis.config import GenesisConfig
from train.run import main

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "task.args.cube_size=[16, 16, 16]",
    "task.args.n_train_volumes=1",
    "task.args.n_val_volumes=1",
    "task.args.n_test_volumes=1",
    "loop.epochs=1",
    "loop.steps_per_epoch=2",
    "loop.batch_size=2",
    "loop.progress=false",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A 'pretrained' U-Net file: random weights, but distinct from any fresh initialisation."""
    torch.manual_seed(123)
    model = build_model("unet3d", norm="batch_stats")
    path = tmp_path_factory.mktemp("pre") / "model.safetensors"
    save_weights(model, path, model_name="unet3d", model_args={"norm": "batch_stats"})
    return path


def test_genesis_init_loads_unet_and_classifier_encoder(pretrained):
    source = build_model("unet3d")
    source.load_state_dict(load_file(pretrained))
    seg = build_model("unet3d", out_activation=None)
    initialise(seg, f"genesis:{pretrained.parent}", "segmentation")  # a run directory works
    for key, value in source.state_dict().items():
        torch.testing.assert_close(seg.state_dict()[key], value, rtol=0, atol=0)
    cls = build_model("genesis_classifier", n_classes=1)
    head_before = cls.state_dict()["dense_1.weight"].clone()
    initialise(cls, f"genesis:{pretrained}", "classification")
    for key, value in cls.state_dict().items():
        if key.startswith("down_tr"):
            torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0)
    torch.testing.assert_close(cls.state_dict()["dense_1.weight"], head_before)
    with pytest.raises(FileNotFoundError):
        initialise(seg, "genesis:/no/such/run", "segmentation")
    with pytest.raises(ValueError):
        initialise(seg, "imagenet", "segmentation")


@pytest.mark.parametrize("task", ["synthetic_nodule_seg", "synthetic_nodule_cls"])
def test_short_finetune_and_evaluate(tmp_path, task, pretrained, monkeypatch):
    cfg = load_config(
        FinetuneConfig,
        ROOT / "configs/genesis/finetune_tiny.yaml",
        TINY + [f"task.name={task}", f"model.init=genesis:{pretrained}"],
    )
    method = FinetuneMethod(cfg, tmp_path)
    prog = fit(method, tmp_path)
    assert prog.finished and "from genesis" in method.init_summary
    result = evaluate_run(tmp_path, "test")
    assert json.loads((tmp_path / "eval_test.json").read_text()) == result
    keys = ("dice", "iou", "volume_dice") if task.endswith("seg") else ("auc",)
    for key in keys:
        assert 0.0 <= result[key] <= 1.0
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(keys[0] in r for r in records if "val_loss" in r)
    if task.endswith("cls"):
        with pytest.raises(ValueError, match="no validation volumes"):
            ev.calibrate_threshold(tmp_path)
        return
    # Calibration on hand-made validation volumes: nodule voxels at 0.3, background at 0.2 or
    # less, so only 0.25 and 0.30 give Dice 1 and the tie goes to the one nearer 0.5.
    assert result["threshold"] == 0.5 and len(method.task.volumes_val) >= 1
    mask = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    mask[..., 2:4, 2:4, 2:4] = True
    probs = torch.where(mask, 0.3, torch.linspace(0, 0.2, 512).reshape(1, 1, 8, 8, 8))
    monkeypatch.setattr(ev, "volume_probabilities", lambda *a: [(probs, mask)] * 2)
    calibration = ev.calibrate_threshold(tmp_path)
    assert calibration["threshold"] == 0.3 and calibration["val_volume_dice"] == 1.0
    assert calibration["grid"]["0.35"] == 0.0
    _, info = load_weights(tmp_path / "model.safetensors")
    assert info.metadata["inference"]["threshold"] == 0.3  # what an export serves
    assert evaluate_run(tmp_path, "test")["threshold"] == 0.3


def test_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "train.run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    for command in ("pretrain", "finetune", "evaluate"):
        assert command in out
    from train.run import build_parser  # the subcommands' help, without three more start-ups

    for command in ("pretrain", "finetune", "evaluate"):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([command, "--help"])
        assert done.value.code == 0
    for command in ("pretrain", "finetune", "evaluate"):
        assert "--run-dir" in _subparser(build_parser(), command).format_help()


def _subparser(parser, name):
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_cli_reports_config_errors(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.run",
            "pretrain",
            "--method",
            "genesis",
            "--set",
            "optim.lr=fast",
            "--run-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "optim.lr" in proc.stderr


def test_evaluate_refuses_missing_and_pretraining_runs_clearly(tmp_path, pretrained, capsys):
    """No traceback: a run without weights, and self-supervised runs (nothing labelled to score),
    get a message saying what to run instead, and exit status 2."""
    assert main(["evaluate", "--run-dir", str(tmp_path / "nothing")]) == 2
    assert "model.safetensors does not exist" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"\x00" * 64)
    assert main(["evaluate", "--run-dir", str(damaged)]) == 2
    assert str(damaged / "model.safetensors") in capsys.readouterr().err

    genesis = tmp_path / "genesis"
    genesis.mkdir()
    shutil.copyfile(pretrained, genesis / "model.safetensors")
    cfg = load_config(GenesisConfig, ROOT / "configs/genesis/tiny.yaml")
    (genesis / "config.yaml").write_text(dump_config(cfg))
    assert main(["evaluate", "--run-dir", str(genesis)]) == 2
    err = capsys.readouterr().err
    assert "Models Genesis pretraining run" in err and f"--init genesis:{genesis}" in err

    peac = tmp_path / "peac"
    peac.mkdir()
    weights, _ = load_weights(pretrained)
    save_weights(weights, peac / "model.safetensors", model_name="peac", model_args={})
    assert main(["evaluate", "--run-dir", str(peac)]) == 2  # PEAC weights, no run config
    assert f"{peac / 'config.yaml'} is missing" in capsys.readouterr().err
