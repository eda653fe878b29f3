"""A study's answer does not depend on what shares its batch (issue #8, item 3).

Models Genesis as released normalises with the statistics of the whole batch at test time, so in
PyTorch a study's output changes with its batch-mates (checked first, so the other tests mean
something). The export makes it batch independent: ``per_sample`` equals the PyTorch model run on
the study alone; ``running`` equals ordinary eval-mode batch norm (``norm="standard"``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.bundle import ExportOptions, build_export
from export.runtime import load
from export.source import resolve_source
from models.unet3d import UNet3D
from train.cards import genesis_card

from .conftest import ROI, save_model

CARD = genesis_card("segment", ROI, labels={"main": ["nodule"]})
ARGS = {"norm": "batch_stats", "out_activation": None}


@pytest.fixture(scope="module")
def weights(export_root):
    path = export_root / "genesis_bn.safetensors"
    return path, save_model(path, "unet3d", ARGS, CARD, seed=5)


@pytest.fixture(scope="module")
def studies():
    rng = np.random.default_rng(0)
    target = rng.random((1, 1, *ROI), dtype=np.float32)
    # batch-mates with other intensity statistics (brighter, darker, noisier)
    others = np.concatenate(
        [
            np.clip(rng.random((1, 1, *ROI)) * 0.3 + 0.7, 0, 1),
            rng.random((1, 1, *ROI)) * 0.2,
            rng.random((1, 1, *ROI)),
        ]
    ).astype(np.float32)
    return target, others


def _seg(net, x):
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(x), return_logits=True)).numpy()


def test_released_semantics_are_batch_dependent(weights, studies):
    _, model = weights
    target, others = studies
    alone = _seg(model, target)
    batched = _seg(model, np.concatenate([target, others]))[:1]
    assert np.abs(alone - batched).max() > 1e-3


@pytest.mark.parametrize("mode", ["per_sample", "running"])
def test_exported_answer_is_independent_of_the_batch(weights, studies, export_root, mode):
    path, model = weights
    target, others = studies
    out = export_root / f"genesis_bn_{mode}"
    opts = ExportOptions(batch_norm=mode, calibration_samples=3)
    build_export(resolve_source(path), out, opts, log=lambda m: None)
    runtime = load(out, backend="ort-cpu")
    assert runtime.manifest.inference["batch_norm"] == mode
    alone = runtime.predict(target)["probabilities"]
    for k in range(1, 4):  # the study first, last, and among different company
        batch = np.concatenate([others[:k], target, others[k:]])
        got = runtime.predict(batch)["probabilities"][k : k + 1]
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)

    if mode == "per_sample":
        reference = _seg(model, target)  # the released model, the study alone
    else:
        standard = UNet3D(norm="standard", out_activation=None).eval()
        standard.load_state_dict(model.state_dict())
        reference = _seg(standard, target)  # ordinary BatchNorm3d with running statistics
    np.testing.assert_allclose(alone, reference, rtol=1e-4, atol=1e-4)
