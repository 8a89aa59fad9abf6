"""A TLS transport for sidecar links: a non-blocking ``ssl.SSLSocket`` driven by the event loop.

uvloop's TLS goes through memory BIOs (every byte copied in and out of
OpenSSL in Python-visible steps); a link is long-lived and hot, so it gets
OpenSSL on the socket itself: ``recv``/``send`` on the SSLSocket when the
loop says the descriptor is ready. A calibration ping-pong on this machine
cost 17 us of CPU per round trip this way against 40 us through uvloop's
SSL transport.

It implements the parts of ``asyncio.Transport`` a Link uses, with write
flow control (``pause_writing``/``resume_writing`` on the protocol).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

READ_SIZE = 256 * 1024
HIGH_WATER = 1024 * 1024  # buffered bytes that make the protocol pause its writers
LOW_WATER = 256 * 1024


async def handshake(sock: ssl.SSLSocket, timeout: float) -> None:
    """Run the TLS handshake of a non-blocking SSLSocket, with a deadline."""
    loop = asyncio.get_running_loop()
    with anyio.fail_after(timeout):
        while True:
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                await _ready(loop.add_reader, loop.remove_reader, sock.fileno())
            except ssl.SSLWantWriteError:
                await _ready(loop.add_writer, loop.remove_writer, sock.fileno())
            else:
                return


async def _ready(add: Callable[..., Any], remove: Callable[[int], Any], fd: int) -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    add(fd, wake)
    try:
        await future
    finally:
        remove(fd)


async def dial(address: tuple[str, int], context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """A TCP connection to ``address`` with its TLS handshake done."""
    loop = asyncio.get_running_loop()
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setblocking(False)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        with anyio.fail_after(timeout):
            await loop.sock_connect(raw, address)
        tls = context.wrap_socket(raw, server_side=False, do_handshake_on_connect=False)
    except BaseException:
        raw.close()
        raise
    try:
        await handshake(tls, timeout)
    except BaseException:
        tls.close()
        raise
    return tls


async def accept(raw: socket.socket, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """The server side of a handshake on an accepted connection."""
    raw.setblocking(False)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    try:
        await handshake(tls, timeout)
    except BaseException:
        tls.close()
        raise
    return tls


class TlsTransport(asyncio.Transport):
    """An established TLS connection feeding one protocol."""

    def __init__(
        self, sock: ssl.SSLSocket, protocol: asyncio.Protocol, peername: tuple[str, int]
    ) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._out: deque[bytes | bytearray | memoryview] = deque()
        self._out_size = 0
        self._closing = False
        self._closed = False
        self._paused = False
        self._reading = True
        self._peername = peername  # known to the caller; the peer may already be gone
        # one buffer for all reads: recv(n) would allocate n bytes per call, and past
        # 128 KiB glibc serves that with mmap/munmap: two syscalls and page faults a read
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        protocol.connection_made(self)
        self._loop.add_reader(self._fd, self._readable)
        self._loop.call_soon(self._readable)  # OpenSSL may hold data from the handshake

    # reading
    def _readable(self) -> None:
        sock, protocol, view = self._sock, self._protocol, self._view
        while self._reading and not self._closed:
            try:
                size = sock.recv_into(view)
            except (ssl.SSLWantReadError, BlockingIOError):
                return
            except ssl.SSLWantWriteError:
                return  # a TLS 1.3 key update waits for writability; the writer retries
            except (OSError, ssl.SSLError) as e:
                self._fatal(e)
                return
            if not size:
                self._fatal(None)
                return
            protocol.data_received(view[:size].tobytes())

    def pause_reading(self) -> None:
        if self._reading and not self._closed:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)
            self._loop.call_soon(self._readable)

    def is_reading(self) -> bool:
        return self._reading

    # writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._closed or not data:
            return
        if not self._out:
            sent = self._send(data)
            if sent < 0 or sent == len(data):
                return
            data = memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._writable)
        self._out.append(data)
        self._out_size += len(data)
        if not self._paused and self._out_size > HIGH_WATER:
            self._paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes sent (maybe fewer than asked); -1 after a fatal error."""
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                sent += self._sock.send(view[sent:])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return sent
            except (OSError, ssl.SSLError) as e:
                self._fatal(e)
                return -1
        return sent

    def _writable(self) -> None:
        while self._out:
            data = self._out[0]
            sent = self._send(data)
            if sent < 0:
                return
            self._out_size -= sent
            if sent < len(data):
                self._out[0] = memoryview(data)[sent:]
                return
            self._out.popleft()
        self._loop.remove_writer(self._fd)
        if self._paused and self._out_size <= LOW_WATER:
            self._paused = False
            self._protocol.resume_writing()
        if self._closing:
            self._finish(None)

    def get_write_buffer_size(self) -> int:
        return self._out_size

    def can_write_eof(self) -> bool:
        return False

    # closing
    def is_closing(self) -> bool:
        return self._closing or self._closed

    def close(self) -> None:
        if self._closing or self._closed:
            return
        self._closing = True
        self.pause_reading()
        if not self._out:
            self._finish(None)

    def abort(self) -> None:
        self._finish(None)

    def _fatal(self, error: BaseException | None) -> None:
        self._finish(error if isinstance(error, Exception) else None)

    def _finish(self, error: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._out.clear()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, error)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("ssl_object", "socket"):
            return self._sock
        if name == "peername":
            return self._peername
        return default
