"""The cast of test_abuse.py: a normal client, a mesh host speaking the link protocol by
hand, and a crowd of sockets from many source addresses.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable

from meshd.proxy.frames import DATA, OPEN, OpenRequest, frame
from tests.meshd.harness import Meshd, MeshNet
from tests.meshd.pairs import Pair, get_web, mesh_client
from tests.meshd.tlsfixtures import Identity

LATENCY_MAX = 2.0  # seconds, for one call of a normal client or an operator during abuse
TD = "t.mesh"


class Caller:
    """Calls ``call`` back to back in a thread until stopped: its latencies and failures.

    ``who`` names the caller in messages; ``least`` is how many calls the
    check wants at the least, however short the abuse was.
    """

    def __init__(self, who: str, call: Callable[[], object], least: int = 3) -> None:
        self.who, self.call, self.least = who, call, least
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Caller:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.call()
            except (OSError, AssertionError, http.client.HTTPException) as e:
                self.errors.append(repr(e))
            else:
                self.latencies.append(time.monotonic() - start)
            self._stop.wait(0.02)

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 10
        while len(self.latencies) + len(self.errors) < self.least and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(15)

    def check(self, label: str) -> None:
        """Every call succeeded, in time, and there were enough of them."""
        lat = sorted(self.latencies)
        print(
            f"\n{label}: {self.who} {len(lat)} calls, {len(self.errors)} failed, latency "
            f"median {lat[len(lat) // 2] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms"
            if lat
            else f"\n{label}: {self.who} made no successful call"
        )
        assert self.errors == [], f"{label}: {self.who} failed: {self.errors[:5]}"
        assert len(lat) >= self.least, f"{label}: only {len(lat)} calls of the {self.who}"
        assert lat[-1] < LATENCY_MAX, f"{label}: slowest call took {lat[-1]:.2f}s: {lat[-5:]}"


def normal_client(pair: Pair, via: Meshd | None = None) -> Caller:
    """GETs of B's web page through A (or ``via``), as any client of the mesh makes them."""
    return Caller("normal client", lambda: get_web(via or pair.a))


def operator_calls(net: MeshNet, meshd: Meshd) -> Caller:
    """Admin API calls of an operator (GET /stats), from 127.0.0.1."""

    def call() -> None:
        status, text = net.admin(meshd, "GET", "/stats")
        assert status == 200, f"{status} {text[:200]}"

    return Caller("operator", call, least=10)


def cut_off(tls: ssl.SSLSocket) -> bool:
    """Does the far side close this TLS connection? (reading until EOF or reset)"""
    try:
        while tls.recv(65536):
            pass
    except (ssl.SSLError, ConnectionError):
        pass
    except TimeoutError:
        return False
    return True


def source(i: int) -> str:
    """The i-th of many loopback source addresses (127.0.1.1 ...), none of them 127.0.0.1."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


class Intruder:
    """A mesh host with a genuine certificate that speaks the link protocol by hand.

    ``rcvbuf``: a small receive buffer for a peer that never reads (the kernel
    then stops taking what meshd sends it almost at once).
    """

    def __init__(
        self,
        pair: Pair,
        identity: Identity | None = None,
        *,
        rcvbuf: int | None = None,
        alpn: str | None = "meshd-link/1",
        port: int | None = None,
    ) -> None:
        self.identity = identity or pair.net.pki.issue("x", "host/x")
        self.source = f"spiffe://{pair.net.pki.trust_domain}/host/x"
        raw = socket.socket()
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", port or pair.b.ports["mesh"]))
        self.tls = mesh_client(pair.net, self.identity, alpn).wrap_socket(raw)
        self.next_sid = 1

    def open(self, service: str, port: int, data: bytes = b"") -> int:
        sid = self.next_sid
        self.next_sid += 2
        wire = frame(OPEN, sid, OpenRequest(service, port, self.source).encode())
        self.send(wire + (frame(DATA, sid, data) if data else b""))
        return sid

    def send(self, wire: bytes) -> None:
        self.tls.sendall(wire)

    def flood(self, wire: bytes, limit: int) -> int:
        """Send ``wire`` again and again until meshd cuts us off or ``limit`` bytes went out."""
        sent = 0
        with contextlib.suppress(OSError):  # reset or TLS EOF: cut off
            while sent < limit:
                self.tls.sendall(wire)
                sent += len(wire)
        return sent

    def cut_off(self) -> bool:
        """Does meshd close the link? (reading until EOF or reset)"""
        return cut_off(self.tls)

    def read_until(self, wanted: bytes) -> bytes:
        """Read what meshd sends until ``wanted`` shows up in it (frames and all)."""
        received = b""
        while wanted not in received:
            chunk = self.tls.recv(65536)
            assert chunk, f"the link closed before {wanted!r} arrived"
            received += chunk
        return received

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.tls.close()

    def __enter__(self) -> Intruder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Crowd:
    """Sockets from many source addresses, opened at a steady rate, each held until closed.

    Each sends ``payload`` once connected (nothing: a silent socket), and at
    most ``hold`` are kept open: past that the oldest is closed, so the crowd
    re-opens what meshd (or the crowd itself) drops, as an attacker would.
    """

    def __init__(self, port: int, hold: int, payload: bytes = b"", rate: float = 2000.0) -> None:
        self.port, self.hold, self.payload, self.rate = port, hold, payload, rate
        self.opened = 0
        self.dropped = 0  # closed by the far side
        self.socks: deque[socket.socket] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Crowd:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.opened < due and not self._stop.is_set():
                self._open_one()
            self._stop.wait(0.005)

    def _open_one(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            s.bind((source(self.opened % 5000), 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", self.port))
            if self.payload:
                s.sendall(self.payload)
        except OSError:
            s.close()
            self.dropped += 1
            self.opened += 1
            return
        self.opened += 1
        self.socks.append(s)
        while len(self.socks) > self.hold:
            self.socks.popleft().close()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        while self.socks:
            self.socks.popleft().close()


def partial_client_hello() -> bytes:
    """The start of a TLS record announcing a 512-byte ClientHello that never completes."""
    return bytes.fromhex("1603010200") + bytes.fromhex("010001fc0303") + b"\x00" * 64
