"""Safetensors weights files, atomic writes and safe torch loading."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import models.checkpoint as ckpt
from models import (
    CheckpointError,
    CheckpointMismatchError,
    GenesisClassifier,
    UnsafeCheckpointError,
    atomic_path,
    atomic_write_bytes,
    load_model,
    load_torch_file,
    load_weights,
    save_weights,
)


class _OpensAFile:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Plain:
    pass


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return GenesisClassifier(n_classes=3, norm="standard")


def test_roundtrip_rebuilds_model(tmp_path, classifier):
    path = tmp_path / "w.safetensors"
    args = {"n_classes": 3, "norm": "standard"}
    assert (
        save_weights(
            classifier,
            path,
            model_name="genesis_classifier",
            model_args=args,
            metadata={"step": 7, "source": "test"},
        )
        == path
    )
    state, info = load_weights(path)
    assert info.model_name == "genesis_classifier"
    assert info.model_args == args and info.metadata == {"step": 7, "source": "test"}
    assert state.keys() == classifier.state_dict().keys()
    for key, value in classifier.state_dict().items():
        assert torch.equal(state[key], value) and state[key].dtype == value.dtype, key
    model = load_model(path)
    assert type(model) is GenesisClassifier
    x = torch.rand(2, 1, 16, 8, 8)
    model.eval(), classifier.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), classifier(x), rtol=0, atol=0)


def test_shared_and_noncontiguous_tensors(tmp_path):
    base = torch.arange(24.0).reshape(4, 6)
    state = {
        "a": base,
        "same": base,  # shares storage with "a"
        "view": base[1:3],  # part of a larger storage
        "transposed": base.t(),  # non-contiguous
        "param": torch.nn.Parameter(torch.ones(3)),
    }
    path = tmp_path / "s.safetensors"
    save_weights(state, path, model_name="x", model_args={})
    loaded, _ = load_weights(path)
    for key, value in state.items():
        assert torch.equal(loaded[key], value.detach()), key
    assert base.data_ptr() == state["a"].data_ptr()  # caller's tensors untouched


def test_save_rejects_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="'step'"):
        save_weights({"step": 3}, tmp_path / "a.safetensors", model_name="x", model_args={})
    with pytest.raises(TypeError, match="JSON"):
        save_weights({}, tmp_path / "b.safetensors", model_name="x", model_args={"f": object()})
    assert os.listdir(tmp_path) == []


def test_save_weights_is_atomic(tmp_path, monkeypatch, classifier):
    path = tmp_path / "model.safetensors"
    save_weights({"w": torch.ones(3)}, path, model_name="x", model_args={})
    before = path.read_bytes()

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_weights(classifier, path, model_name="genesis_classifier", model_args={})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left behind


def test_atomic_helpers(tmp_path):
    path = tmp_path / "sub" / "config.yaml"
    atomic_write_bytes(path, b"a: 1\n")
    assert path.read_bytes() == b"a: 1\n"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash while writing")
    assert path.read_bytes() == b"a: 1\n"
    with atomic_path(tmp_path / "state.pt") as tmp:
        torch.save({"step": 5}, tmp)
    assert load_torch_file(tmp_path / "state.pt") == {"step": 5}
    assert sorted(os.listdir(path.parent)) == ["config.yaml"]
    assert sorted(os.listdir(tmp_path)) == ["state.pt", "sub"]


def test_load_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_weights(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    state, info = load_weights(foreign)
    assert info.model_name is None and torch.equal(state["w"], torch.zeros(2))
    with pytest.raises(CheckpointError, match="model_name"):
        load_model(foreign)


def test_load_model_mismatch_is_clear(tmp_path, classifier):
    path = tmp_path / "w.safetensors"
    save_weights(classifier, path, model_name="genesis_classifier", model_args={"n_classes": 2})
    with pytest.raises(CheckpointMismatchError, match="dense_2"):
        load_model(path)
    save_weights(classifier, path, model_name="nope", model_args={})
    with pytest.raises(KeyError, match="unet3d"):
        load_model(path)


def test_load_torch_file_plain(tmp_path):
    obj = {"epoch": 3, "state_dict": {"w": torch.ones(2)}, "opt": {"lr": 1.0, "params": [0]}}
    torch.save(obj, tmp_path / "a.pt")
    loaded = load_torch_file(tmp_path / "a.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_load_torch_file_refuses_arbitrary_objects(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"state_dict": {}, "payload": _OpensAFile(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()  # never unpickled unsafely, no fallback
    torch.save({"x": _Plain()}, tmp_path / "custom.pt")
    with pytest.raises(UnsafeCheckpointError, match="_Plain"):
        load_torch_file(tmp_path / "custom.pt")


def test_load_torch_file_garbage_and_missing(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError):
        load_torch_file(tmp_path / "g.pt")
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "none.pt")
