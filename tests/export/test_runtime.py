"""``export.runtime.load``: backend choice, input checks, batches over ``max_batch``, INT8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.bundle import ExportOptions, build_export
from export.runtime import load
from export.source import resolve_source
from train.cards import ark_card

from .conftest import real_cxr_batch, save_model


class _Src:
    name, label_names, task = "nih", ["a", "b", "c", "d"], "multilabel"


ARGS = {"backbone": "resnet18", "img_size": 64, "embed_dim": 32, "head_sizes": [4],
        "head_names": ["nih"]}  # fmt: skip


@pytest.fixture(scope="module")
def exported(export_root):
    weights = export_root / "runtime_ark.safetensors"
    model = save_model(weights, "ark", ARGS, ark_card(64, [_Src()]), seed=11)
    out = export_root / "runtime_ark"
    opts = ExportOptions(precision="int8", max_batch=2, calibration_samples=8)
    build_export(resolve_source(weights), out, opts, log=lambda m: None)
    return out, model


def _probs(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x), head=0)[1].sigmoid().numpy()


def test_a_cpu_machine_gets_onnx_runtime_and_a_clear_refusal_of_tensorrt(exported, monkeypatch):
    out, _ = exported
    if not torch.cuda.is_available():  # (a GPU machine's choice: tests/export/test_tensorrt.py)
        assert load(out).backend == "ort-cpu"
        with pytest.raises(ValueError, match="not available"):
            load(out, backend="tensorrt")
    monkeypatch.setenv("ANATOMIX_RUNTIME", "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        load(out)


def test_spinning_is_the_callers_choice(exported):
    """The server loads sessions whose idle threads sleep (serve.settings ``ort_spinning``)."""
    out, _ = exported
    key = "session.intra_op.allow_spinning"

    def entry(runtime):
        try:
            return runtime._session.get_session_options().get_session_config_entry(key)
        except RuntimeError:  # not set: ONNX Runtime's default, spin
            return None

    assert entry(load(out, backend="ort-cpu", spinning=False)) == "0"
    assert entry(load(out, backend="ort-cpu")) in (None, "1")


def test_batches_larger_than_max_batch_are_split(exported):
    out, model = exported
    runtime = load(out, backend="ort-cpu")
    assert runtime.max_batch == 2
    x = np.concatenate([real_cxr_batch(runtime.manifest.preprocessing, 3)] * 2)[:5]
    np.testing.assert_allclose(runtime.predict(x)["probs_nih"], _probs(model, x), 1e-4, 1e-4)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 1, 64, 64), "axis 1 .* must be 3"),
        ((1, 3, 64), "expected a 4-D NCHW batch"),
        ((1, 3, 64, 72), "axis 3 .* must be 64"),
    ],
)
def test_wrong_inputs_are_refused_clearly(exported, shape, message):
    runtime = load(exported[0], backend="ort-cpu")
    with pytest.raises(ValueError, match=message):
        runtime.predict(np.zeros(shape, np.float32))


def test_non_finite_input_is_refused(exported):
    runtime = load(exported[0], backend="ort-cpu")
    x = np.zeros((1, 3, 64, 64), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        runtime.predict(x)


def test_int8_model_runs_and_stays_close(exported):
    out, model = exported
    fp32 = load(out, backend="ort-cpu")
    int8 = load(out, backend="ort-cpu", precision="int8")
    assert int8.path.name == "model.int8.onnx" and int8.precision == "int8"
    x = real_cxr_batch(fp32.manifest.preprocessing, 3)
    q = int8.predict(x)["probs_nih"]
    assert np.abs(q - _probs(model, x)).max() < 0.05
    agreement = fp32.manifest.quantization["agreement_vs_fp32"]["probs_nih"]
    assert agreement["max_abs"] < 0.05


def test_missing_precision_is_reported(export_root):
    weights = export_root / "runtime_fp32.safetensors"
    save_model(weights, "ark", ARGS, ark_card(64, [_Src()]))
    out = export_root / "runtime_fp32"
    build_export(resolve_source(weights), out, ExportOptions(calibration_samples=3), log=print)
    with pytest.raises(ValueError, match="no int8 ONNX file; exported: fp32"):
        load(out, precision="int8")
