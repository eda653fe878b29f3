"""Ark transfer: a new head on pretrained weights (fine-tuning), and linear probing."""

import numpy as np
import pytest
import torch

from models.ark import ArkModel
from models.checkpoint import load_model, save_weights
from train.ark.config import ArkDatasetConfig
from train.ark.transfer import (
    TransferConfig,
    TransferMethod,
    fit_logistic,
    linear_probe,
    new_task_model,
)
from train.config import load_config
from train.engine import fit
from train.run import main


@pytest.fixture
def pretrained(tmp_path):
    torch.manual_seed(0)
    model = ArkModel(
        backbone="resnet18", img_size=32, embed_dim=16, head_sizes=[5, 3], head_names=["a", "b"]
    )
    path = tmp_path / "ark.safetensors"
    save_weights(model, path, model_name="ark", model_args=model.model_args)
    return model, path


def _cfg(tmp_path, init):
    return load_config(
        TransferConfig,
        "configs/ark/transfer_tiny.yaml",
        [
            f"init={init}",
            "dataset.reader={n: 24, size: [36, 36], ct_shape: [48, 64, 64], seed: 101}",
            "data.load_size=36",
            "size=32",
            "model.embed_dim=16",
            "loop.epochs=1",
            "loop.batch_size=8",
            "loop.progress=false",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )


def test_new_head_keeps_pretrained_backbone_and_projector(tmp_path, pretrained):
    source, path = pretrained
    cfg = TransferConfig(dataset=ArkDatasetConfig(name="synth_nih"), init=f"ark:{path}", size=32)
    model = new_task_model(cfg, num_classes=3)
    assert model.head_sizes == [3] and model.head_names == ["synth_nih"]
    for key, value in source.state_dict().items():
        if not key.startswith("omni_heads."):
            torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    x = torch.rand(2, 3, 32, 32)
    source.eval(), model.eval()
    torch.testing.assert_close(model.embed(x), source.embed(x))
    with pytest.raises(ValueError, match="init must be"):
        new_task_model(TransferConfig(init="genesis:x"), 3)


def test_logistic_probe_separates_separable_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, :1] + 0.1 * rng.normal(size=(200, 1)) > 0).astype(np.float32)
    w, b = fit_logistic(x, y, np.ones_like(y), l2=1e-4)
    acc = (((torch.from_numpy(x) @ w.T + b) > 0).numpy() == (y > 0)).mean()
    assert acc > 0.95
    assert abs(float(w[0, 0])) > 5 * float(w[0, 1:].abs().max())  # the informative feature


@pytest.mark.slow
def test_finetune_and_probe_from_ark_weights(tmp_path, pretrained):
    _, path = pretrained
    cfg = _cfg(tmp_path, f"ark:{path}")
    run = tmp_path / "ft"
    fit(TransferMethod(cfg, run), run)
    tuned = load_model(run / "model.safetensors")
    assert isinstance(tuned, ArkModel) and tuned.head_sizes == [3]
    assert main(["evaluate", "--run-dir", str(run), "--split", "val"]) == 0
    result = linear_probe(cfg, tmp_path / "probe", split="val")
    assert set(result["auroc"]) == {"Cardiomegaly", "Effusion", "Nodule"}
    assert result["n_train"] == 24
    assert (tmp_path / "probe" / "probe_val.json").is_file()
