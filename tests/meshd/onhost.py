"""Putting meshd on testbed hosts by hand (what ``meshctl join`` will automate).

Install the bundle, make the key on the host (it never leaves), sign the CSR
with the test CA, write config and registry, start meshd as the ``meshd``
user in a transient systemd unit (Type=notify), and install redirect rules.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from meshctl.bundle import Bundle, launcher
from meshctl.ca import sign_csr
from meshctl.testbed import TestbedHost
from meshd.identity import SpiffeId
from meshd.pki import cert_pem
from tests.meshd.tlsfixtures import TestPki

MESH_PORT, ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT = 15443, 15000, 15001, 15006
VIP_RANGE = "10.255.0.0/16"


def ok(host: TestbedHost, cmd: str, timeout: float = 60) -> str:
    status, out, err = host.run(cmd, timeout=timeout)
    assert status == 0, f"{host.name}: {cmd}\n{out}\n{err}"
    return out


def put(host: TestbedHost, path: str, data: bytes, mode: int = 0o644) -> None:
    with host.ssh() as client, client.open_sftp() as sftp:
        with sftp.open(path, "wb") as f:
            f.write(data)
        sftp.chmod(path, mode)


def install(host: TestbedHost, bundle: Bundle) -> None:
    root = f"/opt/meshd/{bundle.version}"
    put(host, "/tmp/meshd.tar.gz", bundle.path.read_bytes())
    ok(
        host,
        f"mkdir -p {root} /opt/meshd/bin /etc/meshd /var/lib/meshd && "
        f"tar -xzf /tmp/meshd.tar.gz -C {root} && rm /tmp/meshd.tar.gz && "
        "(id meshd >/dev/null 2>&1 || useradd --system --no-create-home "
        "--home-dir /var/lib/meshd --shell /usr/sbin/nologin meshd) && "
        "chown meshd:meshd /var/lib/meshd",
    )
    put(host, "/opt/meshd/bin/meshd", launcher(f"{root}/lib").encode(), 0o755)


def enroll(host: TestbedHost, pki: TestPki, ids: list[SpiffeId]) -> None:
    """Key made on the host, CSR signed here, certificate and trust bundle pushed back."""
    args = " ".join(f"--id {shlex.quote(str(i))}" for i in ids)
    csr_pem = ok(
        host, f"/opt/meshd/bin/meshd keygen --force --key /etc/meshd/key.pem --csr - {args}"
    )
    ok(host, "chown meshd:meshd /etc/meshd/key.pem")
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    cert = sign_csr(csr, ids, pki.ca.issuing, dt.datetime.now(dt.UTC), dt.timedelta(hours=2))
    put(host, "/etc/meshd/cert.pem", cert_pem(cert, pki.ca.issuing.cert))
    put(host, "/etc/meshd/bundle.pem", pki.bundle.read_bytes())


@dataclass(frozen=True)
class App:
    name: str
    port: int
    outbound: int | None = (
        None  # its own outbound listener: connections of its user get its identity
    )


def config_text(host: TestbedHost, trust_domain: str, apps: list[App], mtls: str = "strict") -> str:
    lines = [
        "[identity]",
        f'host = "{host.name}"',
        f'trust_domain = "{trust_domain}"',
        'cert = "cert.pem"',
        'key = "key.pem"',
        'bundle = "bundle.pem"',
        "[listen]",
        f'outbound = "127.0.0.1:{OUTBOUND_PORT}"',
        f'inbound = "0.0.0.0:{INBOUND_PORT}"',
        f'mesh = "0.0.0.0:{MESH_PORT}"',
        f'admin = "{host.address}:{ADMIN_PORT}"',
        'admin_socket = "/run/meshd/admin.sock"',
        "[mesh]",
        f'mtls = "{mtls}"',
        'registry = "registry.json"',
        'state_dir = "/var/lib/meshd"',
    ]
    for app in apps:
        lines += ["[[services]]", f'name = "{app.name}"', f"port = {app.port}"]
        if app.outbound is not None:
            lines.append(f'outbound = "127.0.0.1:{app.outbound}"')
    return "\n".join(lines) + "\n"


def configure(host: TestbedHost, config: str, registry: dict[str, object]) -> None:
    put(host, "/etc/meshd/meshd.toml", config.encode())
    put(host, "/etc/meshd/registry.json", json.dumps(registry).encode())


def start(host: TestbedHost) -> None:
    """meshd as user meshd in a transient notify unit: systemd-run returns once READY=1 came."""
    ok(
        host,
        "systemd-run --unit=meshd-e2e --property=Type=notify --property=NotifyAccess=main "
        "--property=RuntimeDirectory=meshd --property=User=meshd --property=Group=meshd "
        "--property=TimeoutStartSec=20 /opt/meshd/bin/meshd run --config /etc/meshd/meshd.toml",
    )


def run_app(host: TestbedHost, unit: str, script: str, *args: str) -> None:
    put(host, f"/usr/local/bin/{unit}.py", script.encode(), 0o755)
    ok(
        host,
        f"systemd-run --unit={unit} /usr/bin/python3 /usr/local/bin/{unit}.py {' '.join(args)}",
    )
    ok(
        host,
        f"for i in $(seq 50); do ss -ltn | grep -q ':{args[0]} ' && exit 0; sleep 0.1; done; exit 1",
    )


def outbound_rules(service_ports: list[int], endpoints: list[str], users: dict[str, int]) -> str:
    """nat OUTPUT: connections to VIPs and endpoints go to meshd (never meshd's own).

    A service's run-as user goes to that service's outbound listener, so its
    connections carry its identity; everyone else gets the host identity.
    """
    ports = ",".join(str(p) for p in service_ports)
    lines = [
        "*nat",
        ":MESHD_OUTPUT - [0:0]",
        ":MESHD_REDIRECT - [0:0]",
        "-A OUTPUT -p tcp -j MESHD_OUTPUT",
        "-A MESHD_OUTPUT -m owner --uid-owner meshd -j RETURN",
        "-A MESHD_OUTPUT -p tcp --sport 22 -j RETURN",
        "-A MESHD_OUTPUT -d 127.0.0.0/8 -j RETURN",
        f"-A MESHD_OUTPUT -p tcp -d {VIP_RANGE} -j MESHD_REDIRECT",
    ]
    lines += [
        f"-A MESHD_OUTPUT -p tcp -d {e} -m multiport --dports {ports} -j MESHD_REDIRECT"
        for e in endpoints
    ]
    lines += [
        f"-A MESHD_REDIRECT -p tcp -m owner --uid-owner {user} -j REDIRECT --to-ports {port}"
        for user, port in users.items()
    ]
    lines.append(f"-A MESHD_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}")
    return "\n".join([*lines, "COMMIT", ""])


def inbound_rules(service_ports: list[int]) -> str:
    """nat PREROUTING: plaintext from outside to a meshed port goes to meshd's inbound listener."""
    ports = ",".join(str(p) for p in service_ports)
    return "\n".join(
        [
            "*nat",
            ":MESHD_INBOUND - [0:0]",
            "-A PREROUTING -p tcp -j MESHD_INBOUND",
            f"-A MESHD_INBOUND -p tcp -m multiport --dports {ports} "
            f"-j REDIRECT --to-ports {INBOUND_PORT}",
            "COMMIT",
            "",
        ]
    )


def apply_rules(host: TestbedHost, document: str) -> None:
    put(host, "/tmp/meshd.rules", document.encode())
    ok(
        host,
        "iptables-restore --test --noflush /tmp/meshd.rules && "
        "iptables-restore --noflush /tmp/meshd.rules",
    )


def route_vips(host: TestbedHost) -> None:
    """Virtual IPs need a route for connect() to get as far as the nat OUTPUT hook.

    Via ``lo``: with meshd's rules the connection is redirected before it goes
    anywhere; without them it goes nowhere (no plaintext leaves the host).
    """
    ok(host, f"ip route replace {VIP_RANGE} dev lo")


HTTP_APP = r"""
import http.server, sys
NAME, PORT = sys.argv[2], int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self): self.answer(b"")
    def do_POST(self): self.answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
    def answer(self, body):
        with open(f"/tmp/{NAME}.seen", "ab") as f:
            f.write(body + b"\n")
        reply = f"{NAME} got {len(body)} bytes from {self.client_address[0]}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(reply))); self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", PORT), H).serve_forever()
"""

ECHO_APP = r"""
import socket, sys, threading
def echo(c):
    with c:
        while data := c.recv(65536):
            with open("/tmp/echo.seen", "ab") as f:
                f.write(data)
            c.sendall(data)
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
"""


def registry(services: dict[str, tuple[str, int, TestbedHost]]) -> dict[str, object]:
    """A registry document: service -> (vip, port, host serving it)."""
    return {
        "version": 1,
        "services": {
            name: {
                "vip": vip,
                "port": port,
                "endpoints": [
                    {
                        "host": host.name,
                        "address": host.address,
                        "port": port,
                        "mesh_port": MESH_PORT,
                    }
                ],
            }
            for name, (vip, port, host) in services.items()
        },
    }


def written(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""
