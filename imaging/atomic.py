"""Atomic file writes: a file is either its old content or its complete new content, never a torn
mix, even if the process is killed mid-write. Torch-free, so export and serving use it alone."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class NothingWrittenError(OSError):
    """The block of :func:`atomic_path` finished without creating its temporary file."""


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported everywhere (e.g. Windows), hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` atomically.

    The temporary file lives in the same directory (so ``os.replace`` is a rename on one
    filesystem), is fsync'ed before the rename, and is removed if the block raises, leaving any
    previous file at ``path`` untouched. Parent directories are created.

    Example::

        with atomic_path(run_dir / "state.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named (not mkstemp) so the writer creates it with the usual umask-derived permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise NothingWrittenError(f"nothing was written to the temporary file for {path}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
