"""HTTP/1.1 observation: watch a relayed connection's bytes and report each request.

``HttpObserver`` is the exchange of a connection that only needs metrics
(the common case: HTTP to or from a service without request hooks;
``InboundObserver`` where the app is the server): it never changes or holds
bytes, feeds them to httptools' C parsers (llhttp) and publishes a
``RequestCompleted`` per response. Its verdict per chunk is a bool (``actions.FORWARD``, or
``actions.GIVE_UP``). It gives up (the connection goes on as opaque TCP) on
anything it cannot follow: parse errors, Upgrade/CONNECT, HEAD (whose
responses carry no body that the parser could know of), or a request head
larger than the limit. ``exchange.HttpExchange`` grows it for request hooks.

While someone listens (a tap client, an access log: ``Listening.on``, checked
once per chunk the client sends and per chunk of a response), the observer
also notes each request's path and ``x-request-id`` from the request line and
head of the chunk that starts it (cut by ``head.split_head``, as the
exchange's heads are), the request bytes it sees and the bytes of its
response, in a ``Stamp`` (its start time, carrying the notes), and publishes
``RequestObserved`` instead of ``RequestCompleted``. Nobody listening: none
of that runs.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace

import httptools

from meshd.proxy.http.actions import Verdict
from meshd.proxy.http.head import request_id, split_head, target_path
from meshd.telemetry.events import Event, RequestCompleted, RequestObserved

_REQUEST_START = re.compile(rb"^[A-Z]{3,12} ")
# a header line of a lower-cased head that says a body follows
_BODY = re.compile(rb"^(?:content-length:[ \t]*0*[1-9]|transfer-encoding:)", re.MULTILINE)
NOTED = 16384  # bytes of a chunk looked at for request lines


def looks_like_http(first_bytes: bytes | memoryview) -> bool:
    """Does a connection's first chunk start an HTTP/1.x request? (A view is matched in
    place: an inbound stream's first chunk may be one of its link's read buffer.)"""
    return _REQUEST_START.match(first_bytes) is not None


# the methods we meet, as str without a decode per request
_METHODS = {
    m.encode(): m
    for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")
}


class Listening:
    """Whether anyone wants requests' paths (one per runtime, shared by its observers)."""

    __slots__ = ("on",)

    def __init__(self, on: bool = False) -> None:
        self.on = on


NOBODY = Listening()  # an observer's until its connection's runtime gives it its own


class Stamp(float):
    """When a request began (a monotonic time, as the plain float it stands in for), with
    what a listener is shown of it."""

    __slots__ = ("bytes_in", "bytes_out", "path", "request_id")
    bytes_in: int
    bytes_out: int
    path: str
    request_id: str


def request_notes(chunk: bytes | memoryview, most: int) -> list[tuple[str, str]]:
    """(path, request id) of the requests whose heads ``chunk`` starts with, in order, at
    most ``most`` (the requests the parser saw begin in it: a peer's bytes are read no
    further than that): the one it begins with and those pipelined right after a head
    without a body (what follows a body is not looked at). The parser accepted these bytes;
    ``head.split_head`` cuts each head as the exchange's are cut (a head the chunk ends
    inside of: what came of it). Only for a chunk that starts a request.
    """
    data = bytes(chunk[:NOTED])
    notes: list[tuple[str, str]] = []
    start = 0
    while start < len(data) and len(notes) < most:
        end = data.find(b"\r\n\r\n", start)
        parts = split_head(data[start : end + 4] if end >= 0 else data[start:] + b"\r\n\r\n")
        if parts is None:
            break
        target, fields = parts
        lowered = fields.lower()  # header names in any case; values as sent
        notes.append((target_path(target), request_id(fields, lowered)))
        if end < 0 or _BODY.search(lowered):
            break
        start = end + 4
    return notes


def discard(event: Event) -> None:
    """Where a plan that does not observe sends its requests' events (nowhere): an observer
    given it builds no ``RequestCompleted`` per response."""


class HttpObserver:
    """Follows requests (client → server) and responses (server → client) of one connection.

    This runs for every request meshd relays, so it does little per request: three
    parser callbacks for the request (begin, end of head, end of message), one for
    the response, and the clock read once per chunk of bytes rather than per callback.
    """

    __slots__ = (
        "chunk_time",
        "destination",
        "direction",
        "gave_up",
        "head_bytes",
        "listening",
        "max_head",
        "pending",
        "publish",
        "requests",
        "responses",
        "sending",
        "source",
    )

    def __init__(
        self,
        publish: Callable[[Event], None],
        direction: str,
        source: str,
        destination: str,
        max_head: int,
    ) -> None:
        self.publish = publish
        self.direction = direction
        self.source = source
        self.destination = destination
        self.max_head = max_head
        self.listening = NOBODY  # set by install.exchange_for
        self.head_bytes = 0
        self.chunk_time = 0.0
        self.pending: deque[tuple[str, float]] = deque()
        self.gave_up = False
        # a request message begun and not yet complete: a server may answer it early (413)
        # while its body is still on its way, and then no request is pending, yet the
        # connection is not between requests
        self.sending = False
        # Each parser holds this observer (its callbacks): a reference cycle, which _detach
        # breaks when the observer is done, so that it is freed at once and not by the GC.
        self.requests: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        # the response parser calls our method directly (no forwarding object in between)
        self.responses: httptools.HttpResponseParser | None = httptools.HttpResponseParser(
            SimpleNamespace(on_message_complete=self.response_complete)
        )

    # request parser callbacks
    def on_message_begin(self) -> None:
        self.head_bytes = 0
        self.sending = True
        # queued now, not when the head is complete: a server may answer early (413, 431)
        # and that answer belongs to this request, not to the next one
        self.pending.append(("", self.chunk_time))  # when the chunk that starts it arrived

    def on_headers_complete(self) -> None:
        requests = self.requests
        assert requests is not None  # called back from inside requests.feed_data
        raw = requests.get_method()
        method = _METHODS.get(raw) or raw.decode()
        if method == "HEAD":
            self.gave_up = True
        if self.pending and not self.pending[-1][0]:
            self.pending[-1] = (method, self.pending[-1][1])
        self.head_bytes = -1  # head done: no limit on bodies

    def on_message_complete(self) -> None:
        self.sending = False

    def response_complete(self) -> None:
        responses = self.responses
        assert responses is not None  # called back from inside responses.feed_data
        status = responses.get_status_code()
        if 100 <= status < 200:
            return  # interim response; the final one follows
        if self.pending:
            method, started = self.pending.popleft()
            if self.publish is discard:  # not observed (a policy hook alone): nothing to build
                return
            if started.__class__ is Stamp:  # noted while someone listened
                self._observed(method, status, started)
                return
            self.publish(
                RequestCompleted(
                    self.direction,
                    self.source,
                    self.destination,
                    method,
                    status,
                    time.monotonic() - started,
                )
            )

    # the exchange protocol (plus finished)
    def request_bytes(self, data: bytes | memoryview) -> Verdict:
        """Bytes the client sent: FORWARD, or GIVE_UP."""
        self.chunk_time = time.monotonic()
        if self.listening.on:
            return self._noted(data)
        if self.head_bytes >= 0:
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head:
                return self._give_up()
        requests = self.requests
        if requests is None:
            return False
        try:
            requests.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            return self._give_up()
        return not self.gave_up or self._give_up()

    def _noted(self, data: bytes | memoryview) -> Verdict:
        """``request_bytes`` while someone listens: the same, and the requests that began in
        this chunk get a ``Stamp`` with their notes (the chunk's bytes count for the request
        under way when it came, else for the first that began in it)."""
        pending = self.pending
        before = len(pending)
        going = pending[-1][1] if self.sending and pending else None
        if self.head_bytes >= 0:
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head:
                return self._give_up()
        requests = self.requests
        if requests is None:
            return False
        try:
            requests.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            return self._give_up()
        if going.__class__ is Stamp:
            going.bytes_in += len(data)
        if len(pending) > before:
            self._stamp(data, before, going is None)
        return not self.gave_up or self._give_up()

    def _stamp(self, data: bytes | memoryview, first: int, starts: bool) -> None:
        """The requests from ``first`` on began in ``data``; ``starts``: it begins with the
        first one's head. A chunk that began inside a body (the request under way) is not
        read for notes: its lines are the body's, whatever they look like (a client could
        forge the next request's path and id with them, or make each of many short lines
        cost a head's reading)."""
        pending = self.pending
        notes = request_notes(data, len(pending) - first) if starts else []
        size = len(data) if starts else 0
        for i in range(first, len(pending)):
            method, started = pending[i]
            path, request_id = notes[i - first] if i - first < len(notes) else ("", "")
            stamp = Stamp(started)
            stamp.path, stamp.request_id = path, request_id
            stamp.bytes_in = size if i == first else 0
            stamp.bytes_out = 0
            pending[i] = (method, stamp)

    def _observed(self, method: str, status: int, started: Stamp) -> None:
        self.publish(
            RequestObserved(
                self.direction,
                self.source,
                self.destination,
                method,
                status,
                time.monotonic() - started,
                started.path,
                started.request_id,
                started.bytes_in,
                started.bytes_out,
            )
        )

    def response_bytes(self, data: bytes | memoryview) -> Verdict:
        """Bytes the server sent: FORWARD, or GIVE_UP."""
        responses = self.responses
        if responses is None:
            return False
        if self.listening.on:
            self._count_out(data)
        try:
            responses.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            return self._give_up()
        return True

    def _count_out(self, data: bytes | memoryview) -> None:
        """Response bytes, while someone listens: they count for the oldest request waiting
        for its response (before the parser sees them: it may complete that response), so
        a chunk that ends one response and starts the next counts for the first."""
        pending = self.pending
        if pending:
            started = pending[0][1]
            if started.__class__ is Stamp:
                started.bytes_out += len(data)

    def finished(self) -> None:
        """The connection ended: requests still waiting got no response."""
        while self.pending:
            method, started = self.pending.popleft()
            self._completed(method, 0, started)
        self._detach()

    def _completed(self, method: str, status: int, started: float) -> None:
        """Publish one request's end (off the per-request path: ``response_complete``
        publishes its own, without this call)."""
        if not method:
            return
        if started.__class__ is Stamp:
            self._observed(method, status, started)
            return
        self.publish(
            RequestCompleted(
                self.direction,
                self.source,
                self.destination,
                method,
                status,
                time.monotonic() - started,
            )
        )

    def at_rest(self) -> bool:
        """Between requests: every one that began was sent whole and has its response (a
        link may move then).

        Asked only of streams whose link retires, never per chunk.
        """
        return (
            not (self.pending or self.sending)
            and self.requests is not None
            and self.responses is not None
        )

    # A stream calls outgoing (app -> link) and incoming (link -> app): aliases, not
    # wrappers, so that no call layer is added per chunk. Here the app is the client.
    outgoing = request_bytes
    incoming = response_bytes
    client_is_app = True

    def _give_up(self) -> bool:
        self.gave_up = True
        self.pending.clear()
        self._detach()
        return False

    def _detach(self) -> None:
        """Drop the parsers (they hold this observer); it follows no more bytes after this."""
        self.requests = self.responses = None


class InboundObserver(HttpObserver):
    """The same, on a stream whose requests come from the link (the app is the server)."""

    __slots__ = ()
    outgoing = HttpObserver.response_bytes
    incoming = HttpObserver.request_bytes
    client_is_app = False
