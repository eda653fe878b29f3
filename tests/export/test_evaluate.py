"""Scoring an export (``python -m export.evaluate``): the manifest records the window the run was
evaluated with, and the export's masks are the PyTorch model's, stitched the same way.

That the server's answers give the same Dice is tests/serve/test_service_e2e.py
(``test_server_dice_equals_export_evaluate``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from export.bundle import ExportOptions, build_export
from export.evaluate import evaluate_export, main
from export.source import resolve_source
from imaging.preprocess import prepare_volume
from models.unet3d import batch_independent
from train.cards import genesis_card
from train.finetune.tasks import held_out_series
from train.inference import sliding_window_inference
from train.metrics import dice

from .conftest import ROI, save_model

TASK = {
    "name": "synthetic_nodule_seg",
    "args": {"n_train_volumes": 1, "n_val_volumes": 1, "n_test_volumes": 2,
             "phantom_shape": [24, 48, 48], "cube_size": list(ROI)},
}  # fmt: skip
ARGS = {"norm": "batch_stats", "out_activation": None}


def _run(root, name, card, config, seed=3):
    run = root / name
    run.mkdir()
    model = save_model(run / "model.safetensors", "unet3d", ARGS, card, seed=seed)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run, model


@pytest.fixture(scope="module")
def scored(export_root):
    card = genesis_card(
        "segment", ROI, labels={"main": ["nodule"]}, threshold=0.5, overlap=0.25,
        blend="gaussian", batch_norm="per_sample",
    )  # fmt: skip
    run, model = _run(export_root, "eval_run", card, {"task": TASK})
    out = export_root / "eval_seg"
    build_export(resolve_source(run), out, ExportOptions(calibration_samples=2), log=lambda m: 0)
    return out, model


def test_manifest_records_the_window_the_run_was_evaluated_with(scored, export_root):
    out, _ = scored
    inf = json.loads((out / "manifest.json").read_text())["inference"]
    assert inf["roi_size"] == list(ROI) and inf["overlap"] == 0.25
    assert inf["blend"] == "gaussian" and inf["pad_value"] == 0.0
    assert inf["batch_norm"] == "per_sample" and inf["threshold"] == 0.5
    # a run whose card predates these keys: taken from its eval config
    old = genesis_card("segment", ROI, labels={"main": ["nodule"]})
    ev = {"overlap": 0.6, "blend": "constant", "batch_norm": "running"}
    run, _ = _run(export_root, "eval_old_run", old, {"task": TASK, "eval": ev})
    dest = export_root / "eval_old"
    build_export(resolve_source(run), dest, ExportOptions(calibration_samples=2), log=lambda m: 0)
    inf = json.loads((dest / "manifest.json").read_text())["inference"]
    assert (inf["overlap"], inf["blend"]) == (0.6, "constant")


def test_export_masks_are_the_pytorch_models_stitched_the_same_way(scored):
    out, model = scored
    masks = []
    result = evaluate_export(out, masks=masks)
    assert result["task"] == "synthetic_nodule_seg" and result["n"] == 2 == len(masks)
    series = held_out_series("synthetic_nodule_seg", **TASK["args"])
    net, _ = batch_independent(model, "per_sample")
    from export.manifest import read_manifest

    pre = read_manifest(out).preprocessing
    dices = []
    for (volume, truth), got in zip(series, masks, strict=True):
        x = torch.from_numpy(prepare_volume(volume, pre))[None]
        with torch.no_grad():
            probs = sliding_window_inference(
                x, ROI, lambda w: torch.sigmoid(net(w, return_logits=True)), overlap=0.25,
                blend="gaussian",
            )[0, 0].numpy().transpose(2, 1, 0)  # fmt: skip
        want = probs >= 0.5
        assert got.shape == (1, *truth.shape) and 0.01 < got.mean() < 0.99
        near = np.abs(probs - 0.5) < 1e-4  # ONNX Runtime vs PyTorch rounding at the threshold
        assert np.array_equal(got[0][~near], want[~near])
        dices.append(dice(want[None], truth[None]))
    assert result["volume_dice"] == pytest.approx(np.mean(dices), abs=1e-3)
    assert [v["dice"] for v in result["per_volume"]] == pytest.approx(dices, abs=1e-3)


def test_cli_writes_the_result_and_refuses_what_it_cannot_score(scored, export_root, capsys):
    out, _ = scored
    dest = export_root / "eval.json"
    assert main([str(out), "--set", "n_test_volumes=1", "--out", str(dest)]) == 0
    saved = json.loads(dest.read_text())
    assert saved["n"] == 1 and saved["task_args"]["n_test_volumes"] == 1
    assert main([str(out), "--task", "lidc_arrays"]) == 2
    assert "no whole held-out volumes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--task" in capsys.readouterr().out
