"""Importing the released Models Genesis checkpoint layout (built here, never downloaded)."""

import pytest
import torch

from models import (
    CheckpointError,
    CheckpointMismatchError,
    UNet3D,
    UnsafeCheckpointError,
    import_official,
    load_model,
    load_weights,
    official_families,
)

from .official_releases import write_official


class _Payload:
    pass


@pytest.fixture(scope="module")
def source_state():
    """A trained-looking UNet3D state: random weights and non-default BN statistics."""
    torch.manual_seed(0)
    state = UNet3D().state_dict()
    g = torch.Generator().manual_seed(1)
    for value in state.values():
        if value.is_floating_point():
            value.copy_(torch.rand(value.shape, generator=g) * 0.1 + 0.01)
        else:
            value.fill_(1234)
    return state


def test_import_released_layout_and_roundtrip(tmp_path, source_state):
    src = write_official(tmp_path / "Genesis_Chest_CT.pt", source_state)
    out = tmp_path / "genesis.safetensors"
    report = import_official("genesis", src, out=out)
    assert report.ok and report.missing == [] and report.unexpected == []
    assert report.mismatched == [] and report.filled == []
    assert report.source_epoch == 42 and report.stripped_prefix == "module."
    assert report.loaded == len(source_state) == 106
    assert report.model_name == "unet3d" and report.model_args["n_class"] == 1
    assert "OK" in str(report) and "Genesis_Chest_CT.pt" in str(report)
    imported = report.model.state_dict()
    for key, value in source_state.items():
        assert torch.equal(imported[key], value), key

    assert report.out == out
    state, info = load_weights(out)
    assert info.model_name == "unet3d" and info.metadata["source_epoch"] == 42
    rebuilt = load_model(out)
    reference = UNet3D()
    reference.load_state_dict(source_state)  # independent path: plain load of the same tensors
    x = torch.rand(1, 1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y_rebuilt, y_ref = rebuilt.eval()(x), reference.eval()(x)
    torch.testing.assert_close(y_rebuilt, y_ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "prefix, wrap, legacy",
    [
        ("", True, False),
        ("module.", False, False),
        ("", False, True),
        ("module.", True, True),
    ],
)
def test_import_accepts_variants(tmp_path, source_state, prefix, wrap, legacy):
    src = write_official(tmp_path / "g.pt", source_state, prefix=prefix, wrap=wrap, legacy=legacy)
    report = import_official("genesis", src)
    assert report.ok
    assert report.stripped_prefix == (prefix or None)
    assert report.source_epoch == (42 if wrap else None)
    assert torch.equal(
        report.model.state_dict()["up_tr256.up_conv.weight"],
        source_state["up_tr256.up_conv.weight"],
    )


def test_missing_key_is_reported(tmp_path, source_state):
    state = dict(source_state)
    del state["up_tr128.ops.1.conv1.weight"]
    src = write_official(tmp_path / "g.pt", state)
    with pytest.raises(CheckpointMismatchError, match="up_tr128.ops.1.conv1.weight") as err:
        import_official("genesis", src)
    assert err.value.report.missing == ["up_tr128.ops.1.conv1.weight"]
    assert "missing from file (1)" in str(err.value)
    report = import_official("genesis", src, strict=False, out=tmp_path / "partial.safetensors")
    assert not report.ok and report.loaded == 105 and "MISMATCH" in str(report)
    _, info = load_weights(report.out)
    assert info.metadata["import_missing"] == ["up_tr128.ops.1.conv1.weight"]


def test_extra_key_is_reported(tmp_path, source_state):
    state = dict(source_state)
    state["up_tr64.ops.2.conv1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match="unexpected in file") as err:
        import_official("genesis", write_official(tmp_path / "g.pt", state))
    assert err.value.report.unexpected == ["up_tr64.ops.2.conv1.weight"]


def test_wrong_shape_is_reported(tmp_path, source_state):
    state = dict(source_state)
    state["down_tr256.ops.0.conv1.bias"] = torch.zeros(7)
    src = write_official(tmp_path / "g.pt", state)
    with pytest.raises(
        CheckpointMismatchError, match=r"down_tr256.ops.0.conv1.bias.*\(7,\).*\(128,\)"
    ):
        import_official("genesis", src)
    report = import_official("genesis", src, strict=False)
    assert len(report.mismatched) == 1 and report.missing == []
    assert not torch.equal(
        report.model.state_dict()["down_tr256.ops.0.conv1.bias"], torch.zeros(128)
    )


def test_absent_batch_counters_are_defaulted(tmp_path, source_state):
    state = {k: v for k, v in source_state.items() if not k.endswith("num_batches_tracked")}
    report = import_official("genesis", write_official(tmp_path / "g.pt", state))
    assert report.ok and len(report.filled) == 7 * 2  # 7 blocks x 2 LUConvs, one BN each


def test_other_head_size_is_inferred(tmp_path):
    state = UNet3D(n_class=3).state_dict()
    report = import_official("genesis", write_official(tmp_path / "g.pt", state))
    assert report.ok and report.model_args["n_class"] == 3


def test_model_args_override(tmp_path, source_state):
    report = import_official(
        "genesis", write_official(tmp_path / "g.pt", source_state), model_args={"norm": "standard"}
    )
    assert report.ok and report.model_args["norm"] == "standard"
    assert any(type(m) is torch.nn.BatchNorm3d for m in report.model.modules())


def test_unsafe_and_malformed_files_are_refused(tmp_path, source_state):
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "state_dict": {}, "optimizer_state_dict": _Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError):
        import_official("genesis", evil)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="state dict"):
        import_official("genesis", tmp_path / "list.pt")
    torch.save({"state_dict": {"a": 1}}, tmp_path / "nontensor.pt")
    with pytest.raises(CheckpointError, match="not tensors"):
        import_official("genesis", tmp_path / "nontensor.pt")


def test_unknown_family_lists_valid_ones(tmp_path):
    assert list(official_families()) == ["ark", "peac", "genesis"]
    with pytest.raises(KeyError, match="ark, peac, genesis"):
        import_official("nope", tmp_path / "x.pt")


def test_command_line_import(tmp_path, source_state):
    import subprocess
    import sys

    from models.checkpoint import load_model

    src = write_official(tmp_path / "Genesis_Chest_CT.pt", source_state)
    out = tmp_path / "genesis.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "models.import_weights", "genesis", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "genesis" in proc.stdout
    model = load_model(out)
    for key, value in source_state.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "models.import_weights",
            "genesis",
            str(tmp_path / "nope.pt"),
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "import failed" in bad.stderr
