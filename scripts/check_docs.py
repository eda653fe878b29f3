"""Docs check: every shell and Python example in README.md is run or parse-checked, so none rots.

    python scripts/check_docs.py [README.md] [--keep DIR] [--only-parse]

Each fenced ``bash``/``python`` block must be preceded by a tag line (a hidden HTML comment):

* ``<!-- docs-check: run -->`` — executed, in file order, by ``bash -euo pipefail`` (Python blocks
  by the interpreter) in one scratch directory shared by all blocks, where ``configs/`` and
  ``scripts/`` link to the repository's. Later blocks use what earlier ones made (a run
  directory, an export).
* ``<!-- docs-check: run server -->`` — the same, with ``bentoml serve`` started first on the
  exports made so far (``./exports``) and ``127.0.0.1:3000`` in the block rewritten to its port.
* ``<!-- docs-check: parse -->`` — for commands that need data, a GPU or hours: every
  ``python -m MODULE ARGS`` (also after ``torchrun ... -m``) is parsed by MODULE's own argparse
  parser, stopped before it does any work, so a renamed flag or module fails; Python blocks are
  compiled. Other commands must be in :data:`CHECKED_ELSEWHERE` (run by CI or a named test).

An untagged block fails the check, and so does a relative link in README.md, docs/,
bench/RESULTS.md or SECURITY.md that does not resolve inside the repository. ``make test`` runs
this script after the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = re.compile(r"<!--\s*docs-check:\s*(run server|run|parse)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
#: commands in parse blocks that are not Python CLIs, and where they are exercised
CHECKED_ELSEWHERE = {
    "make serve": "the docs check's serve block + tests/serve (make serve's steps)",
    "make test": "CI (.ci/run)",
    "make test-fast": "the Makefile (same pytest, -m 'not slow')",
    "make lint": "CI (ruff in the suite's setup)",
    "make lock": "tests/security/test_dependencies.py (the pins it writes)",
    "bentoml build": "tests/serve/test_bentofile.py",
    "bentoml containerize": "needs Docker; the Bento it packs is built by test_bentofile.py",
    "bentoml serve": "serve.launch (every server test)",
}


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    mode: str  # "run", "run server", "parse" or "" (untagged)
    text: str


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of ``markdown`` with the tag on the line before each (if any)."""
    out, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        tag = TAG.search(prev)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        body = "\n".join(lines[i + 1 : j])
        out.append(Block(i + 1, m.group(1), tag.group(1) if tag else "", body))
        i = j + 1
    return out


def commands(text: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blanks dropped."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line.strip()
        if current.strip():
            out.append(current.strip())
        current = ""
    return out


class _Parsed(Exception):
    pass


def parse_only(module: str, argv: list[str]) -> None:
    """Run ``python -m module argv`` until its argparse parser has parsed, then stop."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        original(self, args, namespace)  # a bad flag exits 2 with argparse's message
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_args
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except _Parsed:
        return
    finally:
        argparse.ArgumentParser.parse_args = original
    raise SystemExit(f"{module} returned without parsing its arguments with argparse")


def _python_argv(cmd: str) -> tuple[str, list[str]] | None:
    words = shlex.split(cmd)
    if words and words[0] in ("python", "python3", "torchrun") and "-m" in words:
        k = words.index("-m")
        return words[k + 1], words[k + 2 :]
    return None


def plan_parse(block: Block) -> tuple[list[str], list[list[str]]]:
    """A parse block's problems found without running anything, and its Python CLI commands as
    ``[command, module, *argv]`` for :func:`check_commands`; Python blocks are compiled."""
    problems, batch = [], []
    if block.lang == "python":
        try:
            compile(block.text, f"README.md:{block.line}", "exec")
        except SyntaxError as exc:
            problems.append(f"line {block.line}: {exc}")
        return problems, batch
    for cmd in commands(block.text):
        cmd = re.sub(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+", "", cmd)  # leading VAR=value settings
        target = _python_argv(cmd)
        if target is not None:
            batch.append([cmd, target[0], *target[1]])
        elif not any(cmd.startswith(k) for k in CHECKED_ELSEWHERE):
            problems.append(f"block at line {block.line}: {cmd!r} is neither a Python CLI "
                            "nor checked elsewhere (add it to CHECKED_ELSEWHERE)")  # fmt: skip
    return problems, batch


def check_commands(batch: list[list[str]]) -> list[tuple[str, str]]:
    """Parse every command of ``batch`` in one child process → ``[(command, error)]``."""
    if not batch:
        return []
    r = subprocess.run(
        [sys.executable, __file__, "--parse-batch", json.dumps(batch)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if r.returncode != 0:
        return [("(parse check)", f"crashed:\n{r.stderr[-2000:]}")]
    return [tuple(f) for f in json.loads(r.stdout.strip().splitlines()[-1])]


def parse_batch(batch: list[list[str]]) -> list[tuple[str, str]]:
    """Parse each ``(command, module, *argv)`` in this process → ``[(command, error)]``."""
    failures = []
    for cmd, module, *argv in batch:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parse_only(module, argv)
        except SystemExit as exc:
            failures.append((cmd, f"{err.getvalue()[-1500:]}{exc.code if exc.code else ''}"))
        except Exception as exc:  # noqa: BLE001 - e.g. the module does not exist
            failures.append((cmd, f"{type(exc).__name__}: {exc}"))
    return failures


def run_block(block: Block, work: Path, env: dict) -> str | None:
    """Execute a run block; the error (with the end of its output) or None."""
    text = block.text
    server = None
    if block.mode == "run server":
        from serve import launch

        server = launch.start(work / "exports", work / "server.log", env={"ANATOMIX_PREPROCESS":
                              "dali"})  # fmt: skip
        text = text.replace("127.0.0.1:3000", server.url.removeprefix("http://"))
    cmd = ["bash", "-euo", "pipefail", "-c", text]
    if block.lang == "python":
        cmd = [sys.executable, "-c", text]
    try:
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    finally:
        if server is not None:
            server.stop()
    if r.returncode != 0:
        return f"block at line {block.line} exited {r.returncode}:\n{(r.stdout + r.stderr)[-3000:]}"
    return None


#: Markdown files whose relative links must resolve inside the repository.
LINKED_DOCS = ("README.md", "docs/*.md", "bench/RESULTS.md", "SECURITY.md")
#: ``[text](target)`` and ``![alt](target)``; the target ends at a space (a title) or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[^)]*)?\)")


def check_links(root: Path = ROOT) -> list[str]:
    """Every relative link of :data:`LINKED_DOCS` that does not resolve to a file or directory
    inside ``root`` (external ``scheme:`` links and ``#anchors`` are not checked)."""
    problems = []
    for pattern in LINKED_DOCS:
        for doc in sorted(root.glob(pattern)):
            in_code = False
            for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
                if FENCE.match(line.strip()) or line.strip().startswith("```"):
                    in_code = not in_code
                if in_code:
                    continue
                for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                    if re.match(r"[a-zA-Z][\w+.-]*:", target) or target.startswith("#"):
                        continue
                    path = (doc.parent / target.split("#")[0]).resolve()
                    if not path.is_relative_to(root.resolve()) or not path.exists():
                        where = "outside the repository" if path.exists() else "missing"
                        problems.append(f"{doc.relative_to(root)}:{n}: link {target} is {where}")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--parse-batch"]:
        print(json.dumps(parse_batch(json.loads(argv[1]))))
        return 0
    p = argparse.ArgumentParser(prog="scripts/check_docs.py", description=__doc__.split("\n")[0])
    p.add_argument("readme", nargs="?", type=Path, default=ROOT / "README.md")
    p.add_argument("--keep", type=Path, help="scratch directory to use and keep (default: a temp)")
    p.add_argument("--only-parse", action="store_true", help="skip the run blocks")
    args = p.parse_args(argv)
    found = blocks(args.readme.read_text(encoding="utf-8"))
    problems = [f"block at line {b.line} ({b.lang}) has no docs-check tag" for b in found
                if not b.mode and b.lang in ("bash", "sh", "python")]  # fmt: skip
    links = check_links()
    print(f"relative links: {'ok' if not links else f'{len(links)} broken'}", flush=True)
    problems += links
    work = args.keep or Path(tempfile.mkdtemp(prefix="anatomix-docs-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "scripts"):
        if not (work / name).exists():
            (work / name).symlink_to(ROOT / name)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONUNBUFFERED"] = "1"
    start, batch, where = time.monotonic(), [], {}
    for b in found:
        if b.mode == "parse":
            errs, cmds = plan_parse(b)
            problems += errs
            batch += cmds
            where.update({c[0]: b.line for c in cmds})
    for cmd, err in check_commands(batch):
        problems.append(f"block at line {where.get(cmd, '?')}: {cmd!r}:\n{err}")
    n_parse = sum(b.mode == "parse" for b in found)
    print(
        f"parse blocks: {n_parse} ({len(batch)} commands parsed) "
        f"{'ok' if not problems else 'FAILED'} ({time.monotonic() - start:.0f} s)",
        flush=True,
    )
    for b in found:
        if b.mode in ("run", "run server") and not args.only_parse:
            start = time.monotonic()
            err = run_block(b, work, env)
            print(f"README.md:{b.line} [{b.mode}] {'ok' if not err else 'FAILED'} "
                  f"({time.monotonic() - start:.0f} s)", flush=True)  # fmt: skip
            problems += [err] if err else []
    for msg in problems:
        print(f"\n{msg}", file=sys.stderr)
    print(f"docs check: {len(found)} blocks, {len(problems)} problem(s); scratch dir {work}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
