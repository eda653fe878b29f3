"""Dependency pinning (SECURITY.md, "Dependencies"): everything pyproject asks for is pinned to an
exact version in constraints.txt, which the Makefile installs with, and the environment running
the tests has exactly those versions."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"not an exact pin: {line}"
        pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("cpu", "test"):  # what `make test` installs ([dev] = cpu + test)
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_every_dependency_is_pinned_exactly_within_its_range():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt (run `make lock`)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}"
        )


def test_the_makefile_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install [^\n]*-c constraints\.txt -e '\.\[\$\(EXTRAS\)\]'", makefile)


def test_installed_versions_are_the_pinned_ones():
    pins = _pins()
    for req in _requirements():
        try:
            installed = md.version(req.name)
        except md.PackageNotFoundError:
            if req.name == "onnxruntime":  # a GPU install has onnxruntime-gpu instead
                continue
            raise
        assert installed == pins[canonicalize_name(req.name)], (
            f"{req.name} {installed} is installed but constraints.txt pins "
            f"{pins[canonicalize_name(req.name)]}: reinstall with `make install`"
        )
