"""The family registry (issue #19): each model family is declared once, beside its architecture,
and every stage reads the registry — no family or model name is spelled anywhere else in the
library, and the checks every family must pass are swept over the registry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoint import CheckpointError, UnsafeCheckpointError
from models.family import REGISTRY, ExportGraph, Family, register
from models.official import import_official
from models.registry import (
    MODELS,
    build_model,
    family_names,
    get_family,
    list_families,
    official_families,
)

ROOT = Path(__file__).resolve().parents[2]
#: the library: what users import; bench/ and scripts/ name families as experiment arms and as
#: the command-line arguments a user types
LIBRARY = ("imaging", "kernels", "models", "train", "export", "serve", "anatomix")
#: where each family is declared (its model module) — the only places its names are spelled
DESCRIPTOR_MODULES = {"models/unet3d.py", "models/ark.py", "models/peac.py"}


def test_registry_holds_the_four_families_of_the_three_methods():
    """What docs/DESIGN.md lists (an independent statement of the registry's contents)."""
    got = {(f.family, f.model_name, f.tasks) for f in list_families()}
    assert got == {
        ("genesis", "unet3d", ("segment", "restore")),
        ("genesis", "genesis_classifier", ("classify",)),
        ("ark", "ark", ("classify", "embed")),
        ("peac", "peac", ("correspond", "embed")),
    }
    assert sorted(family_names()) == ["ark", "genesis", "peac"]
    assert set(official_families()) == {"genesis", "ark", "peac"}
    assert official_families()["genesis"].model_name == "unet3d"  # the release is the U-Net
    assert set(MODELS) == set(REGISTRY)


def _spelled_names(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(ROOT).as_posix()}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]


def test_no_family_name_is_spelled_outside_its_descriptor():
    """The must-show of issue #19: a string equal to a family or model name appears only in the
    module that declares it; everything else reads :mod:`models.registry`."""
    names = {f.family for f in list_families()} | {f.model_name for f in list_families()}
    offenders = []
    for package in LIBRARY:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() not in DESCRIPTOR_MODULES:
                offenders += _spelled_names(path, names)
    assert offenders == [], "read the family registry instead:\n" + "\n".join(offenders)


def test_the_name_check_finds_a_spelled_name(tmp_path):
    """The check above can fail: a module listing families the old way is caught."""
    module = ROOT / "serve" / "_probe_roles.py"
    try:
        module.write_text('ROLES = {"ct_segment": (("genesis",), ("segment",))}\n')
        assert _spelled_names(module, {"genesis"}) == ["serve/_probe_roles.py:1: 'genesis'"]
    finally:
        module.unlink()


@pytest.mark.parametrize("family", list_families(), ids=lambda f: f.model_name)
def test_every_family_is_complete(family: Family):
    """Each descriptor's parts fit together: the builder is the registry's, every role names a
    task it exports, and the preset is one the imaging layer can run."""
    assert get_family(family.model_name) is family and MODELS[family.model_name] is family.builder
    assert family.tasks and all(t in family.tasks for t in family.roles)
    assert callable(family.export) and callable(family.preprocessing)


def test_lookups_list_the_valid_names():
    with pytest.raises(KeyError, match="genesis_classifier.*unet3d"):
        get_family("resnet")
    with pytest.raises(KeyError, match="valid names"):
        build_model("resnet")


def _fake(**kw) -> Family:
    def export(model, task, card, options):
        return ExportGraph(model, task, ["batch", 1], (2, 1), [1, 1])

    args = dict(
        family="toy", model_name="toy", builder=nn.Identity, tasks=("embed",), export=export,
        preprocessing=lambda m: None,
    )  # fmt: skip
    return Family(**(args | kw))


def test_a_descriptor_is_checked_when_declared():
    with pytest.raises(ValueError, match="not one of its tasks"):
        _fake(roles={"classify": {"cxr_classify": 0}})
    with pytest.raises(ValueError, match="unknown serving role"):
        _fake(roles={"embed": {"cxr_embed": 0}})
    with pytest.raises(ValueError, match="at least one task"):
        _fake(tasks=())
    with pytest.raises(ValueError, match="registered twice"):
        register(_fake(model_name="unet3d"))
    assert _fake(roles={"embed": {"embed": 5}}).serves("embed") == {"embed": 5}


class _Payload:
    pass


@pytest.mark.parametrize("family", sorted(official_families()))
def test_every_official_importer_reads_safely_and_refuses_garbage(family, tmp_path):
    """The swept part of the official-import checks (the per-release layouts are in
    test_official.py, test_ark_official.py and test_peac_official.py): every family's importer
    reads with ``weights_only=True`` and names what is wrong with a file it cannot use."""
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "teacher": {}, "state_dict": {}, "x": _Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError):
        import_official(family, evil)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt"):
        import_official(family, tmp_path / "list.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt"):
        import_official(family, tmp_path / "other.pt", entry="teacher")
    proc = subprocess.run(
        [sys.executable, "-m", "models.import_weights", family, str(tmp_path / "list.pt"),
         "--out", str(tmp_path / "w.safetensors")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "import failed" in proc.stderr
    assert not (tmp_path / "w.safetensors").exists()
