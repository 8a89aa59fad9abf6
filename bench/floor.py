#!/usr/bin/env python3
"""The thinnest multiplexing mTLS relay on uvloop: what any Python data plane costs at least.

    floor.py a LISTEN_PORT B_HOST B_PORT CERT KEY CA     # plain in, one mTLS link to b out
    floor.py b LISTEN_PORT APP_HOST APP_PORT CERT KEY CA # mTLS link in, a TCP connection per stream

Not meshd and not for use: a yardstick that run.py measures next to meshd (the
``python-floor`` chain). It has meshd's architecture and its fast paths (one
persistent TLS 1.3 link with mutual certificate checks, client connections
multiplexed over it, frames of one loop turn written as one TLS record, link
data parsed in place from uvloop's buffer) and nothing else: no HTTP parsing,
no events or metrics, no per-stream flow control (the whole link pauses
instead), no identity check beyond the certificate chain, no limits, no
deadlines. Per request and per connection, whatever meshd costs above it is the
price of its features, and what it costs itself is the floor no Python data
plane of this design goes below. Not in bulk: there its link-wide pausing moves
data less smoothly than meshd's per-stream windows.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import sys
from collections.abc import Callable
from typing import cast

import uvloop

HEADER = struct.Struct("!BII")  # kind, stream id, payload length
OPEN, DATA, FIN, RST = 1, 2, 3, 4
MAX_FRAME = 256 * 1024
BUFFER = 256 * 1024
JOIN_BELOW = 16 * 1024  # frames of one loop turn smaller than a TLS record are joined
FLUSH_AT = 256 * 1024  # write at once rather than wait for the loop turn to end (as meshd)
OnOpen = Callable[["Link", int], None]


class Link(asyncio.BufferedProtocol):
    """One end of the shared TLS connection."""

    def __init__(self, on_open: OnOpen | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.pending: list[bytes | memoryview] = []
        self.pending_size = 0
        self.flush_scheduled = False
        self.buffer = memoryview(bytearray(BUFFER))
        self.lent = False  # an app transport still holds a view of self.buffer
        self.header = bytearray()  # a frame header cut by the end of a read
        self.receiving = 0  # the stream whose DATA payload is arriving (looked up per piece)
        self.remaining = 0  # bytes of that payload still to come
        self.write_paused = False  # the link's send buffer is full: no app is read
        self.blocked: set[Stream] = set()  # apps that cannot take more: the link is not read
        self.on_open = on_open
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ready.set_result(None)

    def write(self, data: bytes | memoryview) -> None:
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= FLUSH_AT:
            self.flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if not self.pending or self.transport is None or self.transport.is_closing():
            return
        pending, self.pending = self.pending, []
        size, self.pending_size = self.pending_size, 0
        if len(pending) == 1:
            self.transport.write(pending[0])
        elif size < JOIN_BELOW:
            self.transport.write(b"".join(pending))
        else:
            self.transport.writelines(pending)

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in self.streams.values():
            if stream.transport is not None:
                stream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in self.streams.values():
            if stream.transport is not None:
                stream.transport.resume_reading()

    def app_blocked(self, stream: Stream, blocked: bool) -> None:
        """An app's send buffer filled up (or drained): stop (or go on) reading the link."""
        was = bool(self.blocked)
        if blocked:
            self.blocked.add(stream)
        else:
            self.blocked.discard(stream)
        if self.transport is not None and was != bool(self.blocked):
            if self.blocked:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.lent:
            self.lent = False
            self.buffer = memoryview(bytearray(BUFFER))
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        # DATA payloads go to the app as they arrive, in pieces if a read cuts them
        data, offset, streams = self.buffer, 0, self.streams
        while offset < nbytes:
            if self.remaining:
                take = min(self.remaining, nbytes - offset)
                receiver = streams.get(self.receiving)  # gone if the app closed meanwhile
                if receiver is not None:
                    receiver.deliver(data[offset : offset + take])
                offset += take
                self.remaining -= take
                continue
            if not self.header and nbytes - offset >= HEADER.size:
                kind, sid, length = HEADER.unpack_from(data, offset)
                offset += HEADER.size
            else:  # a header cut by the end of a read
                taken = data[offset : min(nbytes, offset + HEADER.size - len(self.header))]
                self.header += taken
                offset += len(taken)
                if len(self.header) < HEADER.size:
                    return
                kind, sid, length = HEADER.unpack(self.header)
                self.header.clear()
            stream = streams.get(sid)
            if kind == DATA:
                self.receiving, self.remaining = sid, length
            elif kind == OPEN and self.on_open is not None:
                self.on_open(self, sid)
            elif stream is None:
                pass  # a stream that ended meanwhile
            elif kind == FIN:
                stream.remote_fin()
            elif kind == RST:
                del streams[sid]
                if stream.transport is not None:
                    stream.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self.streams.values():
            if stream.transport is not None:
                stream.transport.abort()
        self.lost.set_result(None)


class Stream(asyncio.Protocol):
    """An app connection carried over the link."""

    def __init__(self, link: Link, sid: int) -> None:
        self.link = link
        self.sid = sid
        self.transport: asyncio.Transport | None = None
        self.inbox: list[bytes] = []  # (b) data that came before the app connection
        self.fin_in = False
        self.fin_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.sid not in self.link.streams:  # (b) reset while the app connection was made
            self.transport.abort()
            return
        if self.link.write_paused:
            self.transport.pause_reading()
        for data in self.inbox:
            self.transport.write(data)
        self.inbox = []
        if self.fin_in:
            self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        link = self.link
        if len(data) <= MAX_FRAME:
            link.write(HEADER.pack(DATA, self.sid, len(data)))
            link.write(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), MAX_FRAME):
            chunk = view[start : start + MAX_FRAME]
            link.write(HEADER.pack(DATA, self.sid, len(chunk)))
            link.write(chunk)

    def eof_received(self) -> bool:
        self.fin_out = True
        self.link.write(HEADER.pack(FIN, self.sid, 0))
        if self.fin_in and self.transport is not None:
            self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.app_blocked(self, False)
        if self.link.streams.pop(self.sid, None) is not None and not (self.fin_in and self.fin_out):
            self.link.write(HEADER.pack(RST, self.sid, 0))

    def deliver(self, data: memoryview) -> None:
        transport = self.transport
        if transport is None:
            self.inbox.append(bytes(data))
            return
        transport.write(data)
        if transport.get_write_buffer_size():
            self.link.lent = True

    def remote_fin(self) -> None:
        self.fin_in = True
        if self.transport is not None:
            self.transport.write_eof()
            if self.fin_out:
                self.transport.close()

    def pause_writing(self) -> None:
        self.link.app_blocked(self, True)

    def resume_writing(self) -> None:
        self.link.app_blocked(self, False)


def tls_context(server: bool, cert: str, key: str, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.check_hostname = False  # the chain is checked; meshd checks SPIFFE IDs on top
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(role: str, listen: int, host: str, port: int, cert: str, key: str, ca: str) -> None:
    loop = asyncio.get_running_loop()
    if role == "a":
        _, link = await loop.create_connection(
            Link, host, port, ssl=tls_context(False, cert, key, ca), server_hostname=host
        )
        await link.ready
        next_sid = 1

        def accept() -> Stream:
            nonlocal next_sid
            stream = Stream(link, next_sid)
            link.streams[next_sid] = stream
            link.write(HEADER.pack(OPEN, next_sid, 0))
            next_sid += 2
            return stream

        server = await loop.create_server(accept, "127.0.0.1", listen, backlog=4096)
        await link.lost  # nothing to serve without the link: fail loudly, do not hang clients
        server.close()
        raise SystemExit("floor a: the link to b was lost")
    tasks: set[asyncio.Task[object]] = set()

    def on_open(link: Link, sid: int) -> None:
        stream = link.streams[sid] = Stream(link, sid)
        task = loop.create_task(loop.create_connection(lambda: stream, host, port))
        tasks.add(task)
        task.add_done_callback(lambda done: connected(done, stream))

    def connected(task: asyncio.Task[object], stream: Stream) -> None:
        tasks.discard(task)
        failed = task.cancelled() or task.exception() is not None
        if failed and stream.link.streams.pop(stream.sid, None) is not None:
            stream.link.write(HEADER.pack(RST, stream.sid, 0))

    context = tls_context(True, cert, key, ca)
    server = await loop.create_server(
        lambda: Link(on_open), "127.0.0.1", listen, ssl=context, backlog=4096
    )
    await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 7 or argv[0] not in ("a", "b"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    role, listen, host, port, cert, key, ca = argv
    uvloop.run(serve(role, int(listen), host, int(port), cert, key, ca))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
