"""A connection's judge knows a request line it let go on as it was (``RequestJudge.by_line``).

The next request with the same line is forwarded without a ``RequestHead``
or an evaluation, but it still takes its tokens and counts, and nothing
about it may differ from judging it: a header a rule reads, an upgrade, a
body, a bare LF, a swap, a tap listening. Each test drives the real
inbound exchange with a real judge over a compiled policy, as meshd B does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

import pytest

from meshd.policy import guard as guards
from meshd.policy.guard import MAX_KNOWN_LINE, Guard
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.model import Document
from meshd.policy.lang.ratelimit import Buckets
from meshd.proxy.enforce import RequestJudge
from meshd.proxy.http.actions import FORWARD, Answer, RequestAction
from meshd.proxy.http.exchange import SWITCHING, InboundHttpExchange
from meshd.proxy.http.observe import Listening, Stamp
from meshd.proxy.http.plan import RequestHead
from meshd.runtime import Runtime
from meshd.telemetry.events import EventBus
from meshd.telemetry.metrics import Metrics
from tests.meshd.policy.lang import build

PORT = 8080
WEB = build.spiffe("web")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
ALLOW = "d/allow/web-to-api"


def head(target: str = "/v1/orders", *lines: str, method: str = "GET") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: api\r\n" + "".join(f"{x}\r\n" for x in lines)
    ).encode() + b"\r\n"


class Spy(RequestJudge):
    """The judge, counting the heads it was shown whole."""

    __slots__ = ("shown",)

    def __init__(self, rt: Runtime, guard: Guard, source: str | None, port: int) -> None:
        super().__init__(rt, guard, source, port)
        self.shown = 0

    def __call__(self, head: RequestHead) -> tuple[RequestAction, ...]:
        self.shown += 1
        return super().__call__(head)


@dataclass
class Rig:
    """One inbound HTTP connection to ``api`` from web under ``documents``."""

    documents: list[Document]
    bus: EventBus = field(default_factory=EventBus)
    buckets: Buckets = field(default_factory=Buckets)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.bus, process_metrics=False)
        self.listening = Listening()
        self.swap(self.documents, 1)
        self.judge = Spy(cast(Runtime, self), self.guard, WEB, PORT)
        self.exchange = InboundHttpExchange(
            self.bus.publish, "inbound", WEB, "api", 65536, (self.judge,)
        )
        self.exchange.listening = self.listening

    def connection(self, source: str, documents: list[Document] | None = None) -> Rig:
        """Another connection to the same guard (from ``source``), after one request."""
        if documents is not None:  # a policy that lets this source in too
            self.swap(documents, 2)
        other = Rig.__new__(Rig)
        other.documents, other.bus, other.buckets = self.documents, self.bus, self.buckets
        other.metrics, other.listening = self.metrics, self.listening
        other.guard, other.bundle = self.guard, self.bundle
        other.judge = Spy(cast(Runtime, other), self.guard, source, PORT)
        other.exchange = InboundHttpExchange(
            self.bus.publish, "inbound", source, "api", 65536, (other.judge,)
        )
        assert other.send(head()) is FORWARD
        return other

    def swap(self, documents: list[Document], version: int) -> None:
        """A new bundle in force (as a push makes one), with a new guard for api."""
        policy = CompiledPolicy.compile(documents, build.TD, version)
        self.guard = Guard("api", PORT, policy.for_service("api"), None)
        self.bundle = SimpleNamespace(local={"api": SimpleNamespace(guard=self.guard)})

    def send(self, data: bytes) -> object:
        """The request's verdict; its response follows when it went on."""
        verdict = self.exchange.incoming(memoryview(bytearray(data)))
        if verdict is FORWARD:
            assert self.exchange.outgoing(memoryview(bytearray(OK))) is FORWARD
        return verdict

    def allowed(self) -> float:
        self.metrics.collect()
        return self.metrics._decisions.values.get(("api", "allow", ALLOW), 0.0)


def allow_all(sources: tuple[str, ...] = ("web",), **extra: object) -> list[Document]:
    rule = build.allow("d", "web-to-api", "api", sources, **extra)  # type: ignore[arg-type]
    return [build.document("d", rules=[rule], default="deny")]


def status(verdict: object) -> int | None:
    """The status of the answer in a verdict (None: no answer)."""
    answers = [a for a in verdict if isinstance(a, Answer)] if isinstance(verdict, tuple) else []
    return answers[0].status if answers else None


def test_a_line_sent_again_goes_on_unjudged_and_is_still_counted() -> None:
    rig = Rig(allow_all())
    for _ in range(5):
        assert rig.send(head()) is FORWARD
    assert rig.judge.shown == 1  # the first one only: the others were known by their line
    assert rig.judge.known is not None and list(rig.judge.known) == [b"GET /v1/orders HTTP/1.1"]
    assert rig.allowed() == 5  # each request counts, known or not
    assert rig.send(head("/v1/other")) is FORWARD
    assert rig.judge.shown == 2


def test_a_rule_that_reads_a_header_has_every_request_judged() -> None:
    """The same line with another header value is another decision: nothing is known."""
    rig = Rig(allow_all(headers={"x-env": "prod"}))
    assert rig.send(head("/v1/orders", "x-env: prod")) is FORWARD
    assert rig.send(head("/v1/orders", "x-env: prod")) is FORWARD
    assert status(rig.send(head("/v1/orders", "x-env: qa"))) == 403
    assert rig.judge.shown == 3 and rig.judge.known is None  # no lines kept for this peer


def test_a_known_line_still_takes_its_token() -> None:
    limit = build.limit("d", "two", "api", 2, per_ms=3_600_000)
    doc = build.document("d", rules=allow_all()[0].rules, default="deny", rate_limits=[limit])
    rig = Rig([doc])
    assert rig.send(head()) is FORWARD
    assert rig.send(head()) is FORWARD  # known: its token taken all the same
    verdict = rig.send(head())
    assert status(verdict) == 429
    assert rig.judge.shown == 2  # the third was judged again, and answered


def test_a_known_line_meets_the_new_policy_after_a_swap() -> None:
    rig = Rig(allow_all())
    assert rig.send(head()) is FORWARD
    deny = build.deny("d", "no-orders", "api", paths=["/v1/orders"])
    rig.swap([build.document("d", rules=[*allow_all()[0].rules, deny], default="deny")], 2)
    assert status(rig.send(head())) == 403
    assert rig.send(head("/v1/other")) is FORWARD


def test_a_known_line_with_an_upgrade_or_a_body_is_shown_whole() -> None:
    """The line is the same; what follows it makes another request of it."""
    rig = Rig(allow_all())
    assert rig.send(head()) is FORWARD
    body = head("/v1/orders", "Content-Length: 5")  # its body comes in the next chunk
    assert rig.send(body) is FORWARD
    assert rig.judge.shown == 2
    assert rig.exchange.left == 5  # the exchange follows the body, not a next head
    assert rig.exchange.incoming(memoryview(bytearray(b"GET /"))) is FORWARD  # the body's bytes
    assert rig.exchange.outgoing(memoryview(bytearray(OK))) is FORWARD
    upgrade = head("/v1/orders", "Connection: Upgrade", "Upgrade: websocket")
    assert rig.exchange.incoming(memoryview(bytearray(upgrade))) is FORWARD
    assert rig.judge.shown == 3
    assert rig.exchange.left == SWITCHING  # held for the server's answer, as any upgrade


def test_a_known_line_is_still_parsed() -> None:
    """Known or not, the parser reads every head first: the same line ended by a bare LF
    (which llhttp refuses after a version) is a 400, not a request known by its line."""
    rig = Rig(allow_all())
    assert rig.send(head()) is FORWARD
    assert status(rig.send(b"GET /v1/orders HTTP/1.1\nHost: api\r\n\r\n")) == 400


def test_a_known_line_is_noted_for_a_listening_tap() -> None:
    rig = Rig(allow_all())
    assert rig.send(head()) is FORWARD
    rig.listening.on = True
    assert rig.exchange.incoming(memoryview(bytearray(head("/v1/orders?id=1")))) is FORWARD
    assert rig.exchange.incoming(memoryview(bytearray(head()))) is FORWARD
    stamps = [started for _, started in rig.exchange.pending]
    assert [s.path for s in stamps if isinstance(s, Stamp)] == ["/v1/orders", "/v1/orders"]
    assert rig.judge.shown == 3  # a tap is shown every request: its notes come from the head


def test_a_peers_lines_are_known_on_its_next_connection_and_not_to_others() -> None:
    rig = Rig(allow_all())
    assert rig.send(head()) is FORWARD
    again = rig.connection(WEB)
    assert again.judge.shown == 0  # known on its first request: learnt on the first connection
    other = rig.connection(build.spiffe("web-canary"), allow_all(sources=("*",)))
    assert other.judge.shown == 1  # another peer: judged


def test_the_lines_known_are_bounded_and_forgotten_all_at_once(monkeypatch: object) -> None:
    mp = cast(pytest.MonkeyPatch, monkeypatch)
    mp.setattr(guards, "MAX_KNOWN", 4)
    rig = Rig(allow_all())
    held = rig.judge.known
    for i in range(4):
        assert rig.send(head(f"/v1/{i}")) is FORWARD
    assert held is not None and len(held) == 4
    assert rig.send(head("/v1/" + "x" * MAX_KNOWN_LINE)) is FORWARD  # too long: not known
    assert len(held) == 4 and rig.judge.shown == 5
    assert rig.send(head("/v1/4")) is FORWARD  # the fifth: all forgotten, then it is known
    assert held == {}  # emptied in place: a connection holding it reads nothing stale
    assert rig.judge.known is not None and list(rig.judge.known) == [b"GET /v1/4 HTTP/1.1"]
    shown = rig.judge.shown
    assert rig.send(head("/v1/0")) is FORWARD  # forgotten: judged again
    assert rig.send(head("/v1/4")) is FORWARD  # known
    assert rig.judge.shown == shown + 1


def test_a_head_request_is_never_known() -> None:
    """HEAD ends the following of responses (their bodies cannot be told): always the
    long way, which does that."""
    rig = Rig(allow_all())
    for _ in range(2):
        assert rig.exchange.incoming(memoryview(bytearray(head(method="HEAD")))) is FORWARD
    assert rig.judge.shown == 2 and rig.judge.known == {}
    assert rig.exchange.responses is None
