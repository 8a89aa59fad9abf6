"""One test host: seed its overlay, boot it, reach it, reboot, reset and stop it.

A host is a systemd-nspawn container with systemd as PID 1, started by a
small launcher script in its own cgroups and private mount namespace. The
harness reaches it two ways: over SSH with a pinned host key (as meshctl
would), and out of band with `nsenter` (to check what really happened).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import paramiko

from meshd.errors import ProvisionError

from . import keys, system
from .plan import HostSpec, is_container_init

HOST_KEY = "etc/ssh/ssh_host_ed25519_key"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_GRACE = 15.0
KILL_GRACE = 5.0


@dataclass(frozen=True)
class HostContext:
    """What a host needs from its testbed: image, bridge, keys and seed files."""

    image: Path
    bridge: str
    known_hosts: Path
    client_key: Path
    seed: dict[str, str]  # path in the host -> content, besides the host key


class TestbedHost:
    """A running (or stopped) test host; see the package docs for the API."""

    __test__ = False  # not a pytest test class

    def __init__(self, spec: HostSpec, state_dir: Path, ctx: HostContext) -> None:
        self.name = spec.name
        self.index = spec.index
        self.address = spec.address
        self.address6 = spec.address6  # its IPv6 address on the bridge
        self.dir = state_dir / f"h{spec.index}"
        self._ctx = ctx

    def __repr__(self) -> str:
        return f"TestbedHost({self.name!r}, {self.address!r})"

    @property
    def upper_dir(self) -> Path:
        return self.dir / "upper"

    @property
    def host_key(self) -> paramiko.PKey:
        return keys.public_from_line((self.dir / "ssh_host_ed25519_key.pub").read_text())

    # --- creation and boot -------------------------------------------------

    def create(self) -> None:
        """Make the host's dirs and host key (kept for resets), then seed its layer."""
        self.dir.mkdir(parents=True, exist_ok=True)
        keys.write_keypair(self.dir / "ssh_host_ed25519_key", f"root@{self.name}")
        self.seed()

    def seed(self) -> None:
        """(Re)create the upper layer with only the host's own files."""
        for sub in ("upper", "work"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        for sub in ("upper", "work", "merged"):
            (self.dir / sub).mkdir(exist_ok=True)
        up = self.upper_dir
        (up / "root/.ssh").mkdir(parents=True, mode=0o700)
        (up / "etc/ssh").mkdir(parents=True)
        for rel, text in self._ctx.seed.items():
            (up / rel).parent.mkdir(parents=True, exist_ok=True)
            (up / rel).write_text(text)
        (up / "root/.ssh/authorized_keys").chmod(0o600)
        shutil.copy(self.dir / "ssh_host_ed25519_key", up / HOST_KEY)
        shutil.copy(self.dir / "ssh_host_ed25519_key.pub", up / f"{HOST_KEY}.pub")
        (up / HOST_KEY).chmod(0o600)

    def launch(self, timeout: float = 10.0) -> None:
        """Start the launcher fully detached (``setsid --fork``): it outlives this process."""
        (self.dir / "stop").unlink(missing_ok=True)
        pidfile = self.dir / "launcher.pid"
        pidfile.unlink(missing_ok=True)
        cgroups = system.make_cgroups(self.name)
        # A copy in the state dir: it outlives any package upgrade, and `ps` shows
        # whose launcher it is.
        script = self.dir / "launcher.sh"
        script.write_text(resources.files("meshctl.testbed").joinpath("launcher.sh").read_text())
        argv = ["setsid", "--fork", "unshare", "--mount", "--propagation", "private", "sh"]
        with (self.dir / "nspawn.log").open("ab") as log:
            subprocess.run(
                [*argv, str(script)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._launcher_env(cgroups),
                check=True,
            )
        # The launcher writes its pid once it is in its cgroups: from then on the
        # cgroups tell whether the host runs.
        deadline = time.monotonic() + timeout
        while not pidfile.exists():
            if time.monotonic() > deadline:
                raise ProvisionError(
                    f"test host {self.name}: launcher did not start",
                    hint=f"see {self.dir / 'nspawn.log'}:\n{self.log_tail()}",
                )
            time.sleep(0.02)

    def _launcher_env(self, cgroups: list[Path]) -> dict[str, str]:
        d = self.dir
        return {
            "PATH": PATH_ENV,
            "LANG": "C.UTF-8",
            "TB_CGROUPS": " ".join(str(c) for c in cgroups),
            "TB_LOWER": str(self._ctx.image),
            "TB_UPPER": str(d / "upper"),
            "TB_WORK": str(d / "work"),
            "TB_MERGED": str(d / "merged"),
            "TB_MACHINE": self.name,
            "TB_BRIDGE": self._ctx.bridge,
            "TB_STOP": str(d / "stop"),
            "TB_PIDFILE": str(d / "launcher.pid"),
            "TB_NSPAWN_PIDFILE": str(d / "nspawn.pid"),
        }

    def wait_ready(self, timeout: float = 90.0, degraded_ok: bool = False) -> None:
        """Wait until SSH answers with the pinned key and systemd says `running`.

        ``degraded_ok``: a failed unit is what the caller expects (it broke one).
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self._system_state()
            if state == "running" or (state == "degraded" and degraded_ok):
                return
            if state == "degraded":
                _, failed, _ = self.run("systemctl --failed --plain --no-legend", timeout=10)
                raise ProvisionError(
                    f"test host {self.name} booted degraded; failed units:\n{failed.strip()}",
                    hint=f"see journalctl inside the host, or {self.dir / 'nspawn.log'}",
                )
            self._check_alive(deadline)
            time.sleep(0.2)

    def _system_state(self) -> str | None:
        if not tcp_open(self.address, 22, timeout=0.5):
            return None
        try:
            _, out, _ = self.run("systemctl is-system-running --wait", timeout=60)
        except (OSError, paramiko.SSHException, EOFError):
            return None
        return out.strip()

    def _check_alive(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise ProvisionError(
                f"test host {self.name} ({self.address}) not ready in time",
                hint=f"see {self.dir / 'nspawn.log'}:\n{self.log_tail()}",
            )
        if not system.cgroup_pids(self.name):
            raise ProvisionError(
                f"test host {self.name} exited while booting",
                hint=f"see {self.dir / 'nspawn.log'}:\n{self.log_tail()}",
            )

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.dir / "nspawn.log").read_text().splitlines()[-lines:])
        return ""

    # --- access ------------------------------------------------------------

    def ssh(self, user: str = "root", timeout: float = 10.0) -> paramiko.SSHClient:
        """An SSH client connected with the testbed key, refusing any unpinned host key."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self._ctx.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.address,
                username=user,
                pkey=keys.load_private(self._ctx.client_key),
                allow_agent=False,
                look_for_keys=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        return client

    def run(self, cmd: str, timeout: float = 60) -> tuple[int, str, str]:
        """Run a shell command over SSH: (exit status, stdout, stderr)."""
        with self.ssh(timeout=min(timeout, 10.0)) as client:
            _, stdout, stderr = client.exec_command(cmd, timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            return stdout.channel.recv_exit_status(), out, err

    def init_pid(self) -> int:
        """The PID, in the root pid namespace, of the host's systemd."""
        pid = self._find_init()
        if pid is None:
            raise ProvisionError(f"test host {self.name} is not running", hint="call reset()")
        return pid

    def _find_init(self) -> int | None:
        inits = [p for p in system.cgroup_pids(self.name) if is_container_init(system.nspid(p))]
        return min(inits, key=lambda p: system.proc_start(p) or 0) if inits else None

    def exec(
        self, argv: list[str] | str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host out of band (`nsenter`, no SSH)."""
        cmd = ["sh", "-c", argv] if isinstance(argv, str) else argv
        full = ["nsenter", "-t", str(self.init_pid()), "-a", "--", *cmd]
        result = subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": PATH_ENV, "LANG": "C.UTF-8"},
        )
        if check and result.returncode != 0:
            raise ProvisionError(
                f"on {self.name}: `{' '.join(cmd)}` failed (exit {result.returncode}): "
                f"{result.stderr.strip()}"
            )
        return result

    # --- lifecycle ---------------------------------------------------------

    def reboot(self, timeout: float = 90.0, degraded_ok: bool = False) -> None:
        """`systemctl reboot` inside the host, then wait until it is ready again."""
        old = self.init_pid()
        self.exec(["systemctl", "reboot"], check=False)
        deadline = time.monotonic() + timeout
        while self._find_init() in (None, old):
            if time.monotonic() > deadline:
                raise ProvisionError(f"test host {self.name} did not come back from reboot")
            time.sleep(0.1)
        self.wait_ready(max(deadline - time.monotonic(), 5.0), degraded_ok)

    def reset(self, timeout: float = 90.0) -> None:
        """Stop, wipe the host's layer back to its seeded state, boot, wait ready."""
        self.stop()
        leftover = system.mounts_mentioning(str(self.upper_dir))
        if leftover:
            raise ProvisionError(f"{self.name}: still mounted: {leftover}")
        self.seed()
        self.launch()
        self.wait_ready(timeout)

    def stop(self) -> list[str]:
        """Power the host off (kill it if it will not go); returns what was left behind."""
        with contextlib.suppress(OSError):  # the state dir may already be gone
            (self.dir / "stop").touch()
        nspawn = self._nspawn_pid()
        if nspawn is not None:
            system.send_signal(nspawn, signal.SIGTERM)
        if not _wait_empty(self.name, STOP_GRACE if nspawn else 0.5):
            self._force_stop()
        return self._remove_cgroups()

    def _nspawn_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.dir / "nspawn.pid").read_text())
            if pid in system.cgroup_pids(self.name):
                return pid
        return None

    def _force_stop(self) -> None:
        """nspawn is gone or hung: ask the host's systemd to power off, then kill by PID."""
        init = self._find_init()
        if init is not None:
            system.send_signal(init, signal.SIGRTMIN + 4)
            if _wait_empty(self.name, KILL_GRACE):
                return
        for _ in range(50):
            pids = system.cgroup_pids(self.name)
            if not pids:
                return
            system.kill_all(pids)
            time.sleep(0.1)

    def _remove_cgroups(self) -> list[str]:
        failed: list[str] = []
        for _ in range(20):
            failed = system.remove_cgroups(self.name)
            if not failed:
                break
            time.sleep(0.1)
        return failed


def _wait_empty(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while system.cgroup_pids(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def tcp_open(address: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connect to a test host succeeds (used for quick probes)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
