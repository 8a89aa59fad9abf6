"""The base image every test host boots from: debootstrap once per machine, cached.

The image is built in a temporary directory next to the cache and renamed into
place, under an fcntl lock, so concurrent runs build it once and never see a
half-built tree. Bump `IMAGE_VERSION` when the package list or the
post-processing changes: the cache name carries it, so the next run rebuilds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from meshctl.files import locked
from meshd.errors import ProvisionError

from .plan import parse_apt_mirror

SUITE = "bookworm"
IMAGE_VERSION = "v1"
PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,iproute2,iptables,nftables,"
    "python3,procps,iputils-ping,sudo,tcpdump"
)
DEFAULT_IMAGE = Path(f"/var/cache/meshctl/testbed/image-{SUITE}-{IMAGE_VERSION}")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
READY_MARK = ".meshctl-image-ready"

Progress = Callable[[str], None]


def image_path() -> Path:
    """Where the image lives: `MESHCTL_TESTBED_IMAGE` or the default cache dir."""
    return Path(os.environ.get("MESHCTL_TESTBED_IMAGE", str(DEFAULT_IMAGE)))


def find_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt sources already use for bookworm."""
    files = [apt_dir / "sources.list"]
    listdir = apt_dir / "sources.list.d"
    if listdir.is_dir():
        files += sorted(listdir.glob("*.list")) + sorted(listdir.glob("*.sources"))
    sources = [(f.name, f.read_text()) for f in files if f.is_file()]
    return parse_apt_mirror(sources, SUITE) or FALLBACK_MIRROR


def build_image(progress: Progress = print, path: Path | None = None) -> Path:
    """Return the cached image, building it first if needed (~1.5 min)."""
    target = path or image_path()
    if (target / READY_MARK).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.with_name(target.name + ".lock")):
        if (target / READY_MARK).exists():
            return target
        _require_tools("debootstrap", "chroot")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _debootstrap(tmp, find_mirror(), progress)
            _post_process(tmp, progress)
            (tmp / READY_MARK).write_text(f"{SUITE} {IMAGE_VERSION}\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    progress(f"testbed image ready: {target}")
    return target


def _require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise ProvisionError(
            f"cannot build the testbed image: {', '.join(missing)} not found",
            hint="apt-get install debootstrap systemd-container",
        )


def _debootstrap(root: Path, mirror: str, progress: Progress) -> None:
    progress(f"building testbed image with debootstrap from {mirror} (~1.5 min, once)")
    argv = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}"]
    argv += [SUITE, str(root), mirror]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            tail = [*tail[-19:], line.rstrip()]
            if line.startswith(("I: Retrieving Release", "I: Installing", "I: Configuring")):
                progress("debootstrap: " + line[3:].strip())
    if proc.returncode != 0:
        raise ProvisionError(
            f"debootstrap failed (exit {proc.returncode}):\n" + "\n".join(tail),
            hint=f"check that {mirror} is reachable and the disk has ~300 MB free",
        )


def _post_process(root: Path, progress: Progress) -> None:
    """Make the tree bootable as many distinct hosts (each with its own keys and machine id)."""
    progress("post-processing testbed image")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    timers = [p.name for p in (root / "lib/systemd/system").glob("*.timer")]
    _chroot(root, ["systemctl", "mask", "systemd-timesyncd.service", *timers])
    _chroot(root, ["systemctl", "enable", "systemd-networkd.service"])
    _chroot(root, ["systemctl", "enable", "systemd-networkd-wait-online.service"])
    _chroot(root, ["systemctl", "enable", "ssh.service"])
    _chroot(root, ["apt-get", "clean"])


def _chroot(root: Path, argv: list[str]) -> None:
    result = subprocess.run(
        ["chroot", str(root), *argv], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ProvisionError(
            f"preparing the testbed image failed: {' '.join(argv)}: {result.stderr.strip()}",
            hint=f"remove {root} and retry",
        )
