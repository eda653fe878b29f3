"""The ``anatomix`` command: it fronts each tool with the tool's own arguments, answers
``--help`` without importing torch, and refuses an unknown command with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from anatomix import cli


def test_the_console_script_is_declared():
    [ep] = [e for e in entry_points(group="console_scripts") if e.name == "anatomix"]
    assert ep.value == "anatomix.cli:main"


def test_help_lists_every_tool_without_importing_torch():
    code = (
        "import sys, json; from anatomix.cli import main; main(['--help']); "
        "print(json.dumps(sorted(m for m in ('torch', 'timm', 'train', 'export', 'serve') "
        "if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *text, loaded = done.stdout.strip().splitlines()
    assert json.loads(loaded) == []
    for name in [*cli.TOOLS, "serve"]:
        assert any(line.split()[:1] == [name] for line in text), name


@pytest.mark.parametrize(
    ("command", "expected"),
    [("train", "pretrain"), ("export", "--official"), ("import-weights", "--out"),
     ("evaluate-export", "--task"), ("correspond", "--weights")],
)  # fmt: skip
def test_each_tool_gets_its_own_arguments(command, expected, capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's own --help
        cli.main([command, "--help"])
    assert stop.value.code == 0 and expected in capsys.readouterr().out


def test_unknown_and_missing_commands(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_serve_passes_address_models_and_malloc_setting(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert cli.main(["serve", "--models", "/srv/exports", "--port", "3100"]) == 0
    [(cmd, env)] = calls
    assert cmd[1:4] == ["-m", "bentoml", "serve"] and cmd[4] == cli.SERVICE
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "3100"]
    assert env["ANATOMIX_MODELS"] == "/srv/exports" and env["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the operator's setting wins
    cli.main(["serve"])
    assert calls[-1][1]["MALLOC_ARENA_MAX"] == "4"


SCRIPT = Path(sys.executable).with_name("anatomix")  # pip puts it beside the interpreter


@pytest.mark.skipif(not SCRIPT.is_file(), reason=f"{SCRIPT} is not installed (pip install -e .)")
def test_the_installed_command_runs_a_tool():
    done = subprocess.run([str(SCRIPT), "train", "--help"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and "evaluate" in done.stdout


#: every command line of the library, by its `python -m` name
CLIS = ["train.run", "export.run", "export.evaluate", "models.import_weights",
        "models.peac_correspond", "kernels.bench", "anatomix.cli"]  # fmt: skip
_HELP = """
import json, runpy, sys, time
sys.argv = [{m!r}, "--help"]
start = time.perf_counter()
try:
    runpy.run_module({m!r}, run_name="__main__")
except SystemExit:
    pass
seconds = time.perf_counter() - start
heavy = sorted(m for m in ("torch", "timm", "numba", "triton", "onnx") if m in sys.modules)
print(json.dumps({{"seconds": seconds, "heavy": heavy}}))
"""


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_answers_help_fast_without_torch(module):
    """Issue #19: ``--help`` under a second, because torch and timm are imported only after the
    arguments are parsed (they take seconds to import)."""
    done = subprocess.run(
        [sys.executable, "-c", _HELP.format(m=module)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    *text, last = done.stdout.strip().splitlines()
    report = json.loads(last)
    assert any("usage:" in line for line in text)
    assert report["heavy"] == [] and report["seconds"] < 1.0, report
