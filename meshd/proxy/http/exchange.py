"""HTTP/1.1 with request hooks: each request head is held until hooks have looked at it.

``HttpExchange`` grows ``HttpObserver`` for connections whose plan has hooks
(``plan.HttpPlan.hooks``). The parser (llhttp) checks each head and reports
where messages end, but no URL or header callbacks: once it has accepted a
head, the target is cut out of its request line and the header lines are
handed to the hooks as raw bytes (``head.split_head``), split into headers
only if a hook asks (most requests meet no rule that reads one). Per
request: the head is held until its empty line (a head that arrives whole
in one chunk, the common case, is not copied into a buffer first),
fed to the parser, shown to the hooks as a ``RequestHead`` (or, where a lone
hook knows its request line from an earlier request, only that line:
``plan.LineHook``), and then
forwarded (maybe rewritten by ``SetHeader``/``AddHeader``) or answered here
(``Answer``: the server never sees it; the client gets the answer once the
responses to its earlier requests are through, and the connection closes),
or ended at once with no answer (``Close``).
An answer that keeps the connection alive (``Answer.keep_alive``) goes at
once when no earlier response is outstanding: the request's body is read
and dropped (fed to the parser, never forwarded) and the next request is
followed as usual. Where it cannot keep the connection (a body of unknown
length, a body its client waits for a 100 Continue to send, an upgrade,
pipelined requests whose responses are still due: the later ones would have
to wait behind it) it closes as any answer does.
``SetTarget`` rewrites the request line (the normalised target is what the
app receives).

httptools reports no byte offsets, so the exchange finds where a head ends
(its first empty line) and where a body ends (its Content-Length, or the
empty line that ends a chunked body) itself, feeds the parser exactly up to
there, and checks with the parser's callbacks that it agrees. Where it does
not, or the request cannot be parsed, the connection is answered (400, 431)
or closed: a request no hook has seen never goes on. Upgrade and CONNECT are
followed up to their head (hooks see it); what the client sends after it is
held (up to ``max_head``) until the server answers: a switch (101, or 2xx to
CONNECT) makes the connection opaque bytes; any other answer means the server
reads on in HTTP, so the next request must meet the hooks: with nothing
held, the exchange follows requests again with a new parser; with bytes held
(a request no hook has seen), the connection closes after the response, as
it does when bytes came before a switch. A forwarded HEAD ends the
following of responses (their bodies cannot be told), not of requests.

While someone listens (``Listening.on``, checked once per request head and
per response chunk), each request's start becomes a ``Stamp`` noted from the
head the hooks were shown (its target's path, its ``x-request-id``, its size
with its body's), and its response's bytes are counted, as the observer does:
its requests reach the tap and the access log, answered ones included.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httptools

from meshd.proxy.http.actions import (
    DROP,
    FORWARD,
    GIVE_UP,
    HOLD,
    AddHeader,
    Answer,
    Close,
    RequestAction,
    Send,
    SetHeader,
    SetTarget,
    StreamAction,
    Verdict,
)
from meshd.proxy.http.head import (
    CHUNKED,
    Edit,
    expects_continue,
    framing,
    request_id,
    rewrite,
    split_head,
    target_path,
)
from meshd.proxy.http.observe import _METHODS, HttpObserver, Stamp
from meshd.proxy.http.plan import RequestHead, RequestHook
from meshd.telemetry.events import Event

HEAD = -1  # ``left``: gathering a request head (a length >= 0: body bytes left; or CHUNKED)
DONE = -3  # ``left``: answered, closed or stopped: the client's bytes go nowhere now
SWITCHING = -4  # ``left``: an upgrade went on: the client's bytes held until the server answers
EARLY = "bytes sent before the protocol switched"
NOT_SWITCHED = "a request sent after an upgrade the server refused"
_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class HttpExchange(HttpObserver):
    """One connection's requests, each held, shown to the hooks, forwarded or answered."""

    __slots__ = (
        "acts",
        "answer",
        "by_line",
        "changed",
        "dropping",
        "due",
        "fed",
        "fields",
        "head_done",
        "held",
        "hooks",
        "left",
        "message_done",
        "method",
        "out",
        "started",
        "stray",
        "tail",
        "upgrade",
    )

    def __init__(
        self,
        publish: Callable[[Event], None],
        direction: str,
        source: str,
        destination: str,
        max_head: int,
        hooks: tuple[RequestHook, ...],
    ) -> None:
        super().__init__(publish, direction, source, destination, max_head)
        self.hooks = hooks
        # a lone hook that may know a request by its line (plan.LineHook): asked first
        self.by_line: Callable[[bytes], bool] | None = (
            getattr(hooks[0], "by_line", None) if len(hooks) == 1 else None
        )
        self.left = HEAD
        self.held = bytearray()  # the head being gathered (and what followed it in its chunk)
        self.fed = 0  # how much of ``held`` the parser has seen
        self.tail = b""  # a chunked body's last 3 bytes: its end may straddle two chunks
        self.method = ""
        self.fields = b""  # the header lines of the head under way (see head.split_head)
        self.started = 0.0
        self.head_done = self.message_done = self.upgrade = self.stray = False
        self.dropping = False  # the body under way belongs to a request answered here
        # an answer waiting for the responses to earlier requests: (answer, method, started)
        self.answer: tuple[Answer, str, float] | None = None
        self.due = False
        # what one call of request_bytes hands back (see _verdict)
        self.out: list[bytes | memoryview] = []
        self.acts: list[StreamAction] = []
        self.changed = False

    # request parser callbacks
    def on_message_begin(self) -> None:
        # a message the exchange did not see start as a head: the framing is not what it
        # thought, and a request would go on unseen (see _feed_body)
        self.stray = self.left != HEAD
        self.started = self.chunk_time
        self.head_done = self.message_done = False

    def on_headers_complete(self) -> None:
        # called back from inside requests.feed_data: requests is the parser
        raw = self.requests.get_method()  # type: ignore[union-attr]
        self.method = _METHODS.get(raw) or raw.decode()
        self.head_done = True

    def on_message_complete(self) -> None:
        self.message_done = True

    def _responded(self) -> None:
        """After the parser read the server's bytes, where an answer waits or an upgrade
        is under way (checked per chunk, not per response: only these states need it)."""
        if self.pending:
            return
        if self.answer is not None:
            self.due = True  # the earlier requests have their responses: the answer's turn
        elif self.left == SWITCHING and not self._tunnel():
            self._not_switched()

    # the exchange protocol
    def request_bytes(self, data: bytes | memoryview) -> Verdict:
        """Bytes the client sent: FORWARD when they go on as they are, else what to do."""
        self.chunk_time = time.monotonic()
        left = self.left
        if left > len(data):  # inside a body that goes on past this chunk: nothing to find
            self.left = left - len(data)
            if self._feed_body(data):
                return DROP if self.dropping else FORWARD
            return self._verdict()
        if self.requests is None or left <= DONE:  # given up (upgraded), answered, switching
            if self.requests is None:
                return GIVE_UP
            if left == SWITCHING:
                self.changed = False
                self._hold(data)
                return self._verdict()
            return DROP
        if left == HEAD and not self.held and len(data) <= self.max_head:
            head = bytes(data)
            found = head.find(b"\r\n\r\n")
            if found > 0 and found == len(head) - 4 and head[0] > 32:
                return self._alone(head)
        self.changed = False
        view, pos = memoryview(data), 0
        while pos < len(view) and self.left != DONE:
            if self.left == HEAD:
                pos = self._head(view, pos)
            elif self.left == CHUNKED:
                pos = self._chunked(view, pos)
            else:
                pos = self._counted(view, pos)
        return self._verdict()

    def response_bytes(self, data: bytes | memoryview) -> Verdict:
        """Bytes the server sent: FORWARD, or FORWARD them and then give the waiting answer."""
        responses = self.responses
        if responses is None:
            return FORWARD  # responses are not followed any more; requests still are
        if self.listening.on:
            self._count_out(data)
        try:
            responses.feed_data(data)
        except _PARSER_ERRORS as error:
            if self.answer is not None or self.left == SWITCHING:
                self._responded()
            if self.left == SWITCHING:  # a 101 (llhttp stops at an upgrade), a tunnel's bytes
                upgraded = isinstance(error, httptools.HttpParserUpgrade)
                return self._switched(upgraded or self._tunnel())
            return self._lose_responses()
        if self.answer is not None or self.left == SWITCHING:
            self._responded()
        if self.due:  # an answer's turn, or an upgrade's response under way
            return self._release(bytes(data))
        return FORWARD

    def finished(self) -> None:
        if self.answer is not None:  # the connection ended before the answer's turn
            _, method, started = self.answer
            self.answer = None
            self._completed(method, 0, started)
        self.held.clear()
        super().finished()

    def at_rest(self) -> bool:
        """The observer's, and no head held, no answer waiting, no body on its way.

        (``left`` tells of a request still being sent: this exchange's parser
        callbacks replace the observer's, ``sending`` among them.)
        """
        return super().at_rest() and self.left == HEAD and not self.held and self.answer is None

    outgoing = request_bytes
    incoming = response_bytes

    # --- request heads ----------------------------------------------------
    def _head(self, view: memoryview, pos: int) -> int:
        """Gather a head from ``view[pos:]``; once whole, act on it. Where the caller goes on."""
        if not self.held:  # the head starts in this chunk: usually it is all there
            probe = bytes(view[pos : pos + self.max_head])
            found = probe.find(b"\r\n\r\n")
            if found > 0 and probe[0] > 32:  # (empty lines before it: the long way)
                stop = found + 4
                head = probe[:stop] if stop < len(probe) else probe
                if not self._feed_head(head):
                    return len(view)
                return self._head_done(head, view, pos, pos + stop)
        return self._gather(view, pos)

    def _gather(self, view: memoryview, pos: int) -> int:
        """The long way: hold what came until an empty line ends the head (over chunks)."""
        held, end = self.held, len(view)
        start = max(0, len(held) - 3)  # an empty line may straddle what was held and this chunk
        self.changed |= bool(held)  # what goes on is no longer this chunk as it is
        held += view[pos:]
        while (found := held.find(b"\r\n\r\n", start)) >= 0 and found + 4 <= self.max_head:
            if not self._feed_head(held[self.fed : found + 4]):
                return end
            self.fed = found + 4
            if self.head_done:
                head, rest = bytes(held[: self.fed]), len(held) - self.fed
                del held[:]  # what followed the head is the end of this chunk: read on there
                self.fed = 0
                self.changed = True
                return self._head_done(head, view, -1, end - rest)
            start = found + 1  # blank lines before a request line: not its end
        if len(held) > self.max_head:
            self._answer_request(Answer(431))
        else:
            self.changed = True  # held here, not forwarded
        return end

    def _feed_head(self, head: bytes | bytearray) -> bool:
        requests = self.requests
        assert requests is not None
        try:
            requests.feed_data(head)
        except httptools.HttpParserUpgrade:
            self.upgrade = True
        except httptools.HttpParserError:
            self._answer_request(Answer(400))
            return False
        return True

    def _alone(self, head: bytes) -> Verdict:
        """A chunk that holds one whole head and nothing else (no body, no empty lines
        before it): the most common request of all, the short way when one hook lets it
        go on as it is; anything else the usual way from where it stands."""
        requests = self.requests
        assert requests is not None  # request_bytes gave up before this otherwise
        try:
            requests.feed_data(head)
        except httptools.HttpParserUpgrade:
            self.upgrade = True
        except httptools.HttpParserError:
            self._answer_request(Answer(400))
            return self._verdict()
        by_line = self.by_line  # (only where there is one hook)
        if (
            by_line is not None
            and self.message_done  # (so its head is done too)
            and not self.upgrade
            and self.responses is not None
            and not self.listening.on
            and by_line(head[: head.find(b"\r\n")])
        ):  # a line its hook knows (a bare LF before it: no line it was shown)
            self.head_done = False
            self.pending.append((self.method, self.started))
            return FORWARD
        self.changed = False
        hooks = self.hooks
        if self.head_done and self.message_done and not self.upgrade and len(hooks) == 1:
            end = head.find(b"\n") - 1  # where the request line ends: its CR (else a bare LF)
            first = head.find(b" ", 0, end) + 1  # the target: between the line's two blanks
            last = head.rfind(b" ", first, end)
            method = self.method
            if (
                head[end] == 13
                and 0 < first < last
                and head[first] != 32
                and head[last - 1] != 32
                and method != "HEAD"
            ):
                self.fields = fields = head[end + 2 : -2]
                target = head[first:last]
                if self.listening.on:
                    self._note(head, target, fields)
                request = RequestHead(method, target.decode("latin-1"), (), fields, head[:end])
                actions = hooks[0](request)
                if not actions and self.responses is not None:
                    self.head_done = False
                    self.pending.append((method, self.started))
                    return FORWARD
                self._hooked(self._ask(request, actions), head, head, 0, len(head))
                return self._verdict()
        self._head_done(head, head, 0, len(head))
        return self._verdict()

    def _head_done(self, head: bytes, view: memoryview | bytes, start: int, pos: int) -> int:
        """The head is whole and parsed: let the hooks act; where its chunk goes on.

        ``start``: where the head began in ``view`` (-1: it was gathered over chunks).
        """
        if not self.head_done:  # a head that begins with a method always ends here
            self._close("a head the parser did not finish")
            return len(view)
        parts = split_head(head)
        if parts is None:
            self._answer_request(Answer(400))
            return pos
        target, self.fields = parts
        if self.listening.on:
            self._note(head, target, self.fields)
        request = RequestHead(self.method, target.decode("latin-1"), (), self.fields)
        return self._hooked(self._ask(request), head, view, start, pos)

    def _hooked(
        self,
        asked: tuple[Answer | Close | None, list[Edit]],
        head: bytes,
        view: memoryview | bytes,
        start: int,
        pos: int,
    ) -> int:
        """Carry out what the hooks said of a head: the connection closed, the request
        answered here, or the head forwarded (edited); where its chunk goes on."""
        answer, edits = asked
        if isinstance(answer, Close):  # no answer: the connection ends here
            self._close(answer.reason)
            return pos
        if answer is not None:
            self._answer_request(answer)
            return pos
        self.head_done = False  # the next head is not done before the parser says so
        if edits:
            self.out.append(rewrite(head, edits))
            self.changed = True
        else:
            self.out.append(view[start:pos] if start >= 0 else head)
        return self._forwarded(view, pos)

    def _note(self, head: bytes, target: bytes, fields: bytes) -> None:
        """While someone listens: the request's start becomes a ``Stamp`` with its path and
        request id, read from the head as the hooks got it, and its size (the head, and a
        body whose length it gives; a chunked body's bytes are added as they pass)."""
        stamp = Stamp(self.started)
        stamp.path, stamp.request_id = target_path(target), request_id(fields)
        stamp.bytes_in, stamp.bytes_out = len(head), 0
        if not self.message_done:
            length = framing(fields)
            if length is not None and length > 0:
                stamp.bytes_in += length
        self.started = stamp

    def _answered(self, started: float, answer: Answer) -> None:
        """A request answered here: what the client is sent is its response's size."""
        if started.__class__ is Stamp:
            started.bytes_out = len(answer.encode())

    def _ask(
        self, request: RequestHead, first: tuple[RequestAction, ...] | None = None
    ) -> tuple[Answer | Close | None, list[Edit]]:
        """Ask each hook in turn (none after an answer); ``first``: what the first said."""
        edits: list[Edit] = []
        for i, hook in enumerate(self.hooks):
            actions = first if i == 0 and first is not None else hook(request)
            for action in actions:
                if isinstance(action, Answer | Close):
                    return action, edits
                if not isinstance(action, SetHeader | AddHeader | SetTarget):
                    raise TypeError(f"{action!r} is not carried out on a request head")
                edits.append(action)
        return None, edits

    def _forwarded(self, view: memoryview | bytes, pos: int) -> int:
        """The head went on: follow its body (or what an upgrade turns the connection into)."""
        if self.responses is not None:
            self.pending.append((self.method, self.started))
        if self.upgrade:  # hooks saw the head; what follows waits for the server's answer
            pipelined = self.method == "CONNECT" and len(self.pending) > 1
            if self.responses is None or pipelined or self.method == "HEAD":
                # whether it switched could not be told: closed rather than relayed unseen
                self.out.pop()
                self._close("an upgrade whose answer cannot be told")
                return len(view)
            self.left, self.due = SWITCHING, self.method == "CONNECT"
            self._hold(view[pos:])
            return len(view)
        if self.method == "HEAD":
            self._lose_responses()
        left = HEAD if self.message_done else framing(self.fields)
        if left is None:
            self._close("a request body of unknown length")
        else:
            self.left, self.tail = left, b""
        return pos

    # --- upgrades ---------------------------------------------------------
    def _hold(self, data: bytes | memoryview) -> None:
        """Hold what the client sends after an upgrade head until the server answers it."""
        if data:
            self.changed = True
            self.held += data
            if len(self.held) > self.max_head:
                self.held.clear()
                self._close("too much sent before the protocol switched")

    def _switched(self, told: bool = True) -> Verdict:
        """The server switched protocols: the rest is opaque bytes (if nothing came early)."""
        self.left, self.due = DONE, False
        if self.held or not told:  # sent before the switch: read in the new protocol
            self.held.clear()
            return (Close(EARLY if told else "a response to an upgrade the parser refused"),)
        return self._give_up()

    def _tunnel(self) -> bool:
        """A 2xx answered CONNECT (``due`` marks a CONNECT while switching): a tunnel."""
        responses = self.responses
        return self.due and responses is not None and 200 <= responses.get_status_code() < 300

    def _not_switched(self) -> None:
        """The server answered the upgrade and stays HTTP: its next request meets the hooks."""
        if self.held:  # a request no hook has seen: the connection ends after this response
            self.held.clear()
            self.left, self.due = DONE, True
            return
        self.left, self.upgrade, self.due = HEAD, False, False
        self.requests = httptools.HttpRequestParser(self)  # llhttp stays stopped at an upgrade

    # --- request bodies ---------------------------------------------------
    def _counted(self, view: memoryview, pos: int) -> int:
        piece = view[pos : pos + self.left]
        if not self._feed_body(piece):
            return len(view)
        if self.dropping:
            self.changed = True  # what goes on is no longer this chunk as it is
        else:
            self.out.append(piece)
        self.left -= len(piece)
        if self.left == 0:
            self._message_end()
        return pos + len(piece)

    def _chunked(self, view: memoryview, pos: int) -> int:
        """Feed up to each empty line (a chunked body ends with one) until the body ends."""
        rest = bytes(view[pos:])
        probe, shift = self.tail + rest, len(self.tail)
        fed, found = 0, probe.find(b"\r\n\r\n")
        while found >= 0:
            stop = found + 4 - shift
            if not self._feed_body(rest[fed:stop]):
                return len(view)
            fed = stop
            if self.message_done:
                if self.dropping:
                    self.changed = True
                else:
                    self.out.append(view[pos : pos + stop])
                self.left, self.dropping = HEAD, False
                self._body_bytes(stop)
                return pos + stop
            found = probe.find(b"\r\n\r\n", found + 1)
        if self._feed_body(rest[fed:]):
            if self.dropping:
                self.changed = True
            else:
                self.out.append(view[pos:])
            self.tail = probe[-3:]
            self._body_bytes(len(rest))
        return len(view)

    def _body_bytes(self, size: int) -> None:
        """A chunked body's bytes that passed: they count for its request, if noted."""
        started = self.started
        if started.__class__ is Stamp:
            started.bytes_in += size

    def _feed_body(self, piece: bytes | memoryview) -> bool:
        requests = self.requests
        assert requests is not None
        try:
            requests.feed_data(piece)
        except _PARSER_ERRORS:
            self._close("a request body the parser refused")
            return False
        if self.stray:
            self._close("a request began where its body was to be")
            return False
        return True

    def _message_end(self) -> None:
        if self.message_done:
            self.left, self.dropping = HEAD, False
        else:
            self._close("the body did not end where its Content-Length said")

    # --- answers and endings ------------------------------------------------
    def _answer_request(self, answer: Answer) -> None:
        """Answer the request being held: now, or once earlier requests have their responses."""
        if answer.keep_alive and self._keep_alive(answer):
            return
        answer = answer.closing()
        self.left, self.changed = DONE, True
        method = self.method if self.head_done else ""  # unparsable: no request to report
        if self.responses is None:  # the earlier responses cannot be told apart any more
            self._close("an answer that could not be put after the earlier responses")
        elif self.pending:
            self.answer = (answer, method, self.started)
        else:
            self._answered(self.started, answer)
            self._completed(method, answer.status, self.started)
            self.acts.append(answer)

    def _keep_alive(self, answer: Answer) -> bool:
        """Answer now and drop the request's body, if the connection can go on after it."""
        if not self.head_done or self.upgrade or self.pending or self.responses is None:
            return False  # pipelined: the next requests' responses would have to wait
        left = HEAD if self.message_done else framing(self.fields)
        if left is None:  # a body of unknown length: where the next request starts is unknown
            return False
        if left != HEAD and expects_continue(self.fields):
            return False  # its client may never send the body: the next request would be eaten
        self.left, self.tail, self.dropping = left, b"", left != HEAD
        self.head_done, self.changed = False, True
        self._answered(self.started, answer)
        self._completed(self.method, answer.status, self.started)
        self.acts.append(answer)
        return True

    def _release(self, data: bytes) -> Verdict:
        if self.answer is None:
            return self._after_upgrade(data)
        answer, method, started = self.answer
        self.answer, self.due = None, False
        self._answered(started, answer)
        self._completed(method, answer.status, started)
        return (Send(data), answer)

    def _after_upgrade(self, data: bytes) -> Verdict:
        """A response to an upgrade (or what the connection ends after, see _not_switched)."""
        if self.left == DONE:
            self.due = False
            return (Send(data), Close(NOT_SWITCHED))
        return self._switched() if self._tunnel() else FORWARD  # a 2xx opens the tunnel

    def _lose_responses(self) -> Verdict:
        self.responses = None
        self.pending.clear()
        if self.answer is None:
            return FORWARD
        self.answer = None
        return (Close("an answer that could not be put after the earlier responses"),)

    def _close(self, reason: str) -> None:
        self.left, self.changed = DONE, True
        self.acts.append(Close(reason))

    def _verdict(self) -> Verdict:
        """FORWARD when the chunk goes on as it came; else what to send, then what to do.

        ``out`` and ``acts`` are emptied each time: ``out`` may hold views of the
        caller's buffer, which must not outlive the call.
        """
        out, acts = self.out, self.acts
        if not self.changed and not acts:
            verdict: Verdict = FORWARD
        elif out:
            verdict = (Send(b"".join(out)), *acts)
        else:
            verdict = tuple(acts) if acts else HOLD
        out.clear()
        acts.clear()
        return verdict


class InboundHttpExchange(HttpExchange):
    """The same, on a stream whose requests come from the link (the app is the server)."""

    __slots__ = ()
    outgoing = HttpExchange.response_bytes
    incoming = HttpExchange.request_bytes
    client_is_app = False
