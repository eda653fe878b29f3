"""The suite's own layout: shared set-up lives in helper modules (tests/reference, tests/*/films.py,
...), never in another test module, so running or deleting one test file cannot break another."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_test_modules(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [n for n in names if any(p.startswith("test_") for p in n.split("."))]
    return found


def test_no_test_module_imports_another():
    offenders = {
        str(p.relative_to(TESTS)): hits
        for p in sorted(TESTS.rglob("*.py"))
        if (hits := _imported_test_modules(p))
    }
    assert offenders == {}


def test_the_check_sees_both_import_forms(tmp_path):
    bad = tmp_path / "test_x.py"
    bad.write_text("from .test_engine import small_config\nimport tests.kernels.test_genesis\n")
    assert _imported_test_modules(bad) == [
        "test_engine",
        "test_engine.small_config",
        "tests.kernels.test_genesis",
    ]
