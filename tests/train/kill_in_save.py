"""``python tests/train/kill_in_save.py STEP[:renamed] ARGS...``: ``python -m train.run ARGS``
that SIGKILLs itself inside the checkpoint write of global step ``STEP`` (test_faults.py).

Without a suffix it dies once ``model.safetensors`` is in the checkpoint's temporary directory,
before ``state.pt``; with ``:renamed``, after the directory is renamed into place and before
``latest`` names it. The kill is planted by wrapping two of :mod:`train.checkpoints`' calls, so
the library carries no test hook.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import train.checkpoints as checkpoints  # noqa: E402


def main() -> None:
    at, _, point = sys.argv[1].partition(":")
    name, point = f"step_{int(at):08d}", point or "tmp"
    save_weights, atomic_write_bytes = checkpoints.save_weights, checkpoints.atomic_write_bytes

    def save_then_kill(model, path, **kwargs):
        out = save_weights(model, path, **kwargs)
        if point == "tmp" and Path(path).parent.name == f".{name}.tmp":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    def kill_before_latest(path, data: bytes):
        if point == "renamed" and Path(path).name == "latest" and data == name.encode():
            os.kill(os.getpid(), signal.SIGKILL)
        return atomic_write_bytes(path, data)

    checkpoints.save_weights, checkpoints.atomic_write_bytes = save_then_kill, kill_before_latest
    sys.argv = ["train.run", *sys.argv[2:]]
    runpy.run_module("train.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
