"""Putting meshd on testbed hosts by hand (what ``meshctl join`` automates).

Install the bundle, make the key on the host (it never leaves), sign the CSR
with the test CA, write config and registry, start meshd as the ``meshd``
user in a transient systemd unit (Type=notify), and install the redirect
rules with ``meshd rules apply`` (both address families).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
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


def reset(hosts: Iterable[TestbedHost]) -> None:
    """Reset ``hosts`` to their seeded state all at once (each ``reset`` is a poweroff and a
    boot of 3-4 s, mostly waiting); the first failure is raised once all are done."""
    with ThreadPoolExecutor() as pool:
        futures = [pool.submit(host.reset) for host in hosts]
    for future in futures:
        future.result()


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
        if app.outbound is not None:  # run by a user of the app's name: its own identity
            lines += [f'outbound = "127.0.0.1:{app.outbound}"', f'run_as = "{app.name}"']
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


def apply_rules(host: TestbedHost) -> None:
    """meshd's own rules (iptables and ip6tables) from the host's config and registry."""
    ok(host, "/opt/meshd/bin/meshd rules apply --config /etc/meshd/meshd.toml")


HTTP_APP = r"""
import http.server, socket, sys
NAME, PORT = sys.argv[2], int(sys.argv[1])
class Server(http.server.ThreadingHTTPServer):  # on [::]: IPv6 and (mapped) IPv4
    address_family = socket.AF_INET6
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self): self.answer(b"")
    def do_POST(self): self.answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
    def answer(self, body):
        with open(f"/tmp/{NAME}.seen", "ab") as f:
            f.write(body + b"\n")
        peer = self.client_address[0].removeprefix("::ffff:")
        reply = f"{NAME} got {len(body)} bytes from {peer}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(reply))); self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *a): pass
Server(("::", PORT), H).serve_forever()
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
                        "ipv6": [host.address6],
                    }
                ],
            }
            for name, (vip, port, host) in services.items()
        },
    }


def written(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""
