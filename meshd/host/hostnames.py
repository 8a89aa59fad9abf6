"""``meshd hosts apply|remove``: the managed block of ``/etc/hosts``, written for real.

Run as root by ``meshd-sync.service`` whenever a registry is pushed. The text
comes from ``meshd.hostsfile`` (pure); this module reads the file and swaps
it atomically: a temp file in the same directory, the original's mode and
owner, fsync, rename. A file whose text would not change is not written at
all, so its inode and mtime stay put and whatever watches it reloads nothing.
Bytes are kept as they were (``surrogateescape``, no newline translation), so
taking our block out restores the original file exactly.
"""

from __future__ import annotations

from pathlib import Path

from meshd import paths
from meshd.errors import ProvisionError
from meshd.files import write_atomic
from meshd.hostsfile import with_block, without_block
from meshd.registry import Registry

HOSTS = Path(paths.HOSTS_FILE)
_CODEC = ("utf-8", "surrogateescape")


def service_vips(registry: Registry) -> dict[str, str]:
    """Service name -> virtual IP, for every service in ``registry``."""
    return {s.name: s.vip for s in registry.services}


def apply(registry: Registry, path: Path = HOSTS) -> bool:
    """Put the block for ``registry``'s services into ``path``; False when it was already there."""
    text = _read(path)
    return _replace(path, text, with_block(text, service_vips(registry)))


def remove(path: Path = HOSTS) -> bool:
    """Take our block out of ``path``; False when there was none."""
    text = _read(path)
    return _replace(path, text, without_block(text))


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(*_CODEC)
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror}") from e


def _replace(path: Path, old: str, new: str) -> bool:
    if new == old:
        return False
    try:
        write_atomic(path.resolve(), new.encode(*_CODEC))  # through a symlink, not over it
    except OSError as e:
        raise ProvisionError(
            f"cannot write {path}: {e.strerror}", hint="run meshd hosts as root"
        ) from e
    return True
