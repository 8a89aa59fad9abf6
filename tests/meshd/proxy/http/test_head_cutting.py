"""Heads llhttp accepts, cut by the exchange itself: what hooks see is what llhttp parsed.

Found by review of the raw-head cutting: llhttp reads header lines after a
versionless request line ended by a bare LF, which a cut at the first CRLF
hid from the hooks (a header deny rule bypassed); and empty lines that start
with a bare LF were fed alone as a head.
"""

from __future__ import annotations

import httptools
import pytest

from meshd.policy.guard import Guard
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.ratelimit import Buckets
from meshd.proxy.http.actions import Answer, RequestAction
from meshd.proxy.http.plan import RequestHead, RequestHook
from tests.meshd.policy.lang.build import TD, allow, deny, document, spiffe
from tests.meshd.proxy.http.test_exchange import _exchange, _feed, _splits


def _llhttp(stream: bytes) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """What llhttp itself reports (on_url, on_header) for each request of ``stream``."""

    class Seen:
        def __init__(self) -> None:
            self.heads: list[tuple[bytes, list[tuple[bytes, bytes]]]] = []

        def on_message_begin(self) -> None:
            self.heads.append((b"", []))

        def on_url(self, url: bytes) -> None:
            self.heads[-1] = (self.heads[-1][0] + url, self.heads[-1][1])

        def on_header(self, name: bytes, value: bytes) -> None:
            self.heads[-1][1].append((name, value))

    seen = Seen()
    httptools.HttpRequestParser(seen).feed_data(stream)  # accepted: no error
    return [
        (u.decode("latin-1"), tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in h))
        for u, h in seen.heads
    ]


def _deny_header(name: str) -> RequestHook:
    def hook(head: RequestHead) -> tuple[RequestAction, ...]:
        return (Answer(403, body=b"denied"),) if head.header(name) is not None else ()

    return hook


def _looking(heads: list[tuple[str, tuple[tuple[str, str], ...]]]) -> RequestHook:
    def look(head: RequestHead) -> tuple[RequestAction, ...]:
        heads.append((head.target, head.headers))
        return ()

    return look


# llhttp takes a request line without a version (HTTP/0.9) ended by a bare LF, then reads
# header lines after it; the exchange cuts the request line at the first CRLF instead.
BARE_LF = [
    b"GET /a\nX-Debug:1\r\n\r\n",  # split_head: 3 blanks-split parts, the header is lost
    b"GET /a?\nX-Debug: 1\r\n\r\n",  # _alone: target '/a?\nX-Debug:', the header is lost
    b"GET /a?\nX-Debug: 1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("stream", BARE_LF)
def test_llhttp_accepts_these_heads(stream: bytes) -> None:
    assert ("X-Debug", "1") in _llhttp(stream)[0][1]


@pytest.mark.parametrize("stream", BARE_LF)
def test_a_header_after_a_bare_lf_request_line_meets_the_hooks(stream: bytes) -> None:
    """A hook that refuses any request carrying X-Debug: the app must never get it."""
    for chunks in [[stream], *_splits(stream)]:
        exchange, _ = _exchange(_deny_header("x-debug"))
        sent, _acts = _feed(exchange, chunks)
        assert b"X-Debug" not in sent, chunks


@pytest.mark.parametrize("stream", BARE_LF)
def test_what_goes_on_was_judged_as_llhttp_parsed_it(stream: bytes) -> None:
    for chunks in [[stream], *_splits(stream)]:
        heads: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        exchange, _ = _exchange(_looking(heads))
        sent, _acts = _feed(exchange, chunks)
        if sent:
            want = [(t, tuple((n, v.strip(" \t")) for n, v in h)) for t, h in _llhttp(stream)]
            assert heads == want, chunks


@pytest.mark.parametrize(
    "bare",
    [
        b"GET /v1/x\nX-Debug:1\r\n\r\n",  # split_head: target right, header lost
        b"GET /v1/x?\nX-Debug: 1\r\nHost: api\r\n\r\n",  # _alone: target '/v1/x?\nX-Debug:'
    ],
)
def test_a_header_deny_rule_of_the_policy_is_bypassed_with_a_bare_lf(bare: bytes) -> None:
    """End to end through the policy guard: web may call api, but never with X-Debug."""
    web = spiffe("web")
    policy = CompiledPolicy.compile(
        [
            document(
                "h",
                rules=[
                    deny("h", "no-debug", "api", ["web"], headers={"x-debug": True}),
                    allow("h", "web", "api", ["web"]),
                ],
                default="deny",
            )
        ],
        TD,
        1,
    )
    guard = Guard("api", 8080, policy.for_service("api"), None)

    def judge(head: RequestHead) -> tuple[RequestAction, ...]:
        decision = guard.judge(web, 8080, head, 0.0, Buckets())[0]
        return () if decision.decision == "allow" else (Answer(403),)

    plain = b"GET /v1/x HTTP/1.1\r\nX-Debug:1\r\n\r\n"
    exchange, _ = _exchange(judge)
    assert _feed(exchange, [plain])[0] == b""  # the rule holds for a well-formed head
    assert ("X-Debug", "1") in _llhttp(bare)[0][1]
    exchange, _ = _exchange(judge)
    assert _feed(exchange, [bare])[0] == b""  # a 400: never forwarded to the app


@pytest.mark.parametrize(
    "stream",
    [
        b"\n\r\n\r\nGET /a HTTP/1.1\r\n\r\n",
        b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    ],
)
def test_empty_lines_that_start_with_a_bare_lf_do_not_end_the_connection(stream: bytes) -> None:
    """llhttp skips these empty lines: so does the exchange (its short way once fed them
    alone as a head, and closed the connection)."""
    _llhttp(stream)  # accepted
    exchange, _ = _exchange(lambda head: ())
    assert _feed(exchange, [stream]) == (stream, [])
