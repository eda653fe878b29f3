"""ONNX Runtime (CPU) equals PyTorch for every exported family, at batch 1 and 3, on random
inputs and on real DICOM files preprocessed by the imaging layer (issue #8).

The reference is always the original training-time model called through its own API (with a
Models Genesis study run alone, see test_batch_independence.py), never the export wrapper.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.bundle import ExportOptions, build_export
from export.manifest import read_manifest, write_manifest
from export.runtime import load
from export.source import resolve_source
from imaging.preprocess import Preprocessing
from models.registry import list_families
from train.cards import ark_card, genesis_card, peac_card

from .conftest import ROI, real_ct_cubes, real_cxr_batch, save_model

TOL = dict(rtol=1e-4, atol=1e-4)


class _Src:
    def __init__(self, name, labels, task="multilabel"):
        self.name, self.label_names, self.task = name, labels, task


def _genesis_alone(model, fn):
    """Released Models Genesis semantics for one study: each sample is run in a batch of one."""

    def run(x):
        with torch.no_grad():
            outs = [fn(model, torch.from_numpy(x[i : i + 1])) for i in range(len(x))]
        return [torch.cat(outs).numpy()]

    return run


def _ark_ref(model, acts):
    def run(x):
        with torch.no_grad():
            z, logits = model(torch.from_numpy(x))
        probs = [
            lg.softmax(-1) if a == "softmax" else lg.sigmoid()
            for lg, a in zip(logits, acts, strict=True)
        ]
        return [z.numpy()] + [p.numpy() for p in probs]

    return run


def _peac_ref(model, with_tokens):
    def run(x):
        with torch.no_grad():
            t = torch.from_numpy(x)
            out = [model.embed(t).numpy()]
            if with_tokens:
                out.append(model.tokens(t).numpy())
        return out

    return run


CXR_HEADS = [_Src("nih", ["a", "b", "c"]), _Src("rsna", ["x", "y", "z"], "multiclass")]
ARK_ARGS = {"backbone": "resnet18", "img_size": 64, "embed_dim": 48, "head_sizes": [3, 3],
            "head_names": ["nih", "rsna"]}  # fmt: skip
PEAC_ARGS = {"backbone": "vit_tiny_patch16_224", "img_size": 64, "global_dims": [32],
             "local_dims": [16]}  # fmt: skip

#: case → (registry name, constructor args, training card, task exported, reference maker,
#: the serving roles its manifest must record). Every registered (model, task) has a case:
#: test_every_registered_family_and_task_is_swept.
CASES = {
    "genesis_segment": (
        "unet3d", {"norm": "batch_stats", "out_activation": None},
        genesis_card("segment", ROI, labels={"main": ["nodule"]}, threshold=0.5), "segment",
        lambda m: _genesis_alone(m, lambda net, x: torch.sigmoid(net(x, return_logits=True))),
        {"ct_segment": 0},
    ),
    "genesis_restore": (
        "unet3d", {"norm": "batch_stats"}, genesis_card("restore", ROI), "restore",
        lambda m: _genesis_alone(m, lambda net, x: net(x)), {},
    ),
    "genesis_classify": (
        "genesis_classifier", {"n_classes": 1, "norm": "batch_stats"},
        genesis_card("classify", ROI, labels={"main": ["nodule"]}), "classify",
        lambda m: _genesis_alone(m, lambda net, x: torch.sigmoid(net(x))), {},
    ),
    "ark_classify": (
        "ark", ARK_ARGS, ark_card(64, CXR_HEADS), "classify",
        lambda m: _ark_ref(m, ["sigmoid", "softmax"]), {"cxr_classify": 0, "embed": 2},
    ),
    "ark_embed": (
        "ark", ARK_ARGS, ark_card(64, CXR_HEADS), "embed",
        lambda m: (lambda x: _ark_ref(m, ["sigmoid", "softmax"])(x)[:1]), {"embed": 0},
    ),
    "cxr_finetuned": (  # a 2D classifier fine-tuned by `train.run transfer`: one head, no projector
        "ark", {"backbone": "resnet18", "img_size": 64, "projector": "none",
                "head_sizes": [2], "head_names": ["shenzhen"]},
        ark_card(64, [_Src("shenzhen", ["normal", "tb"])]), "classify",
        lambda m: _ark_ref(m, ["sigmoid"]), {"cxr_classify": 0, "embed": 2},
    ),
    "peac_correspond": (
        "peac", PEAC_ARGS, peac_card(64), "correspond",
        lambda m: _peac_ref(m, True), {"correspond": 0, "embed": 3},
    ),
    "peac_embed": (
        "peac", PEAC_ARGS, peac_card(64), "embed", lambda m: _peac_ref(m, False), {"embed": 1},
    ),
}  # fmt: skip


def test_every_registered_family_and_task_is_swept():
    """The sweep is the registry's (timm's tests/test_models.py over list_models()): a family
    or task added without a parity case fails here."""
    registered = {(f.model_name, t) for f in list_families() for t in f.tasks}
    swept = {(c[0], c[3]) for c in CASES.values()}
    assert registered <= swept, f"no parity case for {sorted(registered - swept)}"


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, export_root):
    name, args, card, task, ref, _ = CASES[request.param]
    weights = export_root / f"{request.param}.safetensors"
    model = save_model(weights, name, args, card)
    out = export_root / request.param
    result = build_export(
        resolve_source(weights),
        out,
        ExportOptions(task=task, calibration_samples=3),
        log=lambda m: None,
    )
    return request.param, model, ref(model), result


def _compare(runtime, reference, x):
    got = runtime.predict(x)
    want = reference(x)
    assert len(want) == len(runtime.output_names)
    for name, w in zip(runtime.output_names, want, strict=True):
        assert got[name].shape == w.shape, name
        np.testing.assert_allclose(got[name], w, **TOL, err_msg=name)


@pytest.mark.parametrize("batch", [1, 3])
def test_ort_equals_pytorch_on_random_inputs(exported, batch):
    case, _, reference, result = exported
    runtime = load(result.out_dir, backend="ort-cpu")
    shape = runtime.manifest.inputs[0].shape  # e.g. ["batch", 3, 64, 64]
    dims = [batch, *shape[1:]] if not case.startswith("genesis") else [batch, 1, *ROI]
    x = np.random.default_rng(batch).random(dims, dtype=np.float32)
    _compare(runtime, reference, x)


@pytest.mark.parametrize("batch", [1, 3])
def test_ort_equals_pytorch_on_real_dicom(exported, batch):
    _, _, reference, result = exported
    runtime = load(result.out_dir, backend="ort-cpu")
    pre: Preprocessing = runtime.manifest.preprocessing
    x = real_ct_cubes(pre, batch) if pre.kind == "ct" else real_cxr_batch(pre, batch)
    assert np.ptp(x) > 0.1  # real anatomy, not a constant image
    _compare(runtime, reference, x)


def test_fully_convolutional_volume_keeps_dynamic_spatial_size(exported):
    case, _, reference, result = exported
    if case not in ("genesis_segment", "genesis_restore"):
        pytest.skip("only the U-Net is fully convolutional")
    runtime = load(result.out_dir, backend="ort-cpu")
    assert runtime.manifest.inputs[0].shape == ["batch", 1, "x", "y", "z"]
    x = np.random.default_rng(7).random((2, 1, 48, 40, 24), dtype=np.float32)
    _compare(runtime, reference, x)


def test_manifest_describes_the_export(exported):
    case, model, _, result = exported
    m = result.manifest
    assert m.family == {"cxr": "ark"}.get(case.split("_")[0], case.split("_")[0])
    assert m.task == CASES[case][3] and m.serves == CASES[case][5]
    assert all(p.passed and p.max_abs <= 1e-4 for p in m.parity)
    assert {p.batch for p in m.parity if p.inputs == "random"} >= {1, 3}
    assert m.exporter["opset"] >= 17 and m.source["sha256"]
    if case == "ark_classify":
        assert [o.name for o in m.outputs] == ["embedding", "probs_nih", "probs_rsna"]
        assert [o.activation for o in m.outputs[1:]] == ["sigmoid", "softmax"]
        assert m.outputs[2].labels == ["x", "y", "z"]
        assert m.preprocessing.mean == (0.485, 0.456, 0.406)
    if case == "genesis_segment":
        assert m.outputs[0].labels == ["nodule"] and m.outputs[0].meaning == "mask_probabilities"
        assert m.inference["roi_size"] == list(ROI) and m.inference["batch_norm"] == "per_sample"
        assert m.preprocessing.hu_clip == (-1000.0, 1000.0)
    if case == "peac_correspond":
        assert m.outputs[1].shape == ["batch", 4, 4, model.num_features]
        assert m.preprocessing.resize_mode == "shorter_side"


def test_manifest_round_trips_for_every_case(exported, tmp_path):
    """What the exporter wrote is what is read back, and written again, for every family."""
    import json
    import shutil

    _, _, _, result = exported
    raw = json.loads((result.out_dir / "manifest.json").read_text())
    m = read_manifest(result.out_dir)
    assert m.to_dict() == raw and m.serves == raw["serves"]
    for f in m.files:
        shutil.copy(result.out_dir / f.path, tmp_path / f.path)
    write_manifest(m, tmp_path)
    assert read_manifest(tmp_path).to_dict() == raw


def test_one_ark_head_can_be_exported_alone(export_root):
    name, args, card, *_ = CASES["ark_classify"]
    weights = export_root / "ark_one_head.safetensors"
    model = save_model(weights, name, args, card, seed=3)
    result = build_export(
        resolve_source(weights),
        export_root / "ark_one_head",
        ExportOptions(head="rsna", calibration_samples=3),
        log=lambda m: None,
    )
    runtime = load(result.out_dir)
    assert runtime.output_names == ["embedding", "probs_rsna"]
    x = real_cxr_batch(runtime.manifest.preprocessing, 3)
    with torch.no_grad():
        z, logits = model(torch.from_numpy(x), head=1)
    got = runtime.predict(x)
    np.testing.assert_allclose(got["embedding"], z.numpy(), **TOL)
    np.testing.assert_allclose(got["probs_rsna"], logits.softmax(-1).numpy(), **TOL)
