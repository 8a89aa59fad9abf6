"""Policy on the inbound side: first bytes, request judgements and what the caller sees.

A connection the policy does not allow wholesale (``Guard.admit`` said
inspect) gets ``FirstBytes`` as its exchange until its first bytes say what
it is (HTTP/1.x, or opaque TCP when they do not look like a request, or when
none came within ``SNIFF_WAIT``: server-first protocols). Its owner
(``meshd.proxy.inbound``) then installs a ``RequestJudge`` on an HTTP
exchange, or judges the TCP connection once (``judge_tcp``), and only then
connects the app. ``RequestJudge`` is the request hook (``plan.RequestHook``)
that carries out §2.11 per request: 400 on a target normalising rejects, the
normalised target forwarded (``SetTarget``), 403 with the JSON body of §2.6,
429 with ``retry-after``; each answer keeps the connection alive. On a
connection from a peer allowed wholesale it only normalises (``wholesale``:
400 or the normalised target; a clean target costs a few string tests). Every
decision is published (``AuthzDecided``, ``RateLimited``), but an allowed
request with no would-deny only adds one to its rule's ``AuthzTally`` (made
once per rule and swap; queued when the metrics took its last count) and
allocates no answer.

Judging reads the policy in force for each request (a push swaps the bundle:
the next request on a kept-alive connection meets the new policy, and a
peer allowed wholesale before and not now gets every step again).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import socket
import struct
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, cast

from meshd.policy.decisions import Deliver
from meshd.policy.guard import Guard
from meshd.policy.lang.evaluate import Decision, Request
from meshd.policy.lang.ratelimit import Limited, Take
from meshd.proxy.http.actions import (
    DROP,
    FORWARD,
    HOLD,
    Answer,
    Close,
    RequestAction,
    SetTarget,
    Verdict,
)
from meshd.proxy.http.plan import RequestHead
from meshd.telemetry.events import TALLY_REPUBLISH, AuthzDecided, AuthzTally, RateLimited
from meshd.telemetry.logs import clean

if TYPE_CHECKING:
    from meshd.policy.bundle import Bundle
    from meshd.runtime import Runtime

SNIFF_WAIT = 1.0  # seconds a connection may stay silent before it is judged as opaque TCP
SILENCE_TICK = 0.05  # seconds between two looks at the connections still silent (Silence)
SNIFF_BYTES = 13  # enough to tell an HTTP request line's method and its space
SNIFF_BLANK = 1024  # empty lines before a request line held before it is judged HTTP
# a method of any case (a lower-case one is a 400, §2.3) and its space: HTTP servers that
# read it (or lenient ones that serve it) must not get it as opaque TCP past the request rules
_REQUEST_START = re.compile(rb"[A-Za-z]{1,12} ")
_LINGER_ZERO = struct.pack("ii", 1, 0)
_NOTHING: tuple[RequestAction, ...] = ()
_STRICT: tuple[RequestAction, ...] = (Close("plaintext to a service whose mTLS is strict"),)
_JSON = ("content-type", "application/json")
_REPUBLISH_MASK = TALLY_REPUBLISH - 1
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()

Kind = Literal["http", "tcp"]


def request_id() -> str:
    """A request id unique in this meshd's life (random per process, then counted)."""
    return f"{_ID_PREFIX}{next(_ids):08x}"


def reset_hard(transport: asyncio.BaseTransport) -> None:
    """Abort ``transport`` with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already gone: abort closes what is left
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()  # type: ignore[attr-defined]


# --- first bytes ----------------------------------------------------------------
def kind_of(first: bytes) -> Kind | None:
    """HTTP or TCP by a connection's first bytes; None while they could still start a request.

    Empty lines before the request line are skipped, as llhttp (Node, httptools) does.
    """
    line = first.lstrip(b"\r\n")
    if not line:  # nothing yet, or only empty lines (too many: the exchange refuses them)
        return None if len(first) <= SNIFF_BLANK else "http"
    if _REQUEST_START.match(line, 0, SNIFF_BYTES) is not None:
        return "http"
    if len(line) < SNIFF_BYTES and line.isalpha():
        return None
    return "tcp"


class Silence:
    """When inspected connections have waited ``wait`` for their first bytes, on one loop.

    One timer for all of them, ticking every ``SILENCE_TICK`` while any waits: a
    timer made and cancelled per connection cost more than the rest of its first
    look. A connection is told at most ``SILENCE_TICK`` late while the wait
    stays as configured; one that was decided before is skipped (its
    ``FirstBytes`` has nobody to tell). The waits are in arrival order: after
    a reload that shortens the wait, the connections behind one that came
    before it wait as long as that one (at most the longer wait).
    """

    __slots__ = ("timer", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[tuple[float, FirstBytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, first: FirstBytes, wait: float) -> None:
        """Tell ``first`` when ``wait`` is over (called in the loop's thread)."""
        self.waiting.append((time.monotonic() + wait, first))
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(SILENCE_TICK, self._tick)

    def _tick(self) -> None:
        waiting, now = self.waiting, time.monotonic()
        self.timer = None
        try:
            while waiting and waiting[0][0] <= now:
                first = waiting.popleft()[1]
                if first.decide is not None:  # (most were decided long before)
                    first.silent()
        finally:  # one connection's failure must not leave the others untold
            if waiting and self.timer is None:
                self.timer = asyncio.get_running_loop().call_later(SILENCE_TICK, self._tick)


_recent: list[tuple[weakref.ref[asyncio.AbstractEventLoop], Silence]] = []  # see silence


def silence() -> Silence:
    """The running loop's ``Silence``: the one made for the last loop asked about, or a new
    one when the loop changed (tests run many loops one after another). It is held with a
    weak reference to its loop, so that a loop that ends is not kept; a ``Silence`` left
    behind keeps its own timer until every connection it watches is told."""
    loop = asyncio.get_running_loop()
    if _recent:
        ref, recent = _recent[0]
        if ref() is loop:
            return recent
    found = Silence()
    _recent[:] = [(weakref.ref(loop), found)]
    return found


class FirstBytes:
    """The exchange of an inspected connection until it is classified (streams and pipes).

    ``decide(kind, first, replay)`` is its owner's first look: it installs what
    the connection gets from now on and answers for ``first``, the bytes that
    decided it. Usually they are the chunk in hand (``replay`` False): the
    owner hands back the verdict of what it installed on them, and they go on
    from there: nothing is held and nothing passes twice. When earlier chunks were
    held (a request line split over reads) or nothing came in time
    (``silent``), ``replay`` is True: the owner replays ``first`` through what
    it installed, and the verdict is DROP (they were counted on arrival).
    """

    __slots__ = ("decide", "held")
    client_is_app = False  # inbound: the requests come from the peer

    def __init__(self, decide: Callable[[Kind, bytes, bool], Verdict], wait: float) -> None:
        self.held = b""
        self.decide: Callable[[Kind, bytes, bool], Verdict] | None = decide
        silence().watch(self, wait)

    def request_bytes(self, data: bytes | memoryview) -> Verdict:
        """The peer's bytes: held until they say what the connection is, then its owner's."""
        held = self.held
        first = held + data if held else bytes(data)
        kind = kind_of(first)
        if kind is None:
            self.held = first
            return HOLD
        decide = self.decide
        self.finished()
        return DROP if decide is None else decide(kind, first, bool(held))

    def response_bytes(self, data: bytes | memoryview) -> Verdict:
        # nothing to follow yet: the app is connected only after the decision, except for
        # a peer allowed wholesale, whose server-first app may speak before its peer does
        return FORWARD

    incoming = request_bytes
    outgoing = response_bytes

    def silent(self) -> None:
        """Called by ``Silence`` once the wait is over (a no-op when decided before)."""
        # Nothing came: a server-first protocol. What looked like the start of a request
        # line stays HTTP (its exchange waits for the head): a client must not slip past
        # the request rules by pausing after "GET".
        decide, held = self.decide, self.held
        self.finished()
        if decide is not None:
            decide("http" if held else "tcp", held, True)

    def finished(self) -> None:
        self.decide, self.held = None, b""

    def at_rest(self) -> bool:
        return False


def answer_for(
    first: bytes,
    replay: bool,
    again: Callable[[bytes], None],
    installed: Callable[[bytes | memoryview], Verdict] | None,
) -> Verdict:
    """The last step of an owner's first look (see ``FirstBytes``), once it installed what
    the connection gets: ``first`` replayed through it (``again``: the carrier's replay)
    when they were held before, else the verdict of ``installed`` (its request side; None:
    none, relayed as they are) on them."""
    if replay:
        if first:
            again(first)
        return DROP
    return FORWARD if installed is None else installed(first)


# --- requests --------------------------------------------------------------------
class RequestJudge:
    """The request hook of one inspected HTTP connection (see the module docstring).

    A ``plan.LineHook``: a request line this peer sent before on this port, and
    that was let go on as it was (allowed with no would-deny, its target
    already normal), is known by those bytes (``Guard.lines``, shared by the
    peer's connections): the next request with the same line takes its tokens
    and adds to its tally without a ``RequestHead``, a normalisation or an
    evaluation. Only where the peer's judgements depend on method and target
    alone (``Guard.by_target``); bounded by the guard; gone with it at a swap
    (the new policy judges them again).
    """

    __slots__ = (
        "bundle",
        "guard",
        "known",
        "port",
        "rt",
        "service",
        "source",
        "wholesale",
    )

    def __init__(
        self, rt: Runtime, guard: Guard, source: str | None, port: int, wholesale: bool = False
    ) -> None:
        self.rt, self.bundle = rt, rt.bundle
        self.guard: Guard | None = guard
        self.service, self.source, self.port = guard.service, source, port
        self.wholesale = wholesale  # allowed wholesale: normalise only
        self.known = guard.lines(source, port)
        if not judges_with(rt.bundle, guard):  # a push since the connection was admitted
            self._swapped()

    def by_line(self, line: bytes) -> bool:
        """True: the request with this line goes on as it is, taken and tallied (see the
        class docstring); False: judge its head (unknown line, swap, empty bucket)."""
        known = self.known
        if known is None or self.rt.bundle is not self.bundle:
            return False
        found = known.get(line)
        if found is None:
            return False
        take, tally = found  # (Take | None, AuthzTally | None): see _learn
        if take is not None and take(self.rt.buckets, self.source, time.monotonic()) is not None:
            return False  # nothing taken: judged as usual, which answers the 429
        if tally is not None:
            count = tally.count
            tally.count = count + 1
            if not count & _REPUBLISH_MASK:  # taken by the metrics (or a 1024th): queue it
                self.rt.bus.publish(tally)
        return True

    def __call__(self, head: RequestHead) -> tuple[RequestAction, ...]:
        guard = self.guard if self.rt.bundle is self.bundle else self._swapped()
        if guard is None:  # no policy in force any more: as without one
            return _NOTHING
        if self.wholesale:
            found = guard.normalise(head.method, head.target)
            if found is None:
                self._learn(head.line, None, None)
                return _NOTHING
            if isinstance(found, str):
                return (SetTarget(found),)
            return self._noted(found, head, None, None)
        decision, target, take = guard.judgement(self.source, self.port, head)
        limited = None if take is None else take(self.rt.buckets, self.source, time.monotonic())
        if decision.decision == "allow" and not decision.would_deny and limited is None:
            tally = _tally(guard, decision)
            count = tally.count
            tally.count = count + 1
            if not count & _REPUBLISH_MASK:  # taken by the metrics (or a 1024th): queue it
                self.rt.bus.publish(tally)
            if target is None:
                self._learn(head.line, take, tally)
                return _NOTHING
            return (SetTarget(target),)
        return self._noted(decision, head, target, limited)

    def _learn(self, line: bytes, take: Take | None, tally: AuthzTally | None) -> None:
        """Know ``line`` from now on (see the class docstring), if it may be known."""
        if line and self.known is not None and self.guard is not None:
            self.known = self.guard.learn(self.source, self.port, line, (take, tally))

    def _noted(
        self, decision: Decision, head: RequestHead, target: str | None, limited: Limited | None
    ) -> tuple[RequestAction, ...]:
        """A decision worth a log line: published with the request's details, then carried out."""
        rid = request_id()
        path = clean(head.target if decision.decision == "bad-request" else head.path)
        if target is not None:
            path = target.partition("?")[0]
        publish = self.rt.bus.publish
        publish(
            AuthzDecided(
                self.service,
                decision.decision,
                decision.rule,
                decision.would_deny,
                self.source,
                self.port,
                clean(head.method),
                path,
                rid,
            )
        )
        if decision.decision == "bad-request":
            return (self._answer(400, "bad-request", decision.rule, {"detail": decision.detail}),)
        if decision.decision == "reset":  # plaintext, and its service is strict now: it sees
            return _STRICT  # nothing, as at accept (§2.4, §2.6): no answer, the connection ends
        if decision.decision != "allow":
            return (self._denied(decision, rid),)
        if limited is not None:
            publish(
                RateLimited(
                    self.service,
                    limited.rule,
                    limited.retry_after,
                    self.source,
                    self.port,
                    head.method,
                    path,
                    rid,
                )
            )
            return (self._limited(limited, rid),)
        return _NOTHING if target is None else (SetTarget(target),)

    def _swapped(self) -> Guard | None:
        """The guard of this connection's service in the bundle now in force (None: no
        policy any more). Plaintext meets the same one: a service now strict resets it."""
        bundle = self.rt.bundle
        deliver = bundle.local.get(self.service)
        guard = deliver.guard if deliver is not None else None
        self.bundle, self.guard, self.known = bundle, guard, None
        if guard is not None:  # still allowed wholesale, or judged from now on
            self.wholesale = guard.admit(self.source, self.port).decided is not None
            self.known = guard.lines(self.source, self.port)
        return guard

    def _denied(self, decision: Decision, rid: str) -> Answer:
        body: dict[str, object] = {"decision": "denied"}
        if self.source is not None:  # rule names only for authenticated peers (Linkerd's rule)
            body["rule"] = decision.rule
        body["detail"] = decision.detail
        body["service"] = self.service
        if self.source is not None:
            body["source"] = self.source
        body["request_id"] = rid
        return self._answer(403, "denied", decision.rule, body, exact=True)

    def _limited(self, limited: Limited, rid: str) -> Answer:
        body = {"retry_after": limited.retry_after, "request_id": rid}
        answer = self._answer(429, "rate-limited", limited.rule, body)
        retry = (("retry-after", str(limited.retry_after)),)
        return Answer(429, retry + answer.headers, answer.body, keep_alive=True)

    def _answer(
        self,
        status: int,
        kind: str,
        rule: str,
        extra: dict[str, object],
        exact: bool = False,
    ) -> Answer:
        headers = [("x-mesh-decision", kind)]
        shown = self.source is not None or rule.startswith("normalize/")
        if shown:
            headers.append(("x-mesh-rule", rule))
        headers.append(_JSON)
        body = extra if exact else {"decision": kind, **({"rule": rule} if shown else {}), **extra}
        payload = json.dumps(body, separators=(",", ":")).encode()
        return Answer(status, tuple(headers), payload, keep_alive=True)


def _tally(guard: Guard, decision: Decision) -> AuthzTally:
    """The tally of allows without would-deny by ``decision``'s rule (one per rule and guard)."""
    memo = guard.events
    tally = memo.get(decision.rule)
    if tally is None:
        tally = memo[decision.rule] = AuthzTally(guard.service, decision.rule)
    return cast(AuthzTally, tally)


def judges_with(bundle: Bundle, guard: Guard) -> bool:
    """Is ``guard`` one that ``bundle`` judges with? Not when a push swapped the bundle
    after a connection was admitted with it (before its first bytes came, say)."""
    local = bundle.local.get(guard.service)
    if local is not None and local.guard is guard:
        return True
    plain = bundle.plaintext.get(guard.port)
    return isinstance(plain, Deliver) and plain.guard is guard


# --- opaque TCP ------------------------------------------------------------------
def judge_tcp(
    rt: Runtime, guard: Guard, source: str | None, port: int, wholesale: bool = False
) -> str | None:
    """Judge an opaque TCP connection at accept and publish it: None (relay it), or why to
    reset it; ``wholesale``: the guard allowed it at L4 already (counted then). A guard a
    push has replaced since (``judges_with``) is not asked: the policy in force now judges
    it, as a push judges the connections it finds relayed."""
    if not judges_with(rt.bundle, guard):
        return rejudge(rt, guard.service, source, port)
    if wholesale:
        return None
    decision, limited = guard.tcp(source, port, time.monotonic(), rt.buckets)
    rt.bus.publish(
        AuthzDecided(
            guard.service,
            decision.decision,
            decision.rule,
            decision.would_deny,
            source,
            port,
            request_id=request_id() if decision.decision != "allow" or decision.would_deny else "",
        )
    )
    if decision.decision != "allow":
        return f"denied by {decision.rule}"
    if limited is not None:
        rt.bus.publish(RateLimited(guard.service, limited.rule, limited.retry_after, source, port))
        return f"rate limited by {limited.rule}"
    return None


def rejudge(rt: Runtime, service: str, source: str | None, port: int) -> str | None:
    """A connection relayed as L4 (no request of it is judged) when a push changed the
    policy: None (it may go on), or why to reset it, its decision published as at accept.
    As at accept it is judged on its L4 fields; no rate limit is taken again."""
    deliver = rt.bundle.local.get(service)
    guard = deliver.guard if deliver is not None else None
    if guard is None or guard.admit(source, port).decided is not None:
        return None  # no policy in force, or still allowed wholesale
    decision = guard.policy.evaluate(Request(service, port, source))
    if decision.decision == "allow":
        return None
    rt.bus.publish(
        AuthzDecided(
            service,
            decision.decision,
            decision.rule,
            decision.would_deny,
            source,
            port,
            request_id=request_id(),
        )
    )
    return f"denied by {decision.rule}"


def allowed_wholesale(rt: Runtime, service: str, decision: Decision) -> None:
    """A connection the policy allowed at L4: counted once (logged when it would be denied)."""
    rt.bus.publish(AuthzDecided(service, decision.decision, decision.rule, decision.would_deny))
