"""YAML + ``--set`` config loading: types are checked, unknown keys refused, round trip exact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from train.config import ConfigError, dump_config, load_config


@dataclass
class Inner:
    lr: float = 1.0
    name: Literal["sgd", "adam"] = "sgd"
    size: tuple[int, int, int] = (64, 64, 32)
    subsets: list[int] = field(default_factory=lambda: [0, 1])
    root: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    epochs: int = 3


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 2\n  size: [32, 32, 16]\nepochs: 5\n")
    cfg = load_config(Outer, path, ["inner.lr=0.1", "inner.name=adam", "inner.root=/data"])
    assert cfg.inner.lr == 0.1 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.size == (32, 32, 16) and cfg.epochs == 5
    assert cfg.inner.name == "adam" and cfg.inner.root == "/data"
    again = load_config(Outer, None, [])
    assert again.inner.lr == 1.0  # defaults untouched


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(Outer, None, ["inner.subsets=[5, 6]", "epochs=7"])
    (tmp_path / "r.yaml").write_text(dump_config(cfg))
    assert load_config(Outer, tmp_path / "r.yaml") == cfg
    assert yaml.safe_load(dump_config(cfg))["inner"]["size"] == [64, 64, 32]


@pytest.mark.parametrize(
    "override, match",
    [
        ("inner.lrr=1", "unknown key"),
        ("inner.lr=fast", "expected float"),
        ("inner.name=rmsprop", "not one of"),
        ("epochs=2.5", "expected int"),
        ("inner.size=[1, 2]", "expected 3 items"),
        ("epochs", "a.b=value"),
    ],
)
def test_bad_overrides_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, None, [override])


def test_base_file_is_merged_under_the_preset(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "tiny.yaml").write_text(
        "inner:\n  lr: 2\n  subsets: [1, 2, 3]\n  root: /data\nepochs: 5\n"
    )
    smoke = tmp_path / "smoke.yaml"
    smoke.write_text("base: presets/tiny.yaml\ninner:\n  subsets: [7]\nepochs: 1\n")
    cfg = load_config(Outer, smoke, ["inner.lr=0.5"])
    # section by section: lr and root come from the base, the list is replaced, not appended
    assert cfg.inner == Inner(lr=0.5, subsets=[7], root="/data") and cfg.epochs == 1
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Outer, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml not found"):
        load_config(Outer, tmp_path / "c.yaml")


def _preset_class(path):
    from train.ark.transfer import TransferConfig
    from train.finetune.config import FinetuneConfig
    from train.run import methods

    if path.name.startswith("finetune"):
        return FinetuneConfig
    if path.name.startswith("transfer"):
        return TransferConfig
    return methods()[path.parent.name][0]


PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_loads_into_its_config(path):
    cfg = load_config(_preset_class(path), path)
    if path.stem.endswith("smoke"):  # a smoke preset is its base preset, shrunk
        base = yaml.safe_load(path.read_text())["base"]
        assert (path.parent / base).is_file()
        assert cfg.loop.epochs == 1
