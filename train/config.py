"""Typed configs: nested dataclasses loaded from YAML, overridden with ``--set a.b=value``.

The resolved config is saved beside every checkpoint (``config.yaml``) so a run can always be
reproduced or resumed from its directory alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override names an unknown key or a value of the wrong type."""


def resolve_config(path: str | Path) -> Path:
    """``path`` itself, or — when it does not exist and is relative — the preset of that name
    shipped with anatomix (``configs/genesis/tiny.yaml`` or ``genesis/tiny.yaml``), so an
    installed package runs the README's commands from any directory."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    from importlib.resources import files

    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = Path(str(files("anatomix").joinpath("configs", *parts)))
    return shipped if shipped.is_file() else path


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional; a shipped preset's name works from any
    directory, :func:`resolve_config`) and ``key.sub=value`` overrides, type-checked."""
    data: dict = _read_yaml(resolve_config(path)) if path is not None else {}
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (the value read as YAML) to ``data`` in place: the ``--set``
    syntax of every anatomix command."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like a.b=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from None
        _set_path(data, key.strip().split("."), value)
    return data


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file as a dict; ``base: other.yaml`` (relative to the file) is read first and
    this file's keys are merged over it, section by section (lists and values replace)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen or len(seen) > 8:
        raise ConfigError(f"{path}: 'base' files form a cycle: {base_path}")
    return _merge(_read_yaml(base_path, (*seen, path.resolve())), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    """Set ``data[k0][k1]...`` to ``value``; an integer key indexes a list given in the file
    (``data.datasets.0.root=...``)."""
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(data, list):
            if not key.isdigit() or int(key) >= len(data):
                raise ConfigError(
                    f"cannot set {'.'.join(keys)}: {key!r} is not an index below {len(data)}"
                )
            key = int(key)
        elif not isinstance(data, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {keys[depth - 1]} is not a section")
        if last:
            data[key] = value
        else:
            if isinstance(data, dict):
                data = data.setdefault(key, {})
            else:
                data = data[key]


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Recursively build dataclass ``cls`` from ``data``, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}".lstrip("."))
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
        item = args[0] if args else Any
        return origin(_coerce(item, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
