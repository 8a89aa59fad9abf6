"""HTTP/1.1 on an admitted admin API connection: requests in, answers out, a clean close.

Content-Length bodies only, keep-alive, size limits, a deadline on every read
and write (``AdminLimits``). A session serves requests until either side
closes, or until the peer's certificate expires: no request is answered past
``expires``; a session's ``admit`` may refuse a request on its head (a monitor's
anything but GET /metrics). A host identity gets ``one`` request instead, whose head is
seen (and may be answered) before its body is read, under a body limit of
its own. The last answer on a connection is followed by a *linger*: we
half-close and drop, unread, what the peer still sends, for a moment, so that
closing the socket does not reset our answer away before the peer has read it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from meshd.admin.api import AdminLimits
from meshd.admin.rawstream import RawSocketStream
from meshd.admin.wire import (
    HttpError,
    Request,
    Response,
    content_length,
    parse_head,
    query_of,
)

Answer = Callable[[Request], Awaitable[Response]]
Admit = Callable[[Request], Response | None]  # sees a request's head; an answer refuses it


@dataclass(frozen=True)
class Conn:
    """One connection: the stream HTTP runs over (TLS, or the socket), the socket, the peer."""

    http: ByteStream
    raw: RawSocketStream
    peer: str


class Exchange:
    """Serves HTTP sessions under one set of limits; counts bad requests."""

    def __init__(self, limits: AdminLimits) -> None:
        self.limits = limits
        self.bad_requests = 0
        self.lingering = 0  # connections dropping what their peer still sends

    async def session(
        self, conn: Conn, answer: Answer, expires: float, admit: Admit | None = None
    ) -> bool:
        """Serve requests until either side closes; True when it ended because the
        peer's certificate expired (``expires``, in epoch seconds). ``admit`` sees each
        request's head: its answer, sent before the body is read, ends the session."""
        reader = BufferedByteReceiveStream(conn.http)
        while True:
            try:
                request = await self._read(reader, expires, admit)
            except HttpError as e:
                self.bad_requests += 1
                await self.finish(conn, e.response)
                return False
            if isinstance(request, Response):
                await self.finish(conn, request)
                return False
            if time.time() >= expires:
                return True  # whatever it asked, it asked too late
            if request is None:
                return False
            response = await answer(request)
            if response.stream is not None:  # it writes the rest of this connection's life
                await response.stream(conn.http, expires)
                return time.time() >= expires
            if not request.keep_alive or response.close:
                await self.finish(conn, response)
                return False
            await self.send(conn.http, response, keep_alive=True)

    async def one(
        self,
        conn: Conn,
        admit: Admit,
        answer: Answer,
        max_body: int,
        expires: float,
        timeout: float,
    ) -> None:
        """Serve a single request, read within ``timeout``, then close: ``admit`` may answer
        it before its body is read."""
        reader = BufferedByteReceiveStream(conn.http)
        try:
            request = await self._receive(reader, max_body, admit, timeout)
        except HttpError as e:
            self.bad_requests += 1
            await self.finish(conn, e.response)
            return
        if isinstance(request, Response):
            await self.finish(conn, request)
        elif request is not None and time.time() < expires:
            await self.finish(conn, await answer(request))

    async def send(self, stream: ByteStream, response: Response, keep_alive: bool) -> None:
        with anyio.fail_after(self.limits.write_timeout):
            await stream.send(response.encode(keep_alive))

    async def finish(self, conn: Conn, response: Response) -> None:
        """Send the last answer on ``conn``, then linger."""
        await self.send(conn.http, response, keep_alive=False)
        await self.linger(conn.raw)

    async def linger(self, raw: RawSocketStream) -> None:
        """Half-close, then drop what the peer still sends (for ``limits.linger`` at most)."""
        with anyio.move_on_after(self.limits.linger):
            await raw.send_eof()
            if self.lingering < self.limits.max_lingering:  # else closing may reset the answer
                self.lingering += 1
                try:
                    await raw.discard()
                finally:
                    self.lingering -= 1

    async def _read(
        self, reader: BufferedByteReceiveStream, expires: float, admit: Admit | None
    ) -> Request | Response | None:
        """The next request (or ``admit``'s answer to its head), or None when the peer closed
        or idled out between requests."""
        if not reader.buffer:
            with anyio.move_on_after(min(self.limits.idle_timeout, expires - time.time())):
                try:
                    reader.feed_data(await reader.receive())
                except anyio.EndOfStream:
                    return None
            if not reader.buffer:
                return None
        return await self._receive(
            reader, self.limits.max_body_bytes, admit, self.limits.read_timeout
        )

    async def _receive(
        self, reader: BufferedByteReceiveStream, max_body: int, admit: Admit | None, timeout: float
    ) -> Request | Response | None:
        """A request read within ``timeout`` (None if the peer went away), or ``admit``'s
        answer to its head."""
        try:
            with anyio.fail_after(timeout):
                head = await reader.receive_until(b"\r\n\r\n", self.limits.max_header_bytes)
                request = Request(*parse_head(head), query=query_of(head))
                early = admit(request) if admit is not None else None
                if early is not None:
                    return early
                length = content_length(request.headers, max_body)
                body = await reader.receive_exactly(length) if length else b""
        except anyio.DelimiterNotFound:
            raise HttpError(431, "request header too large") from None
        except TimeoutError:
            raise HttpError(408, "request not received in time") from None
        except (anyio.IncompleteRead, anyio.EndOfStream):
            return None
        return replace(request, body=body)
