"""One way to reach a host: run a command, put a file, get a file.

``SshTransport`` (paramiko) pins host keys in the workspace's known_hosts:
an unknown key is refused unless the operator accepts it (its fingerprint is
shown), a changed key is always refused with the command that forgets the
old one. ``LocalTransport`` runs on this machine, ``FakeTransport`` replays a
script for unit tests. paramiko's and socket errors become ConnectError here
and nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paramiko

from meshctl.files import write_atomic
from meshd.errors import ConnectError, ProvisionError


class UnreachableError(ConnectError):
    """Nothing answered at the host's SSH address (as opposed to a refused key or login)."""


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


class Transport(Protocol):
    """What provisioning needs from a connection to a host."""

    @property
    def name(self) -> str: ...

    def run(self, command: str, *, timeout: float = 120, root: bool = True) -> Result: ...
    def put(self, path: str, data: bytes, mode: int = 0o644) -> None: ...
    def get(self, path: str) -> bytes | None: ...
    def close(self) -> None: ...


def check(result: Result, what: str, host: str) -> Result:
    """``result`` if it succeeded, else a ProvisionError naming the host and the step."""
    if not result.ok:
        raise ProvisionError(f"{host}: {what} failed: {failure_detail(result)}")
    return result


def failure_detail(result: Result) -> str:
    """The useful end of a failed command's output (not iptables' "Try ... -h" line)."""
    lines = [line.strip() for line in (result.stderr or result.stdout).splitlines()]
    useful = [line for line in lines if line and not line.startswith("Try `")][-3:]
    return " / ".join(useful) or f"exit {result.status}"


@dataclass(frozen=True)
class Target:
    """Where to connect: ``[user@]host[:port]``."""

    host: str
    user: str = "root"
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> Target:
        user, _, rest = text.rpartition("@")
        host, _, port = rest.partition(":")
        if not host or (port and not port.isdigit()):
            raise ConnectError(f"{text!r} is not [USER@]HOST[:PORT]")
        return cls(host, user or "root", int(port) if port else 22)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_host_name(target: Target) -> str:
    return target.host if target.port == 22 else f"[{target.host}]:{target.port}"


_KNOWN_HOSTS_LOCK = threading.Lock()


class _Pinning(paramiko.MissingHostKeyPolicy):
    """Unknown keys: remember (when accepted) or refuse with the fingerprint to check."""

    def __init__(self, known_hosts: Path, accept_new: bool, remember: bool = True) -> None:
        self.known_hosts = known_hosts
        self.accept_new = accept_new
        self.remember = remember  # False for dry runs: accept for this connection only

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if not self.accept_new:
            raise ConnectError(
                f"unknown host key for {hostname}: {key.get_name()} {fingerprint(key)}",
                hint="compare it with ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub on the host, "
                "then run again with --accept-new-host-key",
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.remember:
            pin(self.known_hosts, hostname, key)


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    """The pinned keys (under the lock: another thread may be saving them)."""
    keys = paramiko.HostKeys()
    with _KNOWN_HOSTS_LOCK:
        if path.exists():
            keys.load(str(path))
    return keys


def pin(path: Path, hostname: str, key: paramiko.PKey) -> None:
    """Add a host key to known_hosts: merged with what other threads saved, written atomically."""
    with _KNOWN_HOSTS_LOCK:
        keys = paramiko.HostKeys()
        if path.exists():
            keys.load(str(path))
        keys.add(hostname, key.get_name(), key)
        save_known_hosts(path, keys)


def save_known_hosts(path: Path, keys: paramiko.HostKeys) -> None:
    """Write ``keys`` to ``path`` as paramiko formats them: whole, 0600, never through a link.

    paramiko's save() opens the name it is given with a plain open(), which
    follows a link planted there: it writes into a fresh private directory
    instead, and meshctl.files puts the result in place.
    """
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as private:
        staged = Path(private) / path.name
        keys.save(str(staged))
        data = staged.read_bytes()
    write_atomic(path, data, 0o600)


@dataclass
class SshTransport:
    """A paramiko connection to one host with a pinned host key."""

    target: Target
    known_hosts: Path
    key_file: Path | None = None
    accept_new: bool = False
    use_sudo: bool = False
    timeout: float = 10.0
    remember_new: bool = True  # save an accepted new host key into known_hosts
    client: paramiko.SSHClient = field(init=False)

    @property
    def name(self) -> str:
        return self.target.host

    def __post_init__(self) -> None:
        self.client = paramiko.SSHClient()
        known = self.client.get_host_keys()
        for hostname, entry in load_known_hosts(self.known_hosts).items():
            for kind, key in entry.items():
                known.add(hostname, kind, key)
        self.client.set_missing_host_key_policy(
            _Pinning(self.known_hosts, self.accept_new, self.remember_new)
        )
        self._connect()

    def _connect(self) -> None:
        t = self.target
        try:
            self.client.connect(
                t.host,
                port=t.port,
                username=t.user,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                key_filename=str(self.key_file) if self.key_file else None,
                allow_agent=self.key_file is None,
                look_for_keys=self.key_file is None,
            )
        except paramiko.BadHostKeyException as e:
            raise ConnectError(
                f"host key of {t.host} changed: it now offers {fingerprint(e.key)}",
                hint=f"if that is expected (the host was reinstalled), run: "
                f"meshctl hosts forget {known_host_name(t)}",
            ) from e
        except paramiko.AuthenticationException as e:
            raise ConnectError(
                f"{t.user}@{t.host}: authentication failed",
                hint="pass -i KEYFILE or load the key into ssh-agent",
            ) from e
        except TimeoutError as e:
            raise UnreachableError(
                f"{t.host}:{t.port}: no answer within {self.timeout:g}s",
                hint="is the host up and the SSH port open?",
            ) from e
        except OSError as e:
            raise UnreachableError(
                f"{t.host}:{t.port}: cannot connect: {e}",
                hint="is the host up and the SSH port open?",
            ) from e
        except paramiko.SSHException as e:
            raise ConnectError(
                f"{t.host}:{t.port}: cannot connect: {e}",
                hint="is the host up and the SSH port open?",
            ) from e

    def run(self, command: str, *, timeout: float = 120, root: bool = True) -> Result:
        """Run ``command``; as root (through ``sudo -n`` for other users) unless ``root=False``."""
        if root and self.target.user != "root":
            if not self.use_sudo:
                raise ProvisionError(
                    f"{self.target.host}: this needs root, and {self.target.user} is not root",
                    hint="pass --sudo (passwordless sudo) or connect as root@HOST",
                )
            command = f"sudo -n sh -c {shlex.quote(command)}"
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            channel = stdout.channel
            out, err = stdout.read(), stderr.read()  # read first: a full pipe would block the exit
            finished = channel.status_event.wait(timeout)
        except TimeoutError as e:
            raise self._stalled(command, timeout) from e
        except (OSError, paramiko.SSHException) as e:
            raise ConnectError(
                f"{self.target.host}: lost the SSH connection: {e or type(e).__name__}"
            ) from e
        if not finished:
            raise self._stalled(command, timeout)
        return Result(
            channel.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
        )

    def _stalled(self, command: str, timeout: float) -> ConnectError:
        return ConnectError(
            f"{self.target.host}: no answer from the host within {timeout:g}s "
            f"(running: {command[:60]!r})",
            hint="the host may be overloaded or the connection stalled; run again",
        )

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``path`` atomically (temp file + rename) with ``mode``."""
        tmp = f"{path}.meshctl-tmp"
        try:
            with self.client.open_sftp() as sftp:
                with sftp.open(tmp, "wb") as f:
                    f.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)
        except (OSError, paramiko.SSHException) as e:
            raise ProvisionError(f"{self.target.host}: cannot write {path}: {e}") from e

    def get(self, path: str) -> bytes | None:
        try:
            with self.client.open_sftp() as sftp, sftp.open(path, "rb") as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None
        except (OSError, paramiko.SSHException) as e:
            raise ProvisionError(f"{self.target.host}: cannot read {path}: {e}") from e

    def close(self) -> None:
        self.client.close()


@dataclass
class LocalTransport:
    """This machine, for local operations and tests."""

    name: str = "localhost"

    def run(self, command: str, *, timeout: float = 120, root: bool = True) -> Result:
        done = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        write_atomic(Path(path), data, mode)

    def get(self, path: str) -> bytes | None:
        target = Path(path)
        return target.read_bytes() if target.exists() else None

    def close(self) -> None:
        pass


@dataclass
class FakeTransport:
    """A scripted host for unit tests: commands map to results; files live in a dict."""

    name: str = "fake"
    responses: dict[str, Result] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def run(self, command: str, *, timeout: float = 120, root: bool = True) -> Result:
        self.commands.append(command)
        return self.responses.get(command, Result(127, "", f"fake: no response for {command!r}"))

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.files[path] = data

    def get(self, path: str) -> bytes | None:
        return self.files.get(path)

    def close(self) -> None:
        pass
