"""The one way meshd writes a file: whole or not at all, never through a planted link.

Every file meshd writes with secrets (keys, pushed documents) or as root
(``/etc/hosts``, the sync note) goes through ``write_temp`` and a rename: a
fresh temporary name beside the target (``mkstemp``: O_CREAT|O_EXCL|O_NOFOLLOW,
mode 0600 from the first byte), the data, fsync, and only then the final
mode. A stale file or a link at some fixed name can therefore neither lend its
mode to the new file nor redirect the write.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

PRIVATE = 0o600


def write_temp(
    path: Path, data: bytes, mode: int = PRIVATE, owner: tuple[int, int] | None = None
) -> Path:
    """A new, synced temporary file beside ``path`` holding ``data``; the caller renames it."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".meshd", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)  # after the data: a secret is never readable by others
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` through ``write_temp`` and a rename.

    A link at ``path`` itself is replaced, not followed. ``mode`` None keeps
    the mode and owner of the file replaced (0644 for a new one). A
    bind-mounted file (a container's /etc/hosts) cannot be renamed over: it is
    rewritten in place.
    """
    owner = None
    if mode is None:
        try:
            st = path.stat()
            mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
        except FileNotFoundError:
            mode = 0o644
    tmp = write_temp(path, data, mode, owner)
    try:
        _rename(tmp, path, data)
    finally:
        tmp.unlink(missing_ok=True)  # gone after a rename; left by the in-place rewrite
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (a crash must not bring back the old file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600 from the first byte on."""
    write_atomic(path, data, PRIVATE)


def _rename(tmp: Path, path: Path, data: bytes) -> None:
    try:
        tmp.replace(path)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        with path.open("r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
