"""Real meshd processes on loopback for tests: certificates, configs, apps, admin access.

``MeshNet`` issues identities from one test CA, writes configs, starts
``meshd run`` processes (port 0 everywhere; the bound ports are read from
the "meshd ready" log line), and talks to their admin APIs as an operator.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.meshd.tlsfixtures import Identity, TestPki

MESHD = str(Path(sys.executable).with_name("meshd"))
READY = re.compile(r"meshd ready: (.*)")


@dataclass
class Meshd:
    name: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log_text())
            if match:
                return match.group(0)
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: no log line matching {pattern!r} in:\n{self.log_text()}"
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def wait_ready(self, timeout: float = 10.0) -> Meshd:
        """Once its "meshd ready" line is logged: the bound ports, read from that line."""
        line = self.wait_log(r"meshd ready: .*", timeout=timeout)
        for part in READY.search(line).group(1).split(", "):  # type: ignore[union-attr]
            key, _, address = part.partition("=")
            self.ports[key] = int(address.rsplit(":", 1)[1])
        return self

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


class MeshNet:
    """A small mesh of meshd processes on 127.0.0.1."""

    def __init__(self, directory: Path, pki: TestPki | None = None) -> None:
        """``pki``: the CA to issue from (default: a fresh test CA in ``directory/pki``)."""
        self.dir = directory
        self.pki = pki or TestPki(directory / "pki")
        self.operator = self.pki.issue("operator", "operator/alice")
        self.procs: list[Meshd] = []
        self.registry: dict[str, Any] = {"version": 1, "services": {}}

    def add_service(self, name: str, port: int, host: str, mesh_port: int, vip: str = "") -> None:
        services = self.registry["services"]
        entry = services.setdefault(
            name, {"vip": vip or f"10.255.0.{len(services) + 1}", "port": port, "endpoints": []}
        )
        entry["endpoints"].append(
            {"host": host, "address": "127.0.0.1", "port": port, "mesh_port": mesh_port}
        )

    def write_registry(self) -> Path:
        path, fresh = self.dir / "registry.json", self.dir / "registry.json.new"
        fresh.write_text(json.dumps(self.registry))
        fresh.replace(path)  # whole, for a meshd starting meanwhile
        return path

    def start(
        self,
        name: str,
        *,
        services: dict[str, int] | None = None,
        upstreams: dict[str, int] | None = None,
        identity: Identity | None = None,
        extra: str = "",
        mtls: str = "strict",
        command: Sequence[str] = (MESHD,),
        admin: str = "127.0.0.1:0",
        wait: bool = True,
    ) -> Meshd:
        """Start meshd ``name``; upstreams map a service to a local listen port (0: any).

        ``command``: what runs ``meshd`` (a test's launcher may wrap it); ``admin``: where
        its admin API listens; ``wait=False``: return once launched (many start at once),
        its ports known after ``wait_ready``.
        """
        services = services or {}
        ident = identity or self.pki.issue(name, f"host/{name}", *(f"svc/{s}" for s in services))
        lines = [
            "[identity]",
            f'host = "{name}"',
            f'trust_domain = "{self.pki.trust_domain}"',
            f'cert = "{ident.cert}"',
            f'key = "{ident.key}"',
            f'bundle = "{ident.bundle}"',
            "[listen]",
            'outbound = "127.0.0.1:0"',
            'inbound = "127.0.0.1:0"',
            'mesh = "127.0.0.1:0"',
            f'admin = "{admin}"',
            f'admin_socket = "{self.dir / name}.sock"',
            "[mesh]",
            f'mtls = "{mtls}"',
            f'registry = "{self.write_registry()}"',
            f'state_dir = "{self.dir / (name + "-state")}"',
        ]
        for svc, port in services.items():
            lines += ["[[services]]", f'name = "{svc}"', f"port = {port}"]
        for svc, port in (upstreams or {}).items():
            lines += ["[[upstreams]]", f'listen = "127.0.0.1:{port}"', f'service = "{svc}"']
        lines += ["[log]", 'level = "info"', extra]
        (self.dir / f"{name}-state").mkdir(exist_ok=True)
        config = self.dir / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*command, "run", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        meshd = Meshd(name, config, log, proc)
        self.procs.append(meshd)
        return meshd.wait_ready() if wait else meshd

    def stop_all(self) -> None:
        for meshd in self.procs:
            meshd.stop()

    # --- operator access to the admin API --------------------------------
    def operator_context(self, identity: Identity | None = None) -> ssl.SSLContext:
        return client_context(identity or self.operator)

    def admin(
        self,
        meshd: Meshd,
        method: str,
        path: str,
        body: Any = None,
        identity: Identity | None = None,
    ) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        ctx = self.operator_context(identity)
        return admin_call(("127.0.0.1", meshd.ports["admin"]), ctx, method, path, data)

    def metric_sum(self, meshd: Meshd, name: str, **labels: str) -> float:
        """The sum of every sample of ``name`` that has ``labels`` (over all other labels)."""
        status, text = self.admin(meshd, "GET", "/metrics")
        assert status == 200, text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + "{", name + " "))
            and all(f'{k}="{v}"' in line for k, v in labels.items())
        )

    def metric(self, meshd: Meshd, name: str, **labels: str) -> float:
        """The value of one sample (0 when absent)."""
        status, text = self.admin(meshd, "GET", "/metrics")
        assert status == 200, text
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


# --- admin API clients --------------------------------------------------------
def client_context(identity: Identity) -> ssl.SSLContext:
    """An mTLS client context presenting ``identity`` and trusting its bundle."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(identity.bundle)
    ctx.load_cert_chain(identity.cert, identity.key)
    return ctx


def admin_call(
    address: tuple[str, int], ctx: ssl.SSLContext, method: str, path: str, body: bytes | None = None
) -> tuple[int, str]:
    """One admin API request: (status, body text)."""
    conn = http.client.HTTPSConnection(address[0], address[1], timeout=10, context=ctx)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


# --- apps on loopback ------------------------------------------------------
class EchoServer:
    """A TCP echo app: echoes until the client half-closes, then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.peers: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    self.received.append(data)
                    conn.sendall(data)
            except OSError:
                return  # the peer reset the connection: that is a test's business, not ours

    def close(self) -> None:
        self.sock.close()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1, no access log on stderr; ``reply`` answers 200 with ``body``."""

    protocol_version = "HTTP/1.1"
    # the head and the body go out in two writes: with Nagle on, the body waits for the
    # client's delayed ACK of the head (40 ms on Linux) and a keep-alive client gets ~20 rps
    disable_nagle_algorithm = True

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ServedApp:
    """An HTTP app on 127.0.0.1 (a free port), served by threads until ``close``."""

    def __init__(self, handler: type[QuietHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HttpApp(ServedApp):
    """A tiny HTTP/1.1 app (keep-alive) answering with its name and what it got."""

    def __init__(self, name: str) -> None:
        app_name = name
        seen: list[bytes] = []
        self.seen = seen

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                self._answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

            def _answer(self, body: bytes) -> None:
                seen.append(body)
                self.reply(
                    f"{app_name} got {len(body)} bytes from {self.client_address[0]}".encode()
                )

        super().__init__(Handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_on(addresses: list[str]) -> int:
    """A port nothing listens on at any of ``addresses`` (tried, then released)."""
    for _ in range(50):
        port = free_port()
        try:
            for address in addresses:
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every address")


def env_without_notify() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
