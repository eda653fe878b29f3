"""scripts/check_docs.py: tags, command splitting, and that a broken example really fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_docs.py"
sys.path.insert(0, str(ROOT / "scripts"))
import check_docs  # noqa: E402

README = """# x

<!-- docs-check: parse -->
```bash
python -m export.run --from runs/a --out exports/a   # fine
```

<!-- docs-check: run -->
```bash
echo hello > made.txt
```

```bash
echo untagged
```

```mermaid
graph LR
```
"""


def test_blocks_and_their_tags():
    found = check_docs.blocks(README)
    assert [(b.line, b.lang, b.mode) for b in found] == [
        (4, "bash", "parse"),
        (9, "bash", "run"),
        (13, "bash", ""),
        (17, "mermaid", ""),
    ]


def test_commands_join_continuations_and_drop_comments():
    text = "# a comment\npython -m a \\\n    --x 1   # trailing\n\nmake test\n"
    assert check_docs.commands(text) == ["python -m a --x 1", "make test"]


def _check(tmp_path, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(readme), "--keep", str(tmp_path / "work")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip


def test_untagged_block_fails_and_run_blocks_share_a_directory(tmp_path):
    r = _check(tmp_path, README)
    assert r.returncode == 1 and "line 13 (bash) has no docs-check tag" in r.stderr
    assert (tmp_path / "work" / "made.txt").read_text() == "hello\n"
    ok = README.replace("```bash\necho untagged", "<!-- docs-check: run -->\n```bash\ncat made.txt")
    assert _check(tmp_path, ok).returncode == 0


def test_a_renamed_flag_or_module_or_failing_command_fails(tmp_path):
    bad_flag = README.replace("--out exports/a", "--output exports/a")
    r = _check(tmp_path, bad_flag.replace("```bash\necho untagged\n```\n", ""))
    assert r.returncode == 1 and "--out" in r.stderr
    bad_module = README.replace("export.run", "export.runner")
    r = _check(tmp_path, bad_module.replace("```bash\necho untagged\n```\n", ""))
    assert r.returncode == 1 and "export.runner" in r.stderr
    failing = README.replace("echo hello > made.txt", "false")
    r = _check(tmp_path, failing.replace("```bash\necho untagged\n```\n", ""))
    assert r.returncode == 1 and "exited 1" in r.stderr
    unknown = README.replace("python -m export.run --from runs/a --out exports/a", "rm -rf /tmp/x")
    r = _check(tmp_path, unknown.replace("```bash\necho untagged\n```\n", ""))
    assert r.returncode == 1 and "neither a Python CLI" in r.stderr


def test_relative_links_must_resolve_inside_the_repository(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "plot.png").write_bytes(b"")
    (tmp_path / "outside.md").write_text("x")
    (tmp_path / "README.md").write_text(
        "[design](docs/DESIGN.md) and [site](https://example.org) and [top](#top)\n"
        "![plot](bench/plot.png) `[not a link](nowhere.md)`\n"
        "```\n[in a code block](nowhere.md)\n```\n"
    )
    (tmp_path / "docs" / "DESIGN.md").write_text(
        "[methods](METHODS.md) [up](../README.md#layers) [here](../outside.md)\n"
    )
    root = tmp_path
    problems = check_docs.check_links(root)
    assert problems == ["docs/DESIGN.md:1: link METHODS.md is missing"]
    (tmp_path / "docs" / "METHODS.md").write_text("")
    assert check_docs.check_links(root) == []
    # a link that leaves the repository is refused even where the file exists
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "README.md").write_text("[x](../outside.md)\n")
    assert check_docs.check_links(tmp_path / "repo") == [
        "README.md:1: link ../outside.md is outside the repository"
    ]
