"""Many real meshd processes on 127.0.0.x, joined hosts of one workspace, for ``meshctl top``.

``meshd_fleet`` makes a workspace (``topmesh.top_mesh``: its CA, inventory and
join records), issues each host its certificate from that CA and starts one
``meshd run`` per host, its admin API on the host's own loopback address at
the workspace's admin port, so ``meshctl top`` reaches them exactly as it
reaches joined hosts. The first hosts serve ``web``, ``api`` and ``db``
(the harness's HttpApp), the next three each have an upstream listener for
one of them, the rest are idle. The processes start concurrently (servers and
idle hosts at once, the clients as soon as the registry can name the
servers' mesh ports): a meshd takes about a second of CPU to start.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.meshctl.topmesh import TopMesh, top_mesh
from tests.meshd.harness import HttpApp, Meshd, MeshNet

SERVICES = ("web", "api", "db")
START_TIMEOUT = 90.0  # many meshd starting at once on two busy cores


@dataclass
class Fleet:
    mesh: TopMesh
    meshds: dict[str, Meshd]  # by host name, in the inventory's order
    upstreams: dict[str, int]  # service -> the local port of a client host's upstream for it
    clients: dict[str, str]  # service -> the host whose upstream that is
    servers: dict[str, str]  # service -> the host serving it


def addresses(count: int, first: int) -> dict[str, str]:
    """Host h01.. -> 127.0.0.``first``.. (``first + count`` must stay below 255)."""
    return {f"h{i:02}": f"127.0.0.{first + i - 1}" for i in range(1, count + 1)}


@contextmanager
def meshd_fleet(root: Path, count: int = 30, first: int = 201) -> Iterator[Fleet]:
    """``count`` (>= 6) meshd on 127.0.0.``first``..; all stopped (by PID) at the end."""
    hosts = addresses(count, first)
    mesh = top_mesh(root, hosts)
    (root / "net").mkdir()
    net = MeshNet(root / "net", pki=mesh.pki)
    names = list(hosts)
    servers = dict(zip(SERVICES, names[:3], strict=True))
    clients = dict(zip(SERVICES, names[3:6], strict=True))
    apps = {service: HttpApp(service) for service in SERVICES}

    def launch(
        name: str, services: dict[str, int] | None = None, upstreams: dict[str, int] | None = None
    ) -> Meshd:
        admin = f"{hosts[name]}:{mesh.port}"
        return net.start(name, services=services, upstreams=upstreams, admin=admin, wait=False)

    try:
        serving = {s: launch(h, services={s: apps[s].port}) for s, h in servers.items()}
        idle = [launch(name) for name in names[6:]]  # they need no registry: start them now
        for service, meshd in serving.items():
            meshd.wait_ready(START_TIMEOUT)
            net.add_service(service, apps[service].port, meshd.name, meshd.ports["mesh"])
        calling = {s: launch(h, upstreams={s: 0}) for s, h in clients.items()}
        for meshd in [*calling.values(), *idle]:
            meshd.wait_ready(START_TIMEOUT)
        meshds = {m.name: m for m in [*serving.values(), *calling.values(), *idle]}
        upstreams = {s: m.ports[f"upstream:{s}"] for s, m in calling.items()}
        yield Fleet(mesh, {n: meshds[n] for n in names}, upstreams, clients, servers)
    finally:
        stop(net.procs)
        for app in apps.values():
            app.close()


def stop(meshds: list[Meshd]) -> None:
    """SIGTERM to every one still running, then wait for each (SIGKILL after 15 s)."""
    running = [m for m in meshds if m.proc.poll() is None]
    for meshd in running:
        meshd.proc.send_signal(signal.SIGTERM)
    for meshd in running:
        try:
            meshd.proc.wait(15)
        except subprocess.TimeoutExpired:
            meshd.proc.kill()
            meshd.proc.wait()


def rss_mib(meshds: list[Meshd]) -> list[float]:
    """Each running meshd's resident memory (MiB)."""
    return [m.rss_kib() / 1024 for m in meshds if m.proc.poll() is None]
