"""Request heads as bytes (body framing, header edits) and local answers on the wire."""

from __future__ import annotations

import pytest

from meshd.proxy.http.actions import AddHeader, Answer, SetHeader
from meshd.proxy.http.head import (
    CHUNKED,
    expects_continue,
    framing,
    header_lines,
    request_id,
    rewrite,
    split_head,
    target_path,
)

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nAccept: */*\r\nx-a: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (b"Content-Length: 12\r\n", 12),
        (b"content-length:  0 \r\n", 0),
        (b"Host: x\r\nTransfer-Encoding: chunked\r\n", CHUNKED),
        (b"Transfer-Encoding: gzip, Chunked\r\n", CHUNKED),
        (b"Transfer-Encoding: chunked, gzip\r\n", None),
        (b"Content-Length: -1\r\n", None),
        # llhttp accepts leading zeros without end; int() refuses over 4300 digits
        (b"Content-Length: " + b"0" * 5000 + b"7\r\n", 7),
        (b"Host: x\r\n", None),
        (b"", None),
    ],
)
def test_framing(fields: bytes, expected: int | None) -> None:
    assert framing(fields) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (b"Expect: 100-continue\r\n", True),
        (b"host: x\r\nexpect:\t100-Continue \r\n", True),
        (b"Expect: 100-continue-ish\r\n", False),
        (b"X-Expect: 100-continue\r\n", False),
    ],
)
def test_expects_continue(fields: bytes, expected: bool) -> None:
    assert expects_continue(fields) is expected


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (HEAD, (b"/", HEAD[16:-2])),
        (b"GET  /a?b=1   HTTP/1.1\r\n\r\n", (b"/a?b=1", b"")),
        (b"\r\n\r\nPOST /x HTTP/1.1\r\nA: 1\r\n\r\n", (b"/x", b"A: 1\r\n")),
        (b"GET /a b HTTP/1.1\r\n\r\n", None),
        (b"GET HTTP/1.1\r\n\r\n", None),
        (b"GET /a\nX-A:1\r\n\r\n", None),  # versionless, a bare LF: llhttp reads X-A on
        (b"GET /a\r\n\r\n", None),  # versionless (HTTP/0.9)
    ],
)
def test_split_head(head: bytes, expected: tuple[bytes, bytes] | None) -> None:
    assert split_head(head) == expected


def test_header_lines_strip_blanks_around_values_only() -> None:
    fields = b"Host: x\r\nX-A:\t 1 2 \t\r\nEmpty:\r\nColon: a:b\r\n"
    assert list(header_lines(fields)) == [
        (b"Host", b"x"),
        (b"X-A", b"1 2"),
        (b"Empty", b""),
        (b"Colon", b"a:b"),
    ]


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


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (b"X-Request-Id: r-1\r\nHost: x\r\n", "r-1"),  # the first line
        (b"Host: x\r\nx-request-id:  Ab-9 \r\n", "Ab-9"),  # any case; the value as sent
        (b"Host: x\r\nX-REQUEST-ID:a\r\nx-request-id: b\r\n", "a"),  # the first
        (b"X-Request-Idx: no\r\n", ""),
        (b"Host: x\r\n", ""),
        (b"", ""),
        (b"x-request-id: " + b"7" * 300 + b"\r\n", "7" * 128),  # cut
        (b"x-request-id: \xe9\r\n", "\xe9"),  # raw: consumers escape
    ],
)
def test_request_id(fields: bytes, expected: str) -> None:
    assert request_id(fields) == expected
    assert request_id(fields, fields.lower()) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/a/b?x=1", "/a/b"),
        (b"/", "/"),
        (b"http://h/p?q", "http://h/p"),
        (b"/" + b"a" * 300, "/" + "a" * 255),
    ],
)
def test_target_path(target: bytes, expected: str) -> None:
    assert target_path(target) == expected
