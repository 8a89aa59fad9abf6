"""Files meshd's root helpers write: whole or not at all, never through a planted link."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: a fresh temporary file beside it, fsync, rename.

    The temporary name is new (O_EXCL), so root never writes through a link
    someone planted, and a link at ``path`` itself is replaced, not followed.
    ``mode`` None keeps the mode and owner of the file replaced (0644 for a
    new one). A bind-mounted file (a container's /etc/hosts) cannot be renamed
    over: it is rewritten in place.
    """
    owner = None
    if mode is None:
        try:
            st = path.stat()
            mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".meshd", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.flush()
            os.fsync(f.fileno())
        _rename(tmp, path, data)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _rename(tmp: str, path: Path, data: bytes) -> None:
    try:
        Path(tmp).replace(path)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        with path.open("r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
