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
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace

import httptools

from meshd.proxy.http.actions import Verdict
from meshd.telemetry.events import Event, RequestCompleted

_REQUEST_START = re.compile(rb"^[A-Z]{3,12} ")


def looks_like_http(first_bytes: bytes | memoryview) -> bool:
    """Does a connection's first chunk start an HTTP/1.x request? (A view is matched in
    place: an inbound stream's first chunk may be one of its link's read buffer.)"""
    return _REQUEST_START.match(first_bytes) is not None


# the methods we meet, as str without a decode per request
_METHODS = {
    m.encode(): m
    for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")
}


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

    def response_bytes(self, data: bytes | memoryview) -> Verdict:
        """Bytes the server sent: FORWARD, or GIVE_UP."""
        responses = self.responses
        if responses is None:
            return False
        try:
            responses.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            return self._give_up()
        return True

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
