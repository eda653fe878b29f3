"""manifest.json: round trip, schema validation with clear messages, file checksums."""

from __future__ import annotations

import copy
import json

import pytest

from export.bundle import ExportOptions, build_export
from export.manifest import (
    SCHEMA_VERSION,
    ManifestError,
    manifest_from_dict,
    read_manifest,
    write_manifest,
)
from export.source import resolve_source
from train.cards import genesis_card

from .conftest import ROI, save_model


@pytest.fixture(scope="module")
def export_dir(export_root):
    weights = export_root / "cls_manifest.safetensors"
    card = genesis_card("classify", ROI, labels={"main": ["nodule"]})
    save_model(weights, "genesis_classifier", {"n_classes": 1}, card)
    out = export_root / "cls_manifest"
    build_export(resolve_source(weights), out, ExportOptions(calibration_samples=3), log=print)
    return out


@pytest.fixture
def raw(export_dir):
    return json.loads((export_dir / "manifest.json").read_text())


def test_round_trip(export_dir, raw, tmp_path):
    m = read_manifest(export_dir)
    assert m.schema_version == SCHEMA_VERSION and m.to_dict() == raw
    assert (
        m.family == "genesis" and m.task == "classify" and m.labels == {"probabilities": ["nodule"]}
    )
    assert m.preprocessing.kind == "ct" and m.inputs[0].multiple_of == [1, 1, 8, 8, 8]
    # what is written is what is read back, through JSON
    for f in m.files:
        (tmp_path / f.path).write_bytes((export_dir / f.path).read_bytes())
    write_manifest(m, tmp_path)
    assert read_manifest(tmp_path).to_dict() == raw


def _break(raw, path, value=None, delete=False):
    d = copy.deepcopy(raw)
    node = d
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


@pytest.mark.parametrize(
    "path, value, delete, message",
    [
        (["task"], None, True, "missing field task"),
        (["preprocessing"], None, True, "missing field preprocessing"),
        (["inputs", 0, "shape"], None, True, r"missing field inputs\[0\].shape"),
        (["inputs", 0, "max_batch"], "16", False, r"inputs\[0\].max_batch must be int, got str"),
        (["outputs", 0, "labels"], "nodule", False, r"outputs\[0\].labels must be list"),
        (["parity", 0, "passed"], 1, False, r"parity\[0\].passed must be bool, got int"),
        (["files", 0, "sha256"], 12, False, r"files\[0\].sha256 must be str"),
        (["family"], "two words", False, "family must be a family name"),
        (["serves"], None, True, "missing field serves"),
        (["serves"], {"ct_segment": "first"}, False, "serves.ct_segment must map a role"),
        (["serves"], {"ct_segment": True}, False, "serves.ct_segment must map a role"),
        (["outputs", 0, "meaning"], "magic", False, r"outputs\[0\].meaning must be one of"),
        (["files", 0, "path"], "../model.onnx", False, "bare file name"),
        (["schema_version"], 99, False, "schema_version 99 is not supported"),
        (["preprocessing", "std"], [0.0], False, "preprocessing: Preprocessing.std"),
        (["preprocessing", "hu_clip"], None, True, "Preprocessing.hu_clip"),
        (["surprise"], 1, False, "unknown field"),
        (["source", "sha256"], None, True, "missing field source.sha256"),
        (["input_statistics"], {"n": 1}, False, "input_statistics.features must be an object"),
        (
            ["input_statistics"],
            {"features": {"mean": {"mean": "x", "std": 0.1}}},
            False,
            "input_statistics.features.mean.mean must be float",
        ),
    ],
)
def test_invalid_manifests_are_refused_with_the_field_named(raw, path, value, delete, message):
    with pytest.raises(ManifestError, match=message):
        manifest_from_dict(_break(raw, path, value, delete))


def test_a_schema_1_manifest_asks_for_a_re_export(raw):
    """Manifests written before ``serves`` existed are refused by their version, not by the
    field they lack, so the message names the fix."""
    old = {k: v for k, v in raw.items() if k != "serves"} | {"schema_version": 1}
    with pytest.raises(ManifestError, match="schema_version 1 is not supported.*re-export"):
        manifest_from_dict(old)


def test_input_statistics_optional_and_recorded(raw):
    from imaging.distribution import phantom_statistics

    assert raw["input_statistics"] is None  # a CT model: no radiograph statistics
    old = {k: v for k, v in raw.items() if k != "input_statistics"}  # an older export
    assert manifest_from_dict(old).input_statistics is None
    stats = phantom_statistics(n=2)
    m = manifest_from_dict(raw | {"input_statistics": stats})
    assert m.input_statistics == stats and m.to_dict()["input_statistics"] == stats


def test_reading_names_the_file(export_dir, raw, tmp_path):
    bad = _break(raw, ["inputs", 0, "dtype"], 32)
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match=r"manifest.json: field inputs\[0\].dtype"):
        read_manifest(tmp_path, verify_files=False)
    (tmp_path / "manifest.json").write_text(json.dumps(raw)[:-20])
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path / "nowhere")


def test_swapped_or_truncated_model_file_is_refused(export_dir, tmp_path):
    import shutil

    copy_dir = tmp_path / "copy"
    shutil.copytree(export_dir, copy_dir)
    model = copy_dir / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestError, match=r"model.onnx: checksum does not match"):
        read_manifest(copy_dir)
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(ManifestError, match="checksum does not match"):
        read_manifest(copy_dir)
    model.unlink()
    with pytest.raises(ManifestError, match="missing"):
        read_manifest(copy_dir)
