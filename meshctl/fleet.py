"""A session over many hosts, and the parallel fan-out every multi-host command runs on.

``Fleet`` is what a multi-host command needs from the outside world: the
workspace, how to reach a host over SSH (``connect``) and over meshd's admin
API (``connect_admin``), where to report progress, and the clock. Tests hand
in a scripted transport and a scripted admin client through the same fields.

Work on many hosts is one call per host in a thread pool (SSH and the admin
API wait on the network, not the CPU). ``fan_out`` returns a map host ->
result or the error it ended in: one host's failure never stops the others,
and the command renders one table and exits non-zero on partial failure
(fabric's groups)::

    client = fleet.admin()
    stats = fan_out(lambda host: client.stats(fleet.endpoint(host)), hosts)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.inventory import HostSpec
from meshctl.transport import SshTransport, Target, Transport
from meshctl.workspace import Workspace
from meshd.errors import MeshError, ProvisionError

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[str, str], None]  # host, what is happening
MAX_PARALLEL = 16
HostResults = dict[HostSpec, R | MeshError]  # multi-host work: host -> result or error


@dataclass(frozen=True)
class SshOptions:
    key_file: Path | None = None
    sudo: bool = False
    accept_new_host_key: bool = False
    timeout: float = 10.0
    remember_new_host_keys: bool = True  # False for --dry-run: it changes nothing


Connector = Callable[[Workspace, HostSpec, SshOptions], Transport]
AdminConnector = Callable[[Workspace, float], AdminClient]  # workspace, timeout


def ssh_connect(ws: Workspace, host: HostSpec, options: SshOptions) -> Transport:
    """An SSH connection to ``host``, its host key checked against the workspace's pins."""
    default_key = ws.config.defaults.ssh_key
    return SshTransport(
        Target(host.address, host.user, host.port),
        ws.root / "known_hosts",
        key_file=options.key_file or (Path(default_key) if default_key else None),
        accept_new=options.accept_new_host_key,
        use_sudo=options.sudo,
        timeout=options.timeout,
        remember_new=options.remember_new_host_keys,
    )


@dataclass
class Fleet:
    """A session over the hosts of one workspace: how to reach them, report and tell time."""

    ws: Workspace
    ssh: SshOptions
    connect: Connector = ssh_connect
    connect_admin: AdminConnector = AdminClient.for_workspace
    progress: Progress = lambda host, what: None
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    admin_timeout: float = 5.0
    sync_wait: float = 15.0  # seconds a pushed registry may take to reach a host's rules and names

    def transport(self, host: HostSpec) -> Transport:
        """A new SSH connection to ``host`` (the caller closes it)."""
        return self.connect(self.ws, host, self.ssh)

    def admin(self) -> AdminClient:
        """A client of meshd's admin API, as this workspace's operator."""
        return self.connect_admin(self.ws, self.admin_timeout)

    def endpoint(self, host: HostSpec) -> AdminEndpoint:
        return AdminEndpoint(host.name, host.address, self.ws.config.defaults.admin_port)


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` in threads, results in input order (an exception propagates)."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(fn, items))


def attempt(host: str, fn: Callable[[], R]) -> R | MeshError:
    """``fn()``, or the error it ended in: one host's failure stays that host's."""
    try:
        return fn()
    except MeshError as e:
        return e
    except Exception as e:  # a bug or an unexpected answer: still one host's failure
        return ProvisionError(f"{host}: {type(e).__name__}: {e}")


def fan_out(fn: Callable[[HostSpec], R], hosts: Iterable[HostSpec]) -> HostResults[R]:
    """``fn`` on every host in parallel: host -> its result or its error, in input order."""
    hosts = list(hosts)
    results = parallel(lambda h: attempt(h.name or h.address, lambda: fn(h)), hosts)
    return dict(zip(hosts, results, strict=True))
