"""A meshd pair A -> B on loopback with fast apps, for the robustness tests.

B serves ``web`` (the harness HttpApp), ``echo`` and ``fast`` (asyncio apps on
one loop in a thread); A has an upstream listener for each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from meshd.tls.context import ALPN_LINK
from tests.meshd.harness import HttpApp, Meshd, MeshNet, client_context
from tests.meshd.tlsfixtures import Identity

T = TypeVar("T")
BIG = 512 * 1024 * 1024  # what a client that never reads asks for (or tries to send)
# the fast app's streamed bodies: /big for one client, /mid (more than a stream window) for
# hundreds of them at once without the kernel's socket buffers taking gigabytes
SIZES = {"/big": BIG, "/mid": 3 * 512 * 1024}


# --- apps on one asyncio loop in a thread ------------------------------------
class LoopApps:
    """An echo app, a fast keep-alive HTTP/1.1 app and counters, on an asyncio loop in a thread.

    The harness's apps spawn a thread per connection; these hold thousands of
    connections cheaply. Both respect back-pressure (pause/resume_writing).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.transports: set[asyncio.BaseTransport] = set()
        self.echo_open = 0  # echo connections open right now
        self.requests = 0  # HTTP requests answered
        self.big_written = 0  # body bytes of /big responses handed to the kernel (or buffered)
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self._run, name="loop-apps", daemon=True)
        self._thread.start()
        self.echo_port, self.http_port = self.call(self._start)
        # a service whose app is down: bound, never listening, so connecting is refused
        self._gone = socket.socket()
        self._gone.bind(("127.0.0.1", 0))
        self.gone_port: int = self._gone.getsockname()[1]
        # a service whose app is stuck: it never accepts, and its backlog is full, so a
        # connection to it waits (the kernel drops the SYNs) until the connect times out
        self._stuck = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.stuck_port: int = self._stuck.getsockname()[1]
        self._stuck_fill = [socket.create_connection(("127.0.0.1", self.stuck_port), timeout=2)]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``coro()`` on the apps' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro(), self.loop).result(10)

    async def _start(self) -> tuple[int, int]:
        ports = []
        for factory in (lambda: _Echo(self), lambda: _FastHttp(self)):
            server = await self.loop.create_server(factory, "127.0.0.1", 0, backlog=4096)
            self._servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        return ports[0], ports[1]

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for transport in list(self.transports):
            transport.abort()  # type: ignore[attr-defined]
        for _ in range(100):
            if not self.transports:
                break
            await asyncio.sleep(0.01)

    def close(self) -> None:
        for sock in (self._gone, self._stuck, *self._stuck_fill):
            sock.close()
        self.call(self._shutdown)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class _Base(asyncio.Protocol):
    def __init__(self, apps: LoopApps) -> None:
        self.apps = apps
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.apps.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.apps.transports.discard(self.transport)


class _Echo(_Base):
    """Echoes until the client half-closes, then closes; stops reading while it cannot write."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.apps.echo_open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.apps.echo_open -= 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close (after flushing what is buffered)


class _FastHttp(_Base):
    """HTTP/1.1 with keep-alive and Content-Length bodies; GET /big streams 512 MiB, /mid 1.5."""

    BODY = b"fast app says hello\n"
    CHUNK = b"b" * 65536

    def __init__(self, apps: LoopApps) -> None:
        super().__init__(apps)
        self.buffer = bytearray()
        self.big_left = 0
        self.paused = False

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            total = end + 4 + int(headers.get("content-length", "0"))
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            self.apps.requests += 1
            size = SIZES.get(lines[0].split(" ")[1])
            if size is not None:
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
                self.transport.write(head)
                self.big_left = size
                self._pump()
                return
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(self.BODY), self.BODY)
            )
            if headers.get("connection") == "close":
                self.transport.close()
                return
        if len(self.buffer) > 65536:
            self.transport.close()

    def _pump(self) -> None:
        assert self.transport is not None
        while self.big_left > 0 and not self.paused and not self.transport.is_closing():
            chunk = self.CHUNK[: min(len(self.CHUNK), self.big_left)]
            self.big_left -= len(chunk)
            self.apps.big_written += len(chunk)
            self.transport.write(chunk)  # calls pause_writing past the high-water mark

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()


# --- a pair A -> B and a normal client ------------------------------------------
@dataclass
class Pair:
    net: MeshNet
    a: Meshd
    b: Meshd
    web: HttpApp
    apps: LoopApps

    def rss(self) -> tuple[int, int]:
        return self.a.rss_kib(), self.b.rss_kib()

    def get(self) -> float:
        """One request of the normal client through A; its latency. Fails on a wrong answer."""
        return get_web(self.a)


def get_web(meshd: Meshd) -> float:
    """One GET of B's web app through ``meshd``'s upstream listener; its latency."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", meshd.ports["upstream:web"], timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert (response.status, text) == (200, "web got 0 bytes from 127.0.0.1"), text
    return time.monotonic() - start


def start_pair(
    net: MeshNet,
    web: HttpApp,
    apps: LoopApps,
    *,
    extra_a: str = "",
    extra_b: str = "",
    identity_a: Identity | None = None,
    identity_b: Identity | None = None,
) -> Pair:
    """B serves web (HttpApp), echo, fast, gone and stuck (LoopApps); A has an upstream each."""
    services = {
        "web": web.port,
        "echo": apps.echo_port,
        "fast": apps.http_port,
        "gone": apps.gone_port,
        "stuck": apps.stuck_port,
    }
    b = net.start("b", services=services, extra=extra_b, identity=identity_b)
    for name, port in services.items():
        net.add_service(name, port, "b", b.ports["mesh"])
    a = net.start("a", upstreams=dict.fromkeys(services, 0), extra=extra_a, identity=identity_a)
    pair = Pair(net, a, b, web, apps)
    pair.get()  # the link is up, the first request paid for it
    return pair


def make_web() -> HttpApp:
    """The harness's HttpApp, with a listen backlog for hundreds of connections at once.

    Its default backlog (5) overflows when B connects a burst of streams; the
    kernel then drops and later resets connections to it, an app problem that
    meshd passes on faithfully but that is not what these tests are about.
    """
    web = HttpApp("web")
    web.server.socket.listen(1024)
    return web


def mesh_client(net: MeshNet, identity: Identity, alpn: str | None = ALPN_LINK) -> ssl.SSLContext:
    """A link client presenting ``identity`` (maybe from another CA), trusting ``net``'s CA.

    It offers the link protocol by ALPN as meshd does (``alpn=None``: none).
    """
    ctx = client_context(dataclasses.replace(identity, bundle=net.pki.bundle))
    if alpn is not None:
        ctx.set_alpn_protocols([alpn])
    return ctx
