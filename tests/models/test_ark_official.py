"""Importing the released Foundation Ark checkpoint layout (built here, never downloaded).

Ark pinned timm 0.5.4, whose Swin state dict differs from the installed timm's. The released
layout is rebuilt below from a current-timm Swin with a mapping written independently of the
importer: in timm 0.5.4 the patch merging sits at the end of stage i (``layers.{i}.downsample``),
the classifier is a plain ``head`` (1000 ImageNet classes, unused by Ark), and every attention
saved its ``relative_position_index`` (and every shifted block its ``attn_mask``) as persistent
buffers. The imported model is compared with that source model, never with the importer itself.
"""

import re
from collections import OrderedDict

import pytest
import timm
import torch

from models import (
    CheckpointError,
    CheckpointMismatchError,
    import_official,
    load_model,
    load_weights,
)

from .official_releases import BASE, EMBED, HEADS, TINY, ArkRelease, to_timm054


@pytest.fixture(scope="module", params=["linear", "mlp"])
def tiny_source(request):
    return request.param, ArkRelease(TINY, request.param, seed=0)


@pytest.fixture(scope="module")
def mlp_source():
    return ArkRelease(TINY, "mlp", seed=0)


def _full_checkpoint(teacher, student, *, with_teacher=True):
    """Ark's per-epoch training checkpoint, saved under DataParallel (``module.`` keys)."""
    obj = {
        "epoch": 199,
        "lossMIN": [0.31, 0.28, 0.19, 0.42, 0.11, 0.05],
        "state_dict": OrderedDict(("module." + k, v) for k, v in student.items()),
        "optimizer": {
            "state": {},
            "param_groups": [{"lr": 0.3, "momentum": 0.9, "weight_decay": 0.0, "params": [0]}],
        },
        "scheduler": {"last_epoch": 199, "base_values": [0.3]},
    }
    if with_teacher:
        obj["teacher"] = OrderedDict(("module." + k, v) for k, v in teacher.items())
    return obj


def _check_against_source(report, source, kind):
    assert report.ok, str(report)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.model_name == "ark" and report.model_args["projector"] == kind
    assert report.model_args["head_sizes"] == HEADS and report.model_args["embed_dim"] == EMBED
    assert {"head.weight", "head.bias"} <= set(report.dropped)
    assert any(k.endswith("relative_position_index") for k in report.dropped)
    assert any(k.endswith("attn_mask") for k in report.dropped)
    model = report.model.eval()
    assert model.num_heads == len(HEADS)
    for i, head in enumerate(source.heads):
        torch.testing.assert_close(model.omni_heads[i].weight, head.weight, rtol=0, atol=0)
        torch.testing.assert_close(model.omni_heads[i].bias, head.bias, rtol=0, atol=0)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z_ref, y_ref = source(x)
        z, ys = model(x)
        _, y3 = model(x, head=3)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(ys, y_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y3, y_ref[3], rtol=1e-5, atol=1e-6)


def test_import_released_teacher_file(tmp_path, tiny_source):
    kind, source = tiny_source
    sd = source.released_state((2, 2, 6, 2))
    assert "layers.0.downsample.reduction.weight" in sd and "head.weight" in sd
    assert sd["head.weight"].shape == (1000, 768)
    path = tmp_path / f"ark6_teacher_ep200_swint_projector1376_{kind}.pth.tar"
    torch.save(sd, path)
    out = tmp_path / "ark.safetensors"
    report = import_official("ark", path, out=out)
    assert report.model_args["backbone"] == TINY and report.model_args["img_size"] == 224
    assert report.stripped_prefix is None and report.source_entry is None
    assert report.loaded == len(report.model.state_dict())
    _check_against_source(report, source, kind)
    assert "OK" in str(report) and path.name in str(report)

    _, info = load_weights(out)
    assert info.model_name == "ark" and info.metadata["source_layout"] == "timm 0.5.4"
    rebuilt = load_model(out)
    for key, value in report.model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("with_teacher", [True, False])
def test_import_full_training_checkpoint(tmp_path, tiny_source, with_teacher):
    kind, source = tiny_source
    teacher = source.released_state((2, 2, 6, 2))
    student = OrderedDict(  # same buffers, other parameters
        (k, v + 1.0 if v.is_floating_point() and not k.endswith("attn_mask") else v)
        for k, v in teacher.items()
    )
    path = tmp_path / "ark_swint.pth.tar"
    torch.save(_full_checkpoint(teacher, student, with_teacher=with_teacher), path)
    report = import_official("ark", path)
    assert report.stripped_prefix == "module." and report.source_epoch == 199
    if with_teacher:
        assert report.source_entry == "teacher"
        _check_against_source(report, source, kind)
    else:  # the student: the teacher's weights + 1
        assert report.source_entry == "state_dict" and report.ok
        got = report.model.state_dict()["omni_heads.5.bias"]
        torch.testing.assert_close(got, source.heads[5].bias + 1.0, rtol=0, atol=0)


def test_no_projector_and_other_heads(tmp_path):
    torch.manual_seed(3)
    swin = timm.create_model(TINY, pretrained=False)
    sd = to_timm054(swin.state_dict(), (2, 2, 6, 2))
    sd.update({"omni_heads.0.weight": torch.randn(5, 768), "omni_heads.0.bias": torch.randn(5)})
    torch.save(sd, tmp_path / "a.pth")
    report = import_official("ark", tmp_path / "a.pth", model_args={"head_names": ["TB"]})
    assert report.ok and report.model_args["projector"] == "none"
    assert report.model.head_sizes == [5] and report.model.head_names == ["TB"]
    assert report.model.embed_dim == 768


def test_buffer_and_shape_disagreements_are_reported(tmp_path, mlp_source):
    source = mlp_source
    sd = source.released_state((2, 2, 6, 2))
    key = "layers.1.blocks.0.attn.relative_position_index"
    sd[key] = sd[key].flip(0)
    table = "layers.2.blocks.3.attn.relative_position_bias_table"
    sd[table] = torch.zeros(23 * 23, 12)  # window 12: a Swin for 384 inputs
    sd["absolute_pos_embed"] = torch.zeros(1, 3136, 96)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="relative_position_index") as err:
        import_official("ark", tmp_path / "bad.pth")
    report = err.value.report
    assert report.unexpected == ["backbone.absolute_pos_embed"] and report.missing == []
    assert len(report.mismatched) == 2
    assert any(m.startswith(f"backbone.{table}: file (529, 12)") for m in report.mismatched)
    report = import_official("ark", tmp_path / "bad.pth", strict=False)
    assert not report.ok and "MISMATCH" in str(report)


def test_missing_backbone_key_fails(tmp_path, mlp_source):
    source = mlp_source
    sd = source.released_state((2, 2, 6, 2))
    del sd["layers.2.downsample.reduction.weight"]  # timm 0.5.4 name; ours is layers.3
    torch.save(sd, tmp_path / "m.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        import_official("ark", tmp_path / "m.pth")
    assert err.value.report.missing == ["backbone.layers.3.downsample.reduction.weight"]


def test_corrupt_and_unknown_files_are_refused(tmp_path, mlp_source):
    corrupt = tmp_path / "ark_corrupt.pth.tar"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match="ark_corrupt.pth.tar"):
        import_official("ark", corrupt)
    other = tmp_path / "resnet_weights.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(CheckpointError, match=r"resnet_weights.pth.*not an Ark checkpoint"):
        import_official("ark", other)
    source = mlp_source
    sd = source.released_state((2, 2, 6, 2))
    sd = {k: v for k, v in sd.items() if not re.match(r"layers\.2\.blocks\.[2-5]\.", k)}
    torch.save(sd, tmp_path / "odd_swin.pth")
    with pytest.raises(CheckpointError, match=r"odd_swin.pth.*depths \(2, 2, 2, 2\)"):
        import_official("ark", tmp_path / "odd_swin.pth")


def test_command_line_import(tmp_path, mlp_source):
    import subprocess
    import sys

    source = mlp_source
    src = tmp_path / "ark_teacher.pth.tar"
    torch.save(source.released_state((2, 2, 6, 2)), src)
    out = tmp_path / "ark.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "models.import_weights", "ark", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ark import of ark_teacher.pth.tar" in proc.stdout and "OK" in proc.stdout
    model = load_model(out)
    torch.testing.assert_close(
        model.state_dict()["omni_heads.2.weight"], source.heads[2].weight, rtol=0, atol=0
    )


@pytest.mark.slow
def test_import_released_swin_base(tmp_path):
    source = ArkRelease(BASE, "mlp", seed=7)
    path = tmp_path / "ark6_teacher_ep200_swinb_projector1376_mlp.pth.tar"
    torch.save(source.released_state((2, 2, 18, 2)), path)
    report = import_official("ark", path)
    assert report.model_args["backbone"] == BASE
    assert report.model.num_features == 1024
    _check_against_source(report, source, "mlp")
