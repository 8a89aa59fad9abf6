"""GET /tap on the admin API: its query read into a filter, its lines streamed.

``tap_filter`` (pure) reads ``service=NAME`` (repeatable) and ``sample=R``
(0 < R <= 1). ``tap_answer`` takes one of the hub's client slots (a 503
when ``MAX_CLIENTS`` readers are connected) and returns a streaming
``Response`` whose writer sends a chunked ``application/x-ndjson`` body:
the lines the hub queued for this client, and ``{"dropped": N}`` at most
once a second when the client lost events. The writer ends when the
client closes (a read of its side sees the end), when a write waits more
than ``WRITE_TIMEOUT`` (a reader stuck that long loses its slot), or when
the operator's certificate expires; the slot is given back in every case.
"""

from __future__ import annotations

import math
import time
import urllib.parse

import anyio
from anyio.abc import ByteStream

from meshd.admin.wire import Response, error_response
from meshd.errors import ConfigError
from meshd.identity import check_name
from meshd.telemetry.tap import DROP_REPORT, MAX_SERVICES, TapClient, TapFilter, TapHub

NDJSON = "application/x-ndjson"
WRITE_TIMEOUT = 120.0  # a reader stuck longer than this loses its slot
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: " + NDJSON.encode() + b"\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n\r\n"
)


def tap_filter(query: str) -> TapFilter | str:
    """The filter a query asks for, or what is wrong with it."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        return "too many query parameters"
    services: set[str] = set()
    sample = 1.0
    for key, value in pairs:
        if key == "service":
            try:
                services.add(check_name("service", value))
            except ConfigError as e:
                return e.message
        elif key == "sample":
            try:
                sample = float(value)
            except ValueError:
                sample = math.nan
            if not 0.0 < sample <= 1.0:  # NaN fails too
                return f"sample must be a number in (0, 1], got {value[:20]!r}"
        else:
            return f"unknown query parameter {key[:40]!r} (service=NAME, sample=R)"
    if len(services) > MAX_SERVICES:
        return f"at most {MAX_SERVICES} service= filters"
    return TapFilter(frozenset(services), sample)


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def tap_answer(hub: TapHub, query: str) -> Response:
    """The answer to GET /tap: a stream, or 400 (a bad query), or 503 (no slot free)."""
    wanted = tap_filter(query)
    if isinstance(wanted, str):
        return error_response(400, wanted, "GET /tap?service=NAME&sample=0.1")
    client = hub.join(wanted)
    if client is None:
        return error_response(
            503,
            f"GET /tap already has {hub.max_clients} readers, its limit",
            "close another tap, or retry in a moment",
            close=True,
            headers=(("Retry-After", "1"),),
        )

    async def stream(conn: ByteStream, expires: float) -> None:
        try:
            await _serve(conn, client, expires)
        finally:
            hub.leave(client)

    return Response(200, b"", NDJSON, close=True, stream=stream)


async def _serve(conn: ByteStream, client: TapClient, expires: float) -> None:
    with anyio.fail_after(WRITE_TIMEOUT):
        await conn.send(HEAD)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_until_closed, conn, tg.cancel_scope)
        with anyio.move_on_after(max(0.0, expires - time.time())):
            await _write(conn, client)
        tg.cancel_scope.cancel()
    with anyio.move_on_after(1.0):
        await conn.send(b"0\r\n\r\n")  # the end of the body: the reader sees a clean end


async def _until_closed(conn: ByteStream, scope: anyio.CancelScope) -> None:
    """Read (and drop) what the client sends until it closes; then the stream ends."""
    try:
        while True:
            await conn.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    scope.cancel()


async def _write(conn: ByteStream, client: TapClient) -> None:
    """Send the client's lines as they come, and what it lost once a ``DROP_REPORT``."""
    next_report = time.monotonic() + DROP_REPORT
    while True:
        with anyio.move_on_after(max(0.0, next_report - time.monotonic())):
            await client.ready.wait()
        lines = client.take()
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + DROP_REPORT
            report = client.drop_report()
            if report is not None:
                lines.append(report)
        if lines:
            with anyio.fail_after(WRITE_TIMEOUT):
                await conn.send(chunk(b"".join(lines)))
