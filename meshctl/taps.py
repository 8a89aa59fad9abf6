"""``meshctl top``'s tap readers: one live ``GET /tap`` stream per watched meshd, in threads.

Each host gets a thread that connects over the operator's mutual TLS
(``AdminClient._connect`` and the same check of the host's SPIFFE ID before
anything is sent), asks ``GET /tap`` (``?service=S`` with ``--service S``),
and reads the chunked ndjson body for as long as meshd sends it, turning
lines into ``TapEvent``s (``meshctl.tappaths``) on a bounded queue that
``Taps.take`` empties at each refresh: the view never waits for a tap.

A host whose tap is refused (404: a meshd without ``/tap``; 503: meshd has
its 4 tap clients already; an error; a connection that failed or ended) is
asked again ``RETRY`` seconds after the previous attempt began, at most;
``Taps.missing`` says, for each host without a stream, why in a few words.
``close`` wakes every reader (a shutdown of its socket, which leaves the
descriptor to its thread), waits for them, and the threads close their
sockets themselves: a socket is never closed under a thread reading it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Sequence

from meshctl.admin_client import AdminClient, AdminEndpoint, _check_peer
from meshctl.tappaths import (
    MAX_EVENTS,
    Dechunker,
    FramingError,
    Lines,
    TapEvent,
    read_event,
)
from meshd.errors import MeshError
from meshd.identity import make_id

RETRY = 3.0  # seconds between two attempts at one host's tap
CONNECT_TIMEOUT = 5.0
READ_WAKE = 5.0  # a blocked read wakes this often to see whether it should stop
MAX_HEAD = 16 * 1024
WAITING = "connecting"


def tap_path(service: str | None) -> str:
    """The request target: every request, or those from or to ``service``."""
    return "/tap" if service is None else "/tap?" + urllib.parse.urlencode({"service": service})


def refusal(status: int, head: bytes) -> str:
    """Why a tap was refused, in a few words, from its status (and its head's first line)."""
    if status == 404:
        return "no /tap (meshd older than meshctl)"
    if status == 503:
        return "tap busy (meshd serves 4 taps at most)"
    if status in (401, 403):
        return f"tap refused ({status}): operator certificate not accepted"
    line = head.partition(b"\r\n")[0].decode("latin-1")[:60]
    return f"tap refused: {line}"


class _Reader:
    """One host's tap, read in its own thread until ``stop`` is set."""

    def __init__(self, taps: Taps, endpoint: AdminEndpoint) -> None:
        self.taps, self.endpoint = taps, endpoint
        self.error: str | None = WAITING
        self.tls: ssl.SSLSocket | None = None
        self.lock = threading.Lock()  # over self.tls: close() may wake it meanwhile
        self.thread = threading.Thread(
            target=self.run, name=f"meshctl-tap-{endpoint.host}", daemon=True
        )

    def run(self) -> None:
        stop = self.taps.stopping
        while not stop.is_set():
            began = time.monotonic()
            try:
                self.error = self.attempt()
            except Exception as e:  # a bug or an odd answer: this host's paths, never top
                self.error = f"tap failed: {type(e).__name__}"
            stop.wait(max(0.0, began + RETRY - time.monotonic()))

    def attempt(self) -> str:
        """One stream, from connecting to its end: why it ended (or never began)."""
        try:
            tls = self.connect()
        except OSError as e:
            with self.lock:
                self.tls = None  # closed by _connect already
            return _short(self.taps.client._connect_error(self.endpoint, e).message, self.endpoint)
        try:
            return self.stream(tls)
        except MeshError as e:
            return _short(e.message, self.endpoint)
        except (OSError, FramingError) as e:
            return f"tap ended: {type(e).__name__}"
        finally:
            with self.lock:
                self.tls = None
            tls.close()

    def connect(self) -> ssl.SSLSocket:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        tls = self.taps.client._connect(self.endpoint, deadline, self.hold)
        if self.taps.stopping.is_set():
            tls.close()
            raise OSError("stopping")
        return tls

    def hold(self, tls: ssl.SSLSocket) -> None:
        """``tls`` is this reader's socket from now on: ``wake`` may shut it down."""
        with self.lock:
            self.tls = tls

    def stream(self, tls: ssl.SSLSocket) -> str:
        expected = str(make_id(self.taps.client.trust_domain, "host", self.endpoint.host))
        _check_peer(tls, expected, self.endpoint)
        request = (
            f"GET {self.taps.path} HTTP/1.1\r\nHost: {self.endpoint.host}\r\n"
            "Accept: application/x-ndjson\r\nConnection: close\r\n\r\n"
        )
        tls.settimeout(CONNECT_TIMEOUT)
        tls.sendall(request.encode("latin-1"))
        status, head, body = _read_head(tls)
        if status != 200:
            return refusal(status, head)
        if b"transfer-encoding: chunked" not in head.lower():
            return "tap refused: its answer is not chunked"
        self.error = None
        tls.settimeout(READ_WAKE)
        self.follow(tls, body)
        return "tap closed by meshd"

    def follow(self, tls: ssl.SSLSocket, body: bytes) -> None:
        chunks, lines = Dechunker(), Lines()
        data = body
        while not self.taps.stopping.is_set():
            for line in lines.feed(chunks.feed(data)):
                self.take(line)
            if chunks.done:
                return
            try:
                data = tls.recv(65536)
            except TimeoutError:
                data = b""
                continue
            if not data:
                return

    def take(self, line: bytes) -> None:
        """Queue the request ``line`` tells of; other lines (``{"dropped": N}``) are skipped."""
        event = read_event(line)
        if event is not None:
            self.taps.queue.append(event)  # a deque with maxlen: thread-safe, bounded

    def wake(self) -> None:
        """Make a blocked read return: shut the socket down (the thread still closes it)."""
        with self.lock:
            if self.tls is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self.tls, socket.SHUT_RDWR)


def _read_head(tls: ssl.SSLSocket) -> tuple[int, bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed without answering")
        data += chunk
        if len(data) > MAX_HEAD:
            raise FramingError("the answer's head is too large")
    head, _, body = data.partition(b"\r\n\r\n")
    code = head[9:12]
    if not head.startswith(b"HTTP/1.") or not code.isdigit():
        raise FramingError("a malformed status line")
    return int(code), head, body


def _short(message: str, endpoint: AdminEndpoint) -> str:
    """``message`` without the "meshd on HOST (address:port)" that the table says already."""
    return message.removeprefix(endpoint.where).lstrip(": ") or message


class Taps:
    """Every watched host's tap, read concurrently (see the module docstring)."""

    def __init__(
        self, client: AdminClient, endpoints: Sequence[AdminEndpoint], service: str | None
    ) -> None:
        self.client, self.path = client, tap_path(service)
        self.stopping = threading.Event()
        self.queue: deque[TapEvent] = deque(maxlen=MAX_EVENTS)
        self.readers = [_Reader(self, e) for e in endpoints]

    def start(self) -> Taps:
        for reader in self.readers:
            reader.thread.start()
        return self

    def take(self) -> list[TapEvent]:
        """The events read since the last call."""
        taken: list[TapEvent] = []
        while self.queue:
            try:
                taken.append(self.queue.popleft())
            except IndexError:
                break
        return taken

    def missing(self) -> tuple[tuple[str, str], ...]:
        """(host, why) for each host whose tap is not streaming now."""
        return tuple((r.endpoint.host, r.error) for r in self.readers if r.error is not None)

    def close(self, wait: float = 2.0) -> None:
        """Stop every reader, wake those blocked in a read, and wait for them (a while)."""
        self.stopping.set()
        for reader in self.readers:
            reader.wake()
        deadline = time.monotonic() + wait
        for reader in self.readers:
            if reader.thread.is_alive():
                reader.thread.join(max(0.0, deadline - time.monotonic()))
