"""meshd on real hosts: intercepted traffic crosses the bridge only as mTLS, IPv4 and IPv6.

Host 1 runs a client, host 2 runs an HTTP app on [::]:8080 and an echo app;
both run meshd (set up by hand as the meshd user, with ``meshd rules apply``'s
iptables and ip6tables rules; ``meshctl join`` is tested in
tests/meshctl/provision). Host 3 is outside the mesh. Every capture covers the
bridge's IPv4 and IPv6 subnets.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshctl.bundle import Target, build
from meshctl.testbed import Testbed, TestbedHost
from meshd.identity import make_id
from tests import wire
from tests.meshd import onhost
from tests.meshd.harness import admin_call, client_context
from tests.meshd.onhost import ADMIN_PORT, App, ok
from tests.meshd.tlsfixtures import TestPki
from tests.poll import until

pytestmark = pytest.mark.testbed

WEB, ECHO = App("web", 8080), App("echo", 9000)
CLI = App("cli", 7000, outbound=15101)  # a client service on host 1, run as user "cli"
WEB_VIP, ECHO_VIP = "10.255.0.10", "10.255.0.11"


@dataclass
class Mesh:
    tb: Testbed
    pki: TestPki
    client: TestbedHost
    server: TestbedHost
    outsider: TestbedHost

    operator: ssl.SSLContext

    def admin(
        self, host: TestbedHost, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, str]:
        return admin_call((host.address, ADMIN_PORT), self.operator, method, path, body)

    def metric(self, host: TestbedHost, name: str, **labels: str) -> float:
        status, text = self.admin(host, "GET", "/metrics")
        assert status == 200, text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def mesh(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    client, server, outsider = testbed.hosts[:3]
    pki = TestPki(tmp_path_factory.mktemp("pki"), trust_domain="e2e.mesh")
    target = Target(
        *ok(
            client,
            'python3 -c \'import platform, sys; print("%d.%d" % sys.version_info[:2], '
            "platform.machine())'",
        ).split()
    )
    bundle = build(target)
    registry = onhost.registry(
        {"web": (WEB_VIP, WEB.port, server), "echo": (ECHO_VIP, ECHO.port, server)}
    )
    try:
        ok(client, "useradd --system --no-create-home cli")
        for host, apps in ((client, [CLI]), (server, [WEB, ECHO])):
            onhost.install(host, bundle)
            ids = [make_id(pki.trust_domain, "host", host.name)]
            ids += [make_id(pki.trust_domain, "svc", a.name) for a in apps]
            onhost.enroll(host, pki, ids)
            onhost.configure(host, onhost.config_text(host, pki.trust_domain, apps), registry)
        onhost.run_app(server, "e2e-web", onhost.HTTP_APP, str(WEB.port), "web")
        onhost.run_app(server, "e2e-echo", onhost.ECHO_APP, str(ECHO.port))
        for host in (client, server):
            onhost.start(host)
            onhost.apply_rules(host)
        operator = client_context(pki.issue("operator", "operator/ops"))
        yield Mesh(testbed, pki, client, server, outsider, operator)
    finally:
        onhost.reset((client, server, outsider))


@pytest.fixture
def capture(mesh: Mesh, tmp_path: Path) -> Iterator[Path]:
    """Everything between the test hosts while the test runs."""
    with wire.capture(mesh.tb.subnets, tmp_path / "bridge.pcap") as pcap:
        yield pcap


def _python(host: TestbedHost, code: str) -> str:
    return ok(host, f"python3 -c {code!r}").strip()


def test_http_and_tcp_cross_the_bridge_only_encrypted(mesh: Mesh, capture: Path) -> None:
    marker = f"MARKER-{secrets.token_hex(12)}"
    control = f"CONTROL-{secrets.token_hex(12)}"
    # a plaintext control packet: proves the capture sees payload bytes
    _python(
        mesh.client,
        f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
        f".sendto(b'{control}', ('{mesh.server.address}', 9999))",
    )
    http_reply = _python(
        mesh.client,
        (
            "import urllib.request; print(urllib.request.urlopen(urllib.request.Request("
            f"'http://{WEB_VIP}:{WEB.port}/', data=b'{marker}-http'), timeout=10).read().decode())"
        ),
    )
    control6 = f"CONTROL6-{secrets.token_hex(12)}"  # and IPv6 payload
    _python(
        mesh.client,
        f"import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)"
        f".sendto(b'{control6}', ('{mesh.server.address6}', 9999))",
    )
    echo_reply, echo6_reply = (
        _python(
            mesh.client,
            (
                f"import socket; s = socket.create_connection(('{address}', {ECHO.port}), timeout=10); "
                f"s.sendall(b'{marker}-{tag}'); s.shutdown(socket.SHUT_WR); "
                "print(b''.join(iter(lambda: s.recv(4096), b'')).decode())"
            ),
        )
        for address, tag in ((mesh.server.address, "tcp"), (mesh.server.address6, "tcp6"))
    )
    # the apps got the marker, from their local meshd
    assert http_reply == f"web got {len(marker) + 5} bytes from 127.0.0.1"
    assert echo_reply == f"{marker}-tcp"
    assert echo6_reply == f"{marker}-tcp6"  # an app's IPv6 connection: over the mesh too
    assert f"{marker}-http" in mesh.server.exec(["cat", "/tmp/web.seen"]).stdout
    assert f"{marker}-tcp" in mesh.server.exec(["cat", "/tmp/echo.seen"]).stdout
    assert f"{marker}-tcp6" in mesh.server.exec(["cat", "/tmp/echo.seen"]).stdout
    # both meshds carried both connections (counted when they close)
    for host, direction in ((mesh.client, "outbound"), (mesh.server, "inbound")):
        for service in ("web", "echo"):

            def counted(h: TestbedHost = host, d: str = direction, s: str = service) -> bool:
                return mesh.metric(h, "meshd_connections_total", direction=d, destination=s) >= 1

            until(
                counted,
                timeout=15,
                what=f"{host.name}: a {direction} connection to {service} counted",
            )
    assert (
        mesh.metric(
            mesh.client,
            "meshd_requests_total",
            direction="outbound",
            destination="web",
            status_class="2xx",
        )
        >= 1
    )
    # and the wire between the hosts never carried it in clear
    wire = capture.read_bytes()
    assert control.encode() in wire, "the capture saw no payload at all"
    assert control6.encode() in wire, "the capture saw no IPv6 payload"
    assert marker.encode() not in wire
    links = subprocess.run(
        ["tcpdump", "-r", str(capture), "-nn", f"tcp port {onhost.MESH_PORT}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert links.count("\n") > 2, "no mesh link traffic captured"


def test_a_service_user_connects_with_its_own_identity(mesh: Mesh) -> None:
    fetch = (
        f"import urllib.request; print(urllib.request.urlopen('http://{WEB_VIP}:{WEB.port}/', "
        "timeout=10).read().decode())"
    )
    as_cli = ok(mesh.client, f"runuser -u cli -- python3 -c {fetch!r}").strip()
    as_root = ok(mesh.client, f"python3 -c {fetch!r}").strip()
    assert as_cli.startswith("web got 0 bytes") and as_root.startswith("web got 0 bytes")
    cli_id = f"spiffe://{mesh.pki.trust_domain}/svc/cli"
    host_id = f"spiffe://{mesh.pki.trust_domain}/host/{mesh.client.name}"
    for source in (cli_id, host_id):

        def counted(s: str = source) -> bool:
            metric = mesh.metric(
                mesh.server, "meshd_connections_total", direction="inbound", source=s
            )
            return metric >= 1

        until(
            counted,
            timeout=15,
            what=f"an inbound connection from {source} counted",
        )


def test_outside_plaintext_refused_in_strict_and_admitted_in_permissive(
    mesh: Mesh, tmp_path: Path
) -> None:
    """The app listens on [::]:8080: neither IPv4 nor IPv6 plaintext from outside reaches it."""

    def probe(address: str) -> str:
        return (
            f"import socket; s = socket.create_connection(('{address}', {WEB.port}), timeout=5); "
            "s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'); "
            "print(s.recv(200).decode() or 'CLOSED')"
        )

    def requests_seen() -> int:
        return len(mesh.server.exec(["cat", "/tmp/web.seen"]).stdout.splitlines())

    seen = requests_seen()
    sources = (
        (mesh.server.address, mesh.outsider.address),
        (mesh.server.address6, f"[{mesh.outsider.address6}]"),
    )
    with wire.capture(mesh.tb.subnets, tmp_path / "strict.pcap") as pcap:
        for address, shown in sources:
            status, out, _ = mesh.outsider.run(f"python3 -c {probe(address)!r}")
            assert status != 0 or out.strip() == "CLOSED", out
            refused = f"refused plaintext connection from {shown}"

            def logged(r: str = refused) -> bool:
                return r in ok(mesh.server, "journalctl -u meshd-e2e --no-pager -o cat")

            until(
                logged,
                timeout=15,
                what=f"'{refused}' in meshd's journal",
            )
    assert requests_seen() == seen  # the app never got them
    assert b"HTTP/1.1 " not in pcap.read_bytes()  # and no answer of it crossed the wire
    assert (
        mesh.metric(
            mesh.server, "meshd_connections_refused_total", listener="inbound", reason="plaintext"
        )
        >= 2
    )

    permissive = onhost.config_text(
        mesh.server, mesh.pki.trust_domain, [WEB, ECHO], mtls="permissive"
    )
    status_code, text = mesh.admin(
        mesh.server, "PUT", "/config", json.dumps({"version": 2, "toml": permissive}).encode()
    )
    assert status_code == 200, text
    try:
        for address in (mesh.server.address, mesh.server.address6):  # relayed, like IPv4
            assert "200 OK" in ok(mesh.outsider, f"python3 -c {probe(address)!r}")
        until(
            lambda: (
                mesh.metric(
                    mesh.server,
                    "meshd_connections_total",
                    direction="inbound",
                    source="unauthenticated",
                    destination="web",
                )
                >= 2
            ),
            timeout=15,
            what="two unauthenticated inbound connections counted",
        )
    finally:
        strict = onhost.config_text(mesh.server, mesh.pki.trust_domain, [WEB, ECHO])
        mesh.admin(
            mesh.server, "PUT", "/config", json.dumps({"version": 3, "toml": strict}).encode()
        )
