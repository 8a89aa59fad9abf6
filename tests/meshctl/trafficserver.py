"""A stand-in for meshd's admin API that serves ``GET /traffic`` of known, steady traffic.

Until meshd serves ``/traffic`` (issue 14, helper D) the tests of ``meshctl
top`` talk to this: a real HTTPS server with mutual TLS 1.3 that presents a
host certificate of the test mesh, requires a client certificate from the
mesh CA, and answers snapshots of the contract's shape whose counters grow
at the rates of a ``Model``, from ``started`` = when it started. Each host
listens on its own loopback address (127.0.0.x) at the mesh's one admin port,
as meshd does on its host, and keeps connections alive as meshd does for
operators. ``hang`` hosts accept and never answer.

``GET /tap`` streams a chunked ndjson body of tap lines (``docs/tap.md``) for
each inbound series of the host, until the client goes: at most ``TAP_RPS``
a second per series (a sampled tap), over the series' ``paths`` in turn
(``GET``), every ``1 / errors``-th answered 500, latencies the midpoints of
the buckets in ``shares``' proportions; with ``service=S`` only the series
from or to S.
``no_tap`` hosts answer 404 there, as a meshd older than the tap does;
``tap_body`` hosts send that text (latin-1) after their answer's head instead,
then nothing more (a broken or hostile meshd).

In-process (``TrafficServer(...).start()``) or as a process of its own::

    python -m tests.meshctl.trafficserver spec.json   # prints "ready" when listening
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
TAP_RPS = 20.0  # tap lines a second per series, at most
TAP_EVERY = 0.1  # seconds between two chunks of tap lines


@dataclass(frozen=True)
class Series:
    """Steady HTTP traffic of one (direction, source, destination): ``rps`` requests a
    second, ``errors`` of them 5xx, latencies spread over the buckets by ``shares``."""

    direction: str
    source: str
    destination: str
    rps: float
    errors: float = 0.0
    shares: dict[int, float] = field(default_factory=lambda: {3: 1.0})  # bucket index: share
    open: int = 1
    bytes_per_s: float = 0.0
    paths: tuple[str, ...] = ("/",)  # what the tap shows, in turn

    def http(self, elapsed: float) -> dict[str, Any]:
        n = math.floor(self.rps * elapsed)
        failed = math.floor(n * self.errors)
        latency = [math.floor(n * self.shares.get(i, 0.0)) for i in range(len(BUCKETS) + 1)]
        classes = {"2xx": n - failed} | ({"5xx": failed} if failed else {})
        return {**self.key(), "classes": classes, "latency": latency, "latency_sum": 0.0}

    def tcp(self, elapsed: float) -> dict[str, Any]:
        moved = math.floor(self.bytes_per_s * elapsed)
        return {**self.key(), "opened": self.open, "open": self.open, "bytes_in": moved // 2,
                "bytes_out": moved - moved // 2}  # fmt: skip

    def key(self) -> dict[str, str]:
        return {"direction": self.direction, "source": self.source, "destination": self.destination}

    def tap_line(self, i: int, now: float) -> bytes:
        """The ``i``-th request's tap line (see the module docstring)."""
        failed = self.errors > 0 and i % max(1, round(1 / self.errors)) == 0
        at, bucket = (i % 100) / 100, 0
        for index, share in sorted(self.shares.items()):
            bucket = index
            at -= share
            if at < 0:
                break
        low = BUCKETS[bucket - 1] if bucket else 0.0
        high = BUCKETS[bucket] if bucket < len(BUCKETS) else low * 2
        record = {**self.key(), "time": now, "method": "GET",
                  "path": self.paths[i % len(self.paths)], "status": 500 if failed else 200,
                  "latency_ms": round((low + high) / 2 * 1000, 3), "bytes_in": 100,
                  "bytes_out": 0}  # fmt: skip
        return json.dumps(record).encode() + b"\n"


@dataclass(frozen=True)
class HostModel:
    name: str
    address: str
    cert: str
    key: str
    series: tuple[Series, ...] = ()
    hang: bool = False
    no_tap: bool = False
    tap_body: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "address": self.address, "cert": self.cert, "key": self.key,
            "hang": self.hang, "no_tap": self.no_tap, "tap_body": self.tap_body,
            "series": [s.__dict__ for s in self.series],
        }  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HostModel:
        series = tuple(
            Series(**{**s, "shares": {int(k): v for k, v in s["shares"].items()},
                      "paths": tuple(s["paths"])})
            for s in doc["series"]
        )  # fmt: skip
        return cls(
            doc["name"], doc["address"], doc["cert"], doc["key"], series, doc["hang"],
            doc["no_tap"], doc["tap_body"],
        )  # fmt: skip


class TrafficServer:
    """Every host of ``hosts`` listening at ``port`` on its address (see the docstring)."""

    def __init__(self, hosts: list[HostModel], port: int, bundle: Path) -> None:
        self.hosts, self.port, self.bundle = hosts, port, bundle
        self.started = time.time()
        self.socks: list[socket.socket] = []
        self.held: list[socket.socket] = []  # every connection accepted, closed at stop
        self.threads: list[threading.Thread] = []
        self.requests = 0
        self.taps = 0  # tap streams served

    def start(self) -> TrafficServer:
        for host in self.hosts:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.bundle)
            context.load_cert_chain(host.cert, host.key)
            sock = socket.create_server((host.address, self.port))
            self.socks.append(sock)
            self._spawn(self._serve, sock, context, host)
        return self

    def stop(self) -> None:
        """Wake every thread, wait for it, then close. Closing a socket under a thread
        still reading it would free its descriptor for the next server's connection while
        OpenSSL still reads that number: the old session ate the new one's handshake."""
        for sock in self.socks + self.held:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes accept and recv
        for thread in self.threads:
            thread.join(5.0)
        for sock in self.socks + self.held:
            sock.close()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def snapshot(self, host: HostModel, now: float) -> dict[str, Any]:
        elapsed = now - self.started
        return {
            "version": 1, "host": host.name, "taken": now, "started": self.started,
            "buckets": list(BUCKETS), "http": [s.http(elapsed) for s in host.series],
            "tcp": [s.tcp(elapsed) for s in host.series if s.direction == "inbound"],
        }  # fmt: skip

    def _serve(self, sock: socket.socket, context: ssl.SSLContext, host: HostModel) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.held.append(conn)  # for stop to wake its handshake (wrapping empties it)
            if host.hang:
                continue
            self._spawn(self._session, conn, context, host)

    def _session(self, conn: socket.socket, context: ssl.SSLContext, host: HostModel) -> None:
        """Requests on one connection, kept alive as meshd does, until the peer closes or
        idles for 10 s."""
        conn.settimeout(10.0)
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                self.held.append(tls)  # wrapping took over conn's descriptor
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer and len(buffer) < 65536:
                        chunk = tls.recv(4096)
                        if not chunk:
                            return
                        buffer += chunk
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    keep = b"connection: close" not in head.lower()
                    path = head.split(b" ", 2)[1]
                    if path.partition(b"?")[0] == b"/tap" and not host.no_tap:
                        self.taps += 1
                        self._tap(tls, host, path.partition(b"?")[2].decode())
                        return
                    tls.sendall(self._answer(path, host, keep))
                    if not keep:
                        return
        except (OSError, ValueError, IndexError):
            pass
        finally:
            conn.close()

    def _tap(self, tls: ssl.SSLSocket, host: HostModel, query: str) -> None:
        """Tap lines of the host's inbound series until the client goes (or stop() wakes it)."""
        wanted = set(urllib.parse.parse_qs(query).get("service", []))
        tls.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + host.tap_body.encode("latin-1")
        )
        series = [
            s
            for s in host.series
            if s.direction == "inbound" and (not wanted or {s.source, s.destination} & wanted)
        ]
        started, sent = time.time(), [0] * len(series)
        tls.settimeout(TAP_EVERY)
        while True:
            try:  # the wait between chunks sees the client go, or stop() shut the socket down
                if not tls.recv(4096):
                    return
            except TimeoutError:
                pass
            if host.tap_body:
                continue
            now = time.time()
            lines = []
            for k, s in enumerate(series):
                due = math.floor(min(s.rps, TAP_RPS) * (now - started))
                lines += [s.tap_line(i, now) for i in range(sent[k], due)]
                sent[k] = due
            if lines:
                body = b"".join(lines)
                tls.sendall(b"%x\r\n%s\r\n" % (len(body), body))

    def _answer(self, path: bytes, host: HostModel, keep: bool) -> bytes:
        self.requests += 1
        if path != b"/traffic":
            return _reply(404, {"error": "not found"}, keep)
        return _reply(200, self.snapshot(host, time.time()), keep)


def _reply(status: int, doc: dict[str, Any], keep: bool) -> bytes:
    body = json.dumps(doc).encode()
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n"
    )
    return head.encode() + body


def write_spec(path: Path, hosts: list[HostModel], port: int, bundle: Path) -> Path:
    doc = {"port": port, "bundle": str(bundle), "hosts": [h.to_json() for h in hosts]}
    path.write_text(json.dumps(doc))
    return path


def main(spec: str) -> None:
    doc = json.loads(Path(spec).read_text())
    hosts = [HostModel.from_json(h) for h in doc["hosts"]]
    TrafficServer(hosts, doc["port"], Path(doc["bundle"])).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
