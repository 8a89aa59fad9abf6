"""The meshd bundle: meshd and its dependencies, ready to unpack on a host without pip or internet.

Hosts have python3 but maybe no pip, no venv module and no route to a package
index. meshctl therefore fetches binary wheels for the host's Python version
and architecture once (through pip, pinned and hash-checked by bundle.lock,
cached per target), unpacks them with
meshd's own package into ``lib/``, and ships a tarball. On the host it lands
in ``/opt/meshd/<version>/`` and ``/opt/meshd/bin/meshd`` runs it with the
system python3 in isolated mode.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import meshd
from meshctl import bundle_lock
from meshctl.files import locked, write_atomic
from meshd.errors import ProvisionError


def default_cache() -> Path:
    """$MESHCTL_CACHE, or /var/cache/meshctl/bundles for root, or the user's cache dir."""
    if os.environ.get("MESHCTL_CACHE"):
        return Path(os.environ["MESHCTL_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/meshctl/bundles")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshctl" / "bundles"


DEFAULT_CACHE = default_cache()
LAUNCHER = """#!/bin/sh
# meshd, unpacked by meshctl; runs on the system python3 without touching its packages
exec /usr/bin/python3 -I -c '{code}' "$@"
"""
LAUNCH_CODE = (
    'import sys; sys.path.insert(0, "{lib}"); from meshd.cli import main; sys.exit(main())'
)


@dataclass(frozen=True)
class Target:
    """What a bundle is for: the host's Python ``major.minor`` and machine (``uname -m``)."""

    python: str
    machine: str

    @property
    def tag(self) -> str:
        return f"cp{self.python.replace('.', '')}-{self.machine}"


@dataclass(frozen=True)
class Bundle:
    path: Path
    version: str  # meshd version + content hash: a new build means a new directory on the host
    target: Target


def wheels(
    target: Target, cache: Path = DEFAULT_CACHE, pip: str | None = None, offline: bool = False
) -> Path:
    """The cached wheel directory for ``target``: the lock's pinned, hash-checked wheels.

    Downloaded through pip the first time (``--require-hashes`` against
    bundle.lock); keyed by the lock's content, so a new lock fetches anew.
    """
    lock_text = bundle_lock.LOCK.read_text()
    lock_id = hashlib.sha256(lock_text.encode()).hexdigest()[:12]
    directory = cache / "wheels" / f"{target.tag}-{lock_id}"
    if (directory / ".complete").exists():
        return directory
    if offline:
        raise ProvisionError(
            f"meshd's dependencies for Python {target.python} on {target.machine} are not cached",
            hint="meshctl join fetches them once (it needs the package index that time)",
        )
    directory.mkdir(parents=True, exist_ok=True)
    command = bundle_lock.download_command(target.python, target.machine, directory, pip)
    command += ["--no-deps", "--require-hashes", "-r", str(bundle_lock.LOCK)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise ProvisionError(
            f"cannot fetch meshd's dependencies for Python {target.python} on {target.machine}: "
            f"{lines[-1] if lines else 'pip failed'}",
            hint=f"this needs the package index once; afterwards {directory} is reused offline"
            " (only CPython 3.11-3.13 on x86_64/aarch64 are pinned in bundle.lock)",
        )
    bundle_lock.check_wheels(directory, lock_text)
    (directory / ".complete").touch()
    return directory


def build(target: Target, cache: Path = DEFAULT_CACHE, offline: bool = False) -> Bundle:
    """A tarball holding ``lib/`` (meshd + dependencies); built once per content, then reused.

    Serialized by a lock file, so parallel meshctl runs neither race on the
    cache nor publish half a tarball; old tarballs of a target are pruned.
    """
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / ".lock"):
        wheel_dir = wheels(target, cache, offline=offline)
        bundle_lock.check_wheels(wheel_dir, bundle_lock.LOCK.read_text())  # the cache, too
        key = _content_key(wheel_dir)
        index_path = cache / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        known = index.get(key)
        if known and _intact(cache / known["file"], known.get("sha256")):
            return Bundle(cache / known["file"], known["version"], target)
        bundle = _build(target, cache, wheel_dir)
        digest = hashlib.sha256(bundle.path.read_bytes()).hexdigest()
        index[key] = {"file": bundle.path.name, "version": bundle.version, "sha256": digest}
        _prune(cache, target, index)
        write_atomic(index_path, json.dumps(index, indent=1, sort_keys=True).encode(), 0o644)
        return bundle


def _build(target: Target, cache: Path, wheel_dir: Path) -> Bundle:
    with tempfile.TemporaryDirectory(prefix="meshd-bundle-") as tmp:
        lib = Path(tmp) / "lib"
        lib.mkdir()
        for wheel in sorted(wheel_dir.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(lib)  # noqa: S202 - wheels we fetched for this purpose
        shutil.copytree(
            Path(meshd.__file__).parent, lib / "meshd", ignore=shutil.ignore_patterns("__pycache__")
        )
        data = _tar(lib)
    digest = hashlib.sha256(data).hexdigest()[:12]
    version = f"{meshd.__version__}-{digest}"
    path = cache / f"meshd-{version}-{target.tag}.tar.gz"
    write_atomic(path, data, 0o644)  # also over a damaged copy
    return Bundle(path, version, target)


def _intact(path: Path, sha256: str | None) -> bool:
    """A cached tarball exists and is what was built (it is uploaded to hosts as root)."""
    return path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def _content_key(wheel_dir: Path) -> str:
    """What a bundle is made of: the wheels (name, size) and meshd's source files."""
    digest = hashlib.sha256()
    for wheel in sorted(wheel_dir.glob("*.whl")):
        digest.update(f"{wheel.name}:{wheel.stat().st_size}\n".encode())
    source = Path(meshd.__file__).parent
    for path in sorted(source.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return f"{wheel_dir.name}:{digest.hexdigest()}"


def _prune(cache: Path, target: Target, index: dict[str, dict[str, str]], keep: int = 3) -> None:
    """Keep the newest ``keep`` tarballs of ``target``; drop the rest and their index entries."""
    tarballs = sorted(
        cache.glob(f"meshd-*-{target.tag}.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in tarballs[keep:]:
        old.unlink(missing_ok=True)
        for key in [k for k, v in index.items() if v["file"] == old.name]:
            del index[key]


def _tar(lib: Path) -> bytes:
    """A reproducible tar.gz of ``lib``: equal input, equal hash, on any operator machine.

    Sorted, no times or owners, and modes normalised (0755 directories and
    executables, 0644 files): the operator's umask must not change the version.
    """
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for path in sorted(lib.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(lib.parent)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() or info.mode & 0o100 else 0o644
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def launcher(lib: str) -> str:
    """The ``/opt/meshd/bin/meshd`` script for a bundle unpacked with its ``lib`` at ``lib``."""
    return LAUNCHER.format(code=LAUNCH_CODE.format(lib=lib))
