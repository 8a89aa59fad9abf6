"""The source identity a host's connections claim, seen from the far side (real meshd, netns).

POLICY.md (identity on hosts): the run_as service, else the host's single
service, else the host. Hosts A and B run in a network namespace of their own,
where an iptables nat rule sends A's connections to the service's VIP to A's
general outbound listener (what ``meshd rules apply`` does on a host), so the
listener that meshctl's hosts use is the one under test; A's upstream listener
claims the same. B counts each connection by the source its peer claimed and its
certificate held (``meshd_connections_total{source}``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.meshd.harness import MESHD, EchoServer, MeshNet
from tests.poll import until

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
VIP, APP_PORT, UPSTREAM_PORT = "10.255.0.1", 8080, 16001  # the namespace is ours: fixed ports


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("needs root and iptables")
    name = f"mdsrc{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        _ip(name, "ip", "link", "set", "lo", "up")
        _ip(name, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ip(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True)


def inside(ns: str, work: Callable[[], T]) -> T:
    """``work()`` run in a thread that joined ``ns`` (sockets it makes stay there)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            result.append(work())
        except BaseException as e:  # handed to the caller's thread
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return result[0]


def echo_once(port: int, host: str = "127.0.0.1") -> bytes:
    """What the echo app sent back; b"" when the connection was closed or reset instead."""
    with socket.create_connection((host, port), timeout=5) as s:
        try:
            s.sendall(b"who am i")
            s.shutdown(socket.SHUT_WR)
            return s.recv(100)
        except ConnectionResetError:
            return b""


@pytest.mark.parametrize(
    ("services_a", "claimed"),
    [({"cli": 7000}, "svc/cli"), ({}, "host/a"), ({"cli": 7000, "batch": 7001}, "host/a")],
    ids=["one-service", "no-service", "two-services"],
)
def test_a_host_with_one_service_claims_it(
    net: MeshNet, netns: str, services_a: dict[str, int], claimed: str
) -> None:
    app = inside(netns, lambda: _Echo(APP_PORT))
    try:
        command = ("ip", "netns", "exec", netns, MESHD)
        b = net.start("b", services={"web": APP_PORT}, command=command)
        net.add_service("web", APP_PORT, "b", b.ports["mesh"], vip=VIP)
        a = net.start("a", services=services_a, upstreams={"web": UPSTREAM_PORT}, command=command)
        redirect = f"{VIP} --dport {APP_PORT} -j REDIRECT --to-ports {a.ports['outbound']}"
        _ip(netns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", *redirect.split())
        assert inside(netns, lambda: echo_once(APP_PORT, VIP)) == b"who am i"  # redirected
        assert inside(netns, lambda: echo_once(UPSTREAM_PORT)) == b"who am i"  # upstream
        source = f"spiffe://{net.pki.trust_domain}/{claimed}"

        def counted() -> float:
            return inside(
                netns,
                lambda: net.metric_sum(
                    b, "meshd_connections_total", direction="inbound", source=source
                ),
            )

        until(lambda: counted() >= 2, timeout=10, what=f"two connections from {source} counted")
        assert inside(netns, lambda: net.metric_sum(b, "meshd_connections_total")) == counted()
    finally:
        net.stop_all()
        app.close()


def test_a_source_the_certificate_does_not_hold_is_refused(net: MeshNet, netns: str) -> None:
    """The far side still checks the claim: A claims svc/cli with a leaf of host/a only."""
    app = inside(netns, lambda: _Echo(APP_PORT))
    try:
        command = ("ip", "netns", "exec", netns, MESHD)
        b = net.start("b", services={"web": APP_PORT}, command=command)
        net.add_service("web", APP_PORT, "b", b.ports["mesh"], vip=VIP)
        bare = net.pki.issue("a", "host/a")
        net.start(
            "a",
            services={"cli": 7000},
            upstreams={"web": UPSTREAM_PORT},
            identity=bare,
            command=command,
        )
        assert inside(netns, lambda: echo_once(UPSTREAM_PORT)) == b""
        b.wait_log(r"refused stream from .*: peer does not hold spiffe://\S+/svc/cli")
        refused = inside(
            netns,
            lambda: net.metric(
                b, "meshd_connections_refused_total", reason="source_not_in_certificate"
            ),
        )
        assert refused == 1 and app.received == []
    finally:
        net.stop_all()
        app.close()


class _Echo(EchoServer):
    """The harness's echo app on a fixed port (in the namespace, where it is free)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = port
        self.received: list[bytes] = []
        self.peers: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
