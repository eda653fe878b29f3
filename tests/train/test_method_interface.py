"""The engine's method interface (train.method.Method) is enough for a new method: a fourth one,
written here in a few dozen lines, trains with the real engine, every hook runs the number of
times the docstrings say, and a killed run resumes to the same weights. A misspelt hook is an
error when the class is defined, not a hook that silently never runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import load_weights
from train.engine import fit
from train.method import Method
from train.settings import LoopConfig, OptimConfig, RunConfig


class Pairs:
    """``n`` pairs ``(x, y = x @ w)``: a source with ``len`` and ``batch``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices):
        return self.x[indices], self.y[indices]


class Regression(Method):
    """Linear regression on noisy inputs, two training sources visited in turn (two phases)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.calls = cfg, {"after_step": 0, "after_phase": 0}

    def build_model(self):
        return torch.nn.Linear(4, 1), "linear", {"in_features": 4, "out_features": 1}

    def datasets(self):
        return [Pairs(16, 0), Pairs(8, 1)], Pairs(8, 2)

    def loss(self, model, batch, generator, ctx):
        x, y = batch
        if ctx is not None:  # training: input noise from the step's generator
            x = x + 0.01 * torch.randn(x.shape, generator=generator)
        return F.mse_loss(model(x), y)

    def after_step(self, model, ctx):
        self.calls["after_step"] += 1

    def after_phase(self, model, ctx):
        assert ctx.last_in_phase
        self.calls["after_phase"] += 1

    def val_metrics(self, net, val_set, device):
        return {"weight_norm": float(net.weight.detach().norm())}

    def inference_card(self):
        return {"task": "regression"}


def _cfg(epochs: int = 3) -> RunConfig:
    loop = LoopConfig(epochs=epochs, batch_size=4, patience=None, checkpoint_every=1,
                      log_every=1, progress=False)  # fmt: skip
    return RunConfig(loop=loop, optim=OptimConfig(name="sgd", lr=0.05, scheduler="none"))


def _latest(run_dir):
    name = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_weights(run_dir / "checkpoints" / name / "model.safetensors")[0]


def test_a_fourth_method_trains_calls_every_hook_and_resumes(tmp_path):
    method = Regression(_cfg())
    fit(method, tmp_path / "full")
    # 16 + 8 items at batch 4: 4 + 2 steps per epoch, 2 phases per epoch, 3 epochs
    assert method.calls == {"after_step": 18, "after_phase": 6}
    log = [json.loads(ln) for ln in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    vals = [r for r in log if "val_loss" in r]
    assert len(vals) == 3 and all("weight_norm" in r for r in vals)
    assert vals[-1]["val_loss"] < 0.5 * vals[0]["val_loss"]  # it learns
    _, info = load_weights(tmp_path / "full/model.safetensors")
    assert info.metadata["inference"] == {"task": "regression"} and info.model_name == "linear"

    first, second = Regression(_cfg()), Regression(_cfg())
    fit(first, tmp_path / "cut", stop_after_steps=5)  # inside epoch 0's second phase
    fit(second, tmp_path / "cut", resume=True)
    assert first.calls["after_step"] + second.calls["after_step"] == 18
    assert first.calls["after_phase"] + second.calls["after_phase"] == 6
    a, b = _latest(tmp_path / "full"), _latest(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("name", "message"),
    [("after_steps", "did you mean 'after_step'"), ("val_metric", "did you mean 'val_metrics'"),
     ("export_models", "did you mean 'export_model'"), ("on_epoch_end", "not a hook")],
)  # fmt: skip
def test_a_misspelt_hook_is_an_error_at_class_definition(name, message):
    with pytest.raises(TypeError, match=message):
        type("Misspelt", (Regression,), {name: lambda self, *a: None})


def test_helpers_and_the_base_defaults():
    type("WithHelper", (Regression,), {"normalise": lambda self, x: x})  # not hook-like: fine
    base = Method()
    assert base.export_model(None) is None and base.inference_card() is None
    assert base.val_metrics(None, None, None) == {} and Method.ddp_kwargs == {}
    with pytest.raises(NotImplementedError):
        base.loss(None, None, None, None)
