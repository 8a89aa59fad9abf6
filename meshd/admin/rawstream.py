"""A byte stream straight over a non-blocking socket, for peers meshd does not trust yet.

anyio's TCP streams sit on an asyncio transport, which reads whatever the
peer sends as soon as it arrives (uvloop: in chunks of up to 256 KiB, before
anyone asked). ``RawSocketStream`` reads only when asked and at most what was
asked, so what an unauthenticated peer sends waits in the kernel, and
``discard`` drops bytes into one shared scratch buffer without allocating.
The admin API runs its TLS (``anyio.streams.tls.TLSStream``) over it.
"""

from __future__ import annotations

import socket

import anyio
from anyio.abc import ByteStream
from anyio.lowlevel import checkpoint

# discard() reads into this and never looks: recv_into returns before any other task runs
_SCRATCH = memoryview(bytearray(64 * 1024))


class RawSocketStream(ByteStream):
    """anyio's ByteStream over a connected socket, which it owns (closed by ``aclose``)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def receive(self, max_bytes: int = 16 * 1024) -> bytes:
        """Up to ``max_bytes`` (by default about one TLS record: what a handshake may pull in
        beyond its own messages stays small)."""
        await checkpoint()  # even when data is ready: a fast peer must not starve the loop
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                await self._wait(readable=True)
                continue
            except OSError as e:
                raise self._broken(e) from e
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        await checkpoint()
        view = memoryview(item)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await self._wait(readable=False)
            except OSError as e:
                raise self._broken(e) from e

    async def send_eof(self) -> None:
        """Half-close: the peer reads our end of the stream; we may still read theirs."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise self._broken(e) from e

    def at_eof(self) -> bool:
        """Has the peer closed (or reset) without sending anything? Only when readable."""
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True

    async def discard(self) -> int:
        """Read and drop what the peer sends until it closes; how many bytes that was."""
        dropped = 0
        while True:
            await checkpoint()
            try:
                n = self.sock.recv_into(_SCRATCH)
            except BlockingIOError:
                await self._wait(readable=True)
                continue
            except OSError:
                return dropped
            if n == 0:
                return dropped
            dropped += n

    async def aclose(self) -> None:
        if self.sock.fileno() >= 0:
            anyio.notify_closing(self.sock)
            self.sock.close()

    async def _wait(self, readable: bool) -> None:
        if self.sock.fileno() < 0:
            raise anyio.ClosedResourceError
        await (anyio.wait_readable if readable else anyio.wait_writable)(self.sock)

    def _broken(self, error: OSError) -> Exception:
        if self.sock.fileno() < 0:
            return anyio.ClosedResourceError()
        return anyio.BrokenResourceError(str(error))
