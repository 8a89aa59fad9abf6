"""TLS handshakes run by meshd itself, so that every failure is seen, logged and counted.

A TLS server made with ``loop.create_server(ssl=...)`` drops handshake errors
silently (they are OSErrors), and uvloop starts reading before ``start_tls``
can take over an accepted connection; accepting sockets ourselves and
handing each to ``connect_accepted_socket`` makes every handshake raise, so
meshd can say who failed and why (``meshd.tls.failures.classify``: the short,
stable reasons used as metric labels).

Nothing is spent on a peer before it speaks: an accepted socket waits, as a
bare descriptor, until its whole ClientHello has arrived (``client_hello``),
and only then gets its TLS state (uvloop allocates 256 KiB per TLS
connection). Both stages have their
own ``HandshakeGate`` (bounded in all and per source, a full gate drops the
oldest entry in the way), so a crowd of silent sockets churns only its own
gate and never cuts a handshake short.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
from anyio.abc import TaskStatus

from meshd.errors import ConnectError
from meshd.netfacts import fmt
from meshd.telemetry.events import Event, HandshakeFailed
from meshd.telemetry.logs import peer_lines
from meshd.tls.failures import HandshakeFailure, classify
from meshd.tls.gate import HandshakeGate

log = logging.getLogger("meshd.tls")

TLS_HANDSHAKE_RECORD = 0x16
MAX_RECORD = 5 + 16384 + 256  # a TLS record's header and largest payload


async def client_hello(sock: socket.socket) -> bool:
    """Wait until the first TLS record (the ClientHello) has arrived whole; False if the
    peer closed before saying anything.

    The record's header says how long it is, and the socket's receive low-water mark
    makes it readable only once that much is there: a peer that sends part of a
    ClientHello and stalls waits here as a bare descriptor, with no TLS state and no
    place among the handshakes. Anything that is not a TLS handshake record goes on
    at once, to fail its handshake.
    """
    head = await _peek(sock, 5)
    if not head:
        return False
    if len(head) == 5 and head[0] == TLS_HANDSHAKE_RECORD:
        whole = min(5 + int.from_bytes(head[3:5], "big"), MAX_RECORD)
        if len(_peek_now(sock, whole)) < whole:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, whole)
            try:
                await anyio.wait_readable(sock)  # all of it, or the peer closed
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    return True


async def _peek(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes waiting on ``sock``, once there are any; b"" if it closed."""
    while True:
        await anyio.wait_readable(sock)
        try:
            return sock.recv(size, socket.MSG_PEEK)
        except BlockingIOError:  # woken for nothing: wait again
            continue
        except OSError:  # reset
            return b""


def _peek_now(sock: socket.socket, size: int) -> bytes:
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except OSError:  # reset, or nothing yet: let the handshake find out
        return b""


class TlsListener:
    """Accepts TCP connections and runs each server handshake where its failure can be seen.

    ``serve`` reports the bound address through ``task_status`` and runs until
    cancelled or ``close`` is called; handshakes in flight live in its own
    task group.
    """

    def __init__(
        self,
        name: str,
        context: Callable[[], ssl.SSLContext],
        timeout: float,
        factory: Callable[[], asyncio.BaseProtocol],
        publish: Callable[[Event], None],
        gate: HandshakeGate,
        silent: HandshakeGate,
    ) -> None:
        self.name = name
        self.context = context
        self.timeout = timeout
        self.factory = factory
        self.publish = publish
        self.gate = gate  # TLS handshakes in flight
        self.silent = silent  # accepted sockets whose peer has sent nothing yet
        self._scope: anyio.CancelScope | None = None

    async def serve(
        self,
        address: tuple[str, int],
        *,
        task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = socket.create_server(address, backlog=4096)
        except OSError as e:
            raise ConnectError(
                f"cannot listen on {fmt(address)} ({self.name}): {e.strerror}",
                hint="is another meshd running, or the port taken?",
            ) from e
        sock.setblocking(False)
        with sock, anyio.CancelScope() as self._scope:
            task_status.started(sock.getsockname()[:2])
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        conn, address = await loop.sock_accept(sock)
                    except OSError as e:  # e.g. out of descriptors: back off, keep serving
                        log.warning("%s port: accept failed: %s", self.name, e)
                        await anyio.sleep(0.1)
                        continue
                    tg.start_soon(self._handshake, conn, address[:2])

    def close(self) -> None:
        """Stop accepting; links already up are not touched."""
        if self._scope is not None:
            self._scope.cancel()

    async def _handshake(self, conn: socket.socket, address: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(self.timeout):  # one deadline from accept to a known peer
                with self._room(self.silent, address) as waiting:
                    said = await client_hello(conn)  # until then it costs no TLS state
                if waiting.cancelled_caught:
                    return self._evicted(conn, address)
                if not said:
                    why = "closed before its handshake"
                    return self._failed(conn, address, HandshakeFailure.CLOSED, why)
                with self._room(self.gate, address) as handshaking:
                    await loop.connect_accepted_socket(
                        self.factory, conn, ssl=self.context(), ssl_handshake_timeout=self.timeout
                    )
                if handshaking.cancelled_caught:
                    return self._evicted(conn, address)
        except (OSError, TimeoutError, EOFError) as e:
            self._failed(conn, address, classify(e), str(e) or type(e).__name__)
        except Exception:  # one connection's trouble never reaches the listener
            log.exception("%s port: connection from %s failed", self.name, fmt(address))
            conn.close()
        return None

    @contextmanager
    def _room(self, gate: HandshakeGate, address: tuple[str, int]) -> Iterator[anyio.CancelScope]:
        """A slot in ``gate`` for as long as the block runs; eviction cancels the block, and
        so does a full gate turning this connection away."""
        with anyio.CancelScope() as scope:
            ticket = gate.admit(address[0], scope.cancel)
            if ticket is None:
                scope.cancel()
            try:
                yield scope
            finally:
                gate.release(ticket)

    def _evicted(self, conn: socket.socket, address: tuple[str, int]) -> None:
        why = "dropped: too many peers not yet known"
        self._failed(conn, address, HandshakeFailure.EVICTED, why)

    def _failed(
        self, conn: socket.socket, address: tuple[str, int], reason: HandshakeFailure, why: str
    ) -> None:
        peer = fmt(address)
        peer_lines.log(
            log,
            logging.WARNING,
            f"failed handshakes on the {self.name} port",
            "%s port: TLS handshake with %s failed (%s): %s",
            self.name,
            peer,
            reason,
            why,
        )
        self.publish(HandshakeFailed(self.name, peer, reason))
        conn.close()
