"""Files meshctl keeps: written whole or not at all, and locked against a second meshctl.

Everything meshctl writes with secrets or trust in it (CA keys, known_hosts,
the inventory) goes through here: a fresh file made with O_EXCL (so a link
planted where it goes is never followed), its mode set on the descriptor,
its data synced before the rename, and the directory synced after, so that
a crash leaves the old file or the new one, never an empty one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a temporary file beside ``path`` with ``mode``, then rename it over.

    A link at ``path`` is replaced, never written through.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _fill(f.fileno(), data, mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``data`` and ``mode``; FileExistsError if anything is there, a link too.

    For a directory being built that nobody else may have touched (a new
    workspace); its entries are synced with ``sync_directory`` once it is whole.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        _fill(f.fileno(), data, mode)


def _fill(fd: int, data: bytes, mode: int) -> None:
    os.fchmod(fd, mode)  # on the descriptor: the umask does not narrow it, no path is followed
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def sync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (made if missing) for the block; waits for it."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
