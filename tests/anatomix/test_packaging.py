"""Packaging a user can live with (issue #19 item 6): compatible ranges in pyproject.toml, exact
pins in constraints.txt, and the two agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_torch_is_a_range_and_the_pinned_versions_are_inside_every_range():
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "project"]["dependencies"]]  # fmt: skip
    by_name = {r.name.lower(): r for r in deps}
    pins = _pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"  # the brief's pins
    for name in ("torch", "torchvision"):
        spec = by_name[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned exactly: {spec}"
    outside = [
        f"{r.name}{r.specifier} excludes the pinned {pins[r.name.lower()]}"
        for r in deps
        if r.name.lower() in pins and pins[r.name.lower()] not in r.specifier
    ]
    assert outside == []


def test_presets_resolve_from_any_directory(tmp_path, monkeypatch):
    """The README's `--config configs/genesis/tiny.yaml` works outside the checkout: the preset
    shipped with the package is read (its `base:` chain included)."""
    from train.config import load_config, resolve_config
    from train.genesis.config import GenesisConfig

    monkeypatch.chdir(tmp_path)
    shipped = resolve_config("configs/genesis/tiny.yaml")
    assert shipped.is_file() and shipped.resolve() == (ROOT / "configs/genesis/tiny.yaml").resolve()
    assert resolve_config("genesis/tiny.yaml") == shipped
    assert resolve_config("configs/genesis/nope.yaml") == Path("configs/genesis/nope.yaml")
    cfg = load_config(GenesisConfig, "configs/genesis/tiny.yaml")
    want = load_config(GenesisConfig, ROOT / "configs/genesis/tiny.yaml")
    assert cfg == want


@pytest.mark.slow
def test_the_wheel_carries_every_preset(tmp_path):
    """A built wheel holds each configs/<method>/<preset>.yaml as a file (not the link)."""
    import subprocess
    import sys
    import zipfile

    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("anatomix-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*/*.yaml")}
    assert presets and {f"anatomix/{p}" for p in presets} <= names
