"""The meshd bundle: meshd and its dependencies, ready to unpack on a host without pip or internet.

Hosts have python3 but maybe no pip, no venv module and no route to a package
index. meshctl therefore fetches binary wheels for the host's Python version
and architecture once (through pip, cached per target), unpacks them with
meshd's own package into ``lib/``, and ships a tarball. On the host it lands
in ``/opt/meshd/<version>/`` and ``/opt/meshd/bin/meshd`` runs it with the
system python3 in isolated mode.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import meshd
from meshd.errors import ProvisionError

DEFAULT_CACHE = Path("/var/cache/meshctl/bundles")
# what meshd imports at run time; pip resolves what these need in turn
RUNTIME_REQUIREMENTS = (
    "anyio>=4.3",
    "cryptography>=42",
    "psutil>=5.9",
    "uvloop>=0.19",
    "httptools>=0.6",
)
MANYLINUX = ("manylinux_2_28", "manylinux_2_17", "manylinux2014")

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


def wheels(target: Target, cache: Path = DEFAULT_CACHE, pip: str | None = None) -> Path:
    """The cached wheel directory for ``target``; downloaded through pip the first time."""
    directory = cache / "wheels" / target.tag
    if (directory / ".complete").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        pip or sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--dest",
        str(directory),
        "--python-version",
        target.python,
        "--implementation",
        "cp",
        "--abi",
        f"cp{target.python.replace('.', '')}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in MANYLINUX:
        command += ["--platform", f"{platform}_{target.machine}"]
    result = subprocess.run(
        [*command, *RUNTIME_REQUIREMENTS], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ProvisionError(
            f"cannot fetch meshd's dependencies for Python {target.python} on {target.machine}: "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'pip failed'}",
            hint=f"this needs the package index once; afterwards {directory} is reused offline",
        )
    (directory / ".complete").touch()
    return directory


def build(target: Target, cache: Path = DEFAULT_CACHE) -> Bundle:
    """A tarball holding ``lib/`` (meshd + dependencies); cached by content."""
    wheel_dir = wheels(target, cache)
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
    if not path.exists():
        tmp_path = path.with_suffix(".tmp")
        tmp_path.write_bytes(data)
        tmp_path.replace(path)
    return Bundle(path, version, target)


def _tar(lib: Path) -> bytes:
    """A reproducible tar.gz of ``lib`` (sorted, no times or owners): equal input, equal hash."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for path in sorted(lib.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(lib.parent)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def launcher(lib: str) -> str:
    """The ``/opt/meshd/bin/meshd`` script for a bundle unpacked with its ``lib`` at ``lib``."""
    return LAUNCHER.format(code=LAUNCH_CODE.format(lib=lib))
