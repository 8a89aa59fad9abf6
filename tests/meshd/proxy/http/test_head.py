"""Request heads as bytes (body framing, header edits) and local answers on the wire."""

from __future__ import annotations

import pytest

from meshd.proxy.http.actions import AddHeader, Answer, SetHeader
from meshd.proxy.http.head import CHUNKED, framing, rewrite

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nAccept: */*\r\nx-a: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"Content-Length", b"12")], 12),
        ([(b"content-length", b" 0 ")], 0),
        ([(b"Transfer-Encoding", b"chunked")], CHUNKED),
        ([(b"Transfer-Encoding", b"gzip, Chunked")], CHUNKED),
        ([(b"Transfer-Encoding", b"chunked, gzip")], None),
        ([(b"Content-Length", b"-1")], None),
        ([(b"Host", b"x")], None),
    ],
)
def test_framing(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert framing(headers) == expected


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ([], HEAD),
        (
            [SetHeader("x-A", "9")],
            b"GET / HTTP/1.1\r\nHost: x\r\nx-A: 9\r\nAccept: */*\r\n\r\n",
        ),
        (
            [SetHeader("X-New", "n")],
            HEAD[:-2] + b"X-New: n\r\n\r\n",
        ),
        (
            [AddHeader("X-A", "3"), AddHeader("X-A", "4")],
            HEAD[:-2] + b"X-A: 3\r\nX-A: 4\r\n\r\n",
        ),
        (
            [AddHeader("X-B", "1"), SetHeader("X-B", "2")],
            HEAD[:-2] + b"X-B: 2\r\n\r\n",
        ),
    ],
    ids=["none", "set-replaces-in-place", "set-adds", "add-keeps", "in-order"],
)
def test_rewrite(edits: list[SetHeader | AddHeader], expected: bytes) -> None:
    assert rewrite(HEAD, edits) == expected


def test_rewrite_drops_blank_lines_before_the_request_line() -> None:
    assert rewrite(b"\r\n" + HEAD, [AddHeader("X-B", "1")]) == HEAD[:-2] + b"X-B: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "wire"),
    [
        (
            Answer(403),
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        (
            Answer(429, (("Retry-After", "1"),), b"slow down"),
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 9\r\n"
            b"Connection: close\r\n\r\nslow down",
        ),
        (Answer(599), b"HTTP/1.1 599 \r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    ],
)
def test_an_answer_on_the_wire(answer: Answer, wire: bytes) -> None:
    assert answer.encode() == wire


@pytest.mark.parametrize(
    ("status", "headers"), [(100, ()), (600, ()), (403, (("Bad\r\nName", "v"),))]
)
def test_an_answer_must_be_final_and_well_formed(
    status: int, headers: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(ValueError):
        Answer(status, headers)
