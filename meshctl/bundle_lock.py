"""The pinned, hash-checked dependencies of the meshd bundle (``bundle.lock``).

Hosts run whatever wheels meshctl uploads, as root, so those wheels are
pinned: ``bundle.lock`` names every package with its version and the sha256
of each wheel for the supported targets (the Pythons of the supported OS
releases, on x86_64 and aarch64). pip downloads with ``--require-hashes``
against it, and cached wheels are checked against it again before a bundle
is built. Maintainers refresh it with ``python -m meshctl.bundle_lock``.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from meshd.errors import ProvisionError

LOCK = Path(__file__).with_name("bundle.lock")
# what meshd imports at run time; pip resolves what these need in turn (when locking)
RUNTIME_REQUIREMENTS = (
    "anyio>=4.3",
    "cryptography>=42",
    "psutil>=5.9",
    "uvloop>=0.19",
    "httptools>=0.6",
)
MANYLINUX = ("manylinux_2_28", "manylinux_2_17", "manylinux2014")
LOCKED_TARGETS = tuple(
    (python, machine) for python in ("3.11", "3.12", "3.13") for machine in ("x86_64", "aarch64")
)
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def download_command(python: str, machine: str, dest: Path, pip: str | None = None) -> list[str]:
    """pip download of binary wheels for a CPython ``python`` on ``machine`` into ``dest``."""
    command = [pip or sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
    command += ["--dest", str(dest), "--python-version", python, "--implementation", "cp"]
    for abi in (f"cp{python.replace('.', '')}", "abi3", "none"):
        command += ["--abi", abi]
    for platform in MANYLINUX:
        command += ["--platform", f"{platform}_{machine}"]
    return command


def allowed_hashes(lock_text: str) -> set[str]:
    return set(_HASH.findall(lock_text))


def pins(lock_text: str) -> dict[str, str]:
    """Package -> version, from the lock."""
    return {m.group(1).lower(): m.group(2) for m in map(_PIN.match, lock_text.splitlines()) if m}


def check_wheels(directory: Path, lock_text: str) -> None:
    """Every wheel in ``directory`` must be one the lock names (by sha256)."""
    allowed = allowed_hashes(lock_text)
    for wheel in sorted(directory.glob("*.whl")):
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest not in allowed:
            raise ProvisionError(
                f"{wheel} is not one of the wheels pinned in {LOCK.name} (sha256 {digest[:16]}...)",
                hint=f"remove {directory} to fetch the pinned wheels again",
            )


def render(wheels_by_package: dict[tuple[str, str], set[str]]) -> str:
    """The lock file's text: one pinned requirement per package with all its wheels' hashes."""
    lines = [
        "# meshd's run-time dependencies for the offline bundle: every version pinned, every",
        "# wheel's sha256 listed (CPython 3.11-3.13 on x86_64 and aarch64). pip installs",
        "# nothing else. Regenerate: python -m meshctl.bundle_lock",
    ]
    for (name, version), hashes in sorted(wheels_by_package.items()):
        lines.append(f"{name}=={version} \\")
        ordered = sorted(hashes)
        lines += [
            f"    --hash=sha256:{h}" + (" \\" if i < len(ordered) - 1 else "")
            for i, h in enumerate(ordered)
        ]
    return "\n".join(lines) + "\n"


def _wheel_name(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.lower().replace("_", "-"), version


def generate() -> str:
    """Resolve and download for every locked target; the lock text of what came back."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    with tempfile.TemporaryDirectory(prefix="meshd-lock-") as tmp:
        for python, machine in LOCKED_TARGETS:
            dest = Path(tmp) / f"{python}-{machine}"
            command = [*download_command(python, machine, dest), *RUNTIME_REQUIREMENTS]
            subprocess.run(command, check=True)
            for wheel in dest.glob("*.whl"):
                found[_wheel_name(wheel)].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
    versions: dict[str, set[str]] = defaultdict(set)
    for name, version in found:
        versions[name].add(version)
    split = {name: v for name, v in versions.items() if len(v) > 1}
    if split:
        raise SystemExit(f"targets resolved different versions: {split}; pin them by hand")
    return render(found)


if __name__ == "__main__":
    LOCK.write_text(generate())
    print(f"wrote {LOCK}")
