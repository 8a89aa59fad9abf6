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
429 with ``retry-after``; each answer keeps the connection alive. Every
decision is published (``AuthzDecided``, ``RateLimited``); an allowed request
with no would-deny publishes a shared event per rule and allocates no answer.

Judging reads the policy in force for each request (a push swaps the bundle:
the next request on a kept-alive connection meets the new policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, cast

from meshd.policy.guard import Guard
from meshd.policy.lang.evaluate import Decision
from meshd.policy.lang.ratelimit import Limited
from meshd.proxy.http.actions import DROP, FORWARD, HOLD, Answer, RequestAction, SetTarget, Verdict
from meshd.proxy.http.observe import looks_like_http
from meshd.proxy.http.plan import RequestHead
from meshd.telemetry.events import AuthzDecided, Event, RateLimited
from meshd.telemetry.logs import clean

if TYPE_CHECKING:
    from meshd.runtime import Runtime

SNIFF_WAIT = 1.0  # seconds a connection may stay silent before it is judged as opaque TCP
SNIFF_BYTES = 13  # enough to tell an HTTP request line's method and its space
_LINGER_ZERO = struct.pack("ii", 1, 0)
_NOTHING: tuple[RequestAction, ...] = ()
_JSON = ("content-type", "application/json")
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
    """HTTP or TCP by a connection's first bytes; None while they could still start a request."""
    if looks_like_http(first[:SNIFF_BYTES]):
        return "http"
    if not first or (len(first) < SNIFF_BYTES and first.isalpha() and first.isupper()):
        return None
    return "tcp"


class FirstBytes:
    """The exchange of an inspected connection until it is classified (streams and pipes)."""

    __slots__ = ("decide", "held", "timer")
    client_is_app = False  # inbound: the requests come from the peer

    def __init__(self, decide: Callable[[Kind, bytes], None], wait: float) -> None:
        self.held = b""
        self.decide: Callable[[Kind, bytes], None] | None = decide
        self.timer = asyncio.get_running_loop().call_later(wait, self._silent)

    def request_bytes(self, data: bytes | memoryview) -> Verdict:
        """The peer's bytes: held until they say what the connection is."""
        self.held += data
        kind = kind_of(self.held)
        if kind is None:
            return HOLD
        self._decided(kind)
        return DROP  # handed on to the exchange the owner installed (or dropped with a reset)

    def response_bytes(self, data: bytes | memoryview) -> Verdict:
        return FORWARD  # the app is not connected before the decision

    incoming = request_bytes
    outgoing = response_bytes

    def _silent(self) -> None:
        # Nothing came: a server-first protocol. What looked like the start of a request
        # line stays HTTP (its exchange waits for the head): a client must not slip past
        # the request rules by pausing after "GET".
        self._decided("http" if self.held else "tcp")

    def _decided(self, kind: Kind) -> None:
        decide, held = self.decide, self.held
        self.finished()
        if decide is not None:
            decide(kind, held)

    def finished(self) -> None:
        self.timer.cancel()
        self.decide, self.held = None, b""

    def at_rest(self) -> bool:
        return False


# --- requests --------------------------------------------------------------------
class RequestJudge:
    """The request hook of one inspected HTTP connection (see the module docstring)."""

    __slots__ = ("bundle", "guard", "port", "rt", "service", "source")

    def __init__(self, rt: Runtime, guard: Guard, source: str | None, port: int) -> None:
        self.rt, self.bundle = rt, rt.bundle
        self.guard: Guard | None = guard
        self.service, self.source, self.port = guard.service, source, port

    def __call__(self, head: RequestHead) -> tuple[RequestAction, ...]:
        guard = self.guard if self.rt.bundle is self.bundle else self._swapped()
        if guard is None:  # no policy in force any more: as without one
            return _NOTHING
        decision, target, limited = guard.judge(
            self.source,
            self.port,
            head.method,
            head.target,
            head.headers,
            time.monotonic(),
            self.rt.buckets,
        )
        if decision.decision == "allow" and not decision.would_deny and limited is None:
            self.rt.bus.publish(_allowed(guard, decision))
            return _NOTHING if target is None else (SetTarget(target),)
        return self._noted(decision, head, target, limited)

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
        if decision.decision == "reset":  # plaintext, and its service is strict now: end it
            return (self._denied(decision, rid).closing(),)
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
        self.bundle, self.guard = bundle, deliver.guard if deliver is not None else None
        return self.guard

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


def _allowed(guard: Guard, decision: Decision) -> Event:
    """The shared event of an allow without would-deny (one per rule and guard)."""
    memo = guard.events
    event = memo.get(decision.rule)
    if event is None:
        event = memo[decision.rule] = AuthzDecided(guard.service, "allow", decision.rule)
    return cast(Event, event)


# --- opaque TCP ------------------------------------------------------------------
def judge_tcp(rt: Runtime, guard: Guard, source: str | None, port: int) -> str | None:
    """Judge an opaque TCP connection at accept and publish it: None (relay it), or why to
    reset it."""
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


def allowed_wholesale(rt: Runtime, service: str, decision: Decision) -> None:
    """A connection the policy allowed at L4: counted once (logged when it would be denied)."""
    rt.bus.publish(AuthzDecided(service, decision.decision, decision.rule, decision.would_deny))
