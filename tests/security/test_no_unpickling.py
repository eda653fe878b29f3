"""No code path can unpickle a model file (SECURITY.md, "Model files"): a static scan of every
module for ``torch.load`` without ``weights_only=True`` and for pickle-based loaders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("imaging", "kernels", "models", "train", "export", "serve", "scripts", "bench")
#: module.function calls that execute pickles, whatever their arguments
UNSAFE = {("pickle", "load"), ("pickle", "loads"), ("dill", "load"), ("joblib", "load"),
          ("torch", "load"), ("np", "load"), ("numpy", "load")}  # fmt: skip


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            if isinstance(base, ast.Name) and (base.id, node.func.attr) in UNSAFE:
                yield base.id, node


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def problems_in(source: str, where: str) -> list[str]:
    """Unsafe loader calls in ``source`` (``where`` names it in the messages)."""
    out = []
    for module, call in _calls(ast.parse(source)):
        line = f"{where}:{call.lineno}"
        if module == "torch" and _keyword(call, "weights_only") is not True:
            out.append(f"{line}: torch.load without weights_only=True")
        elif module in ("np", "numpy") and _keyword(call, "allow_pickle") is True:
            out.append(f"{line}: numpy.load with allow_pickle=True")
        elif module in ("pickle", "dill", "joblib"):
            out.append(f"{line}: {module}.{call.func.attr} executes pickles")
    return out


def test_the_scan_catches_each_unsafe_form():
    bad = (
        "import torch, pickle, numpy as np\n"
        "torch.load('a.pt')\n"
        "torch.load('a.pt', weights_only=False)\n"
        "np.load('a.npy', allow_pickle=True)\n"
        "pickle.loads(b'')\n"
    )
    assert [p.split(": ", 1)[1] for p in problems_in(bad, "x.py")] == [
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "numpy.load with allow_pickle=True",
        "pickle.loads executes pickles",
    ]
    good = "torch.load('a.pt', map_location='cpu', weights_only=True)\nnp.load('a.npy')\n"
    assert problems_in(good, "y.py") == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_can_unpickle(package):
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        found += problems_in(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "\n".join(found)
