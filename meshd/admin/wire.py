"""Just enough HTTP/1.1 for the admin API: parse a request head, frame a response.

Content-Length bodies only; every problem is an ``HttpError`` carrying the
response that answers it. No I/O here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from anyio.abc import ByteStream

JSON = "application/json"
_REQUEST_LINE = re.compile(r"([A-Z]{1,16}) (/[!-~]*) HTTP/(1\.[01])")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    query: str = ""  # the target's query, as sent (GET /tap reads it)

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        return "keep-alive" in tokens if self.version == "1.0" else "close" not in tokens


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    # a streaming answer (GET /tap): writes its own head and body on the connection, until
    # the peer's certificate expires (the epoch seconds given), then the connection closes
    stream: Callable[[ByteStream, float], Awaitable[None]] | None = None

    def encode(self, keep_alive: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class HttpError(Exception):
    """A request we answer with an error status and then close the connection."""

    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.response = error_response(status, message, hint, close=True)


def json_response(status: int, value: object, close: bool = False) -> Response:
    body = json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"
    return Response(status, body, close=close)


def error_response(
    status: int,
    message: str,
    hint: str | None = "",
    *,
    close: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    body = json.dumps({"error": message, "hint": hint or ""}).encode() + b"\n"
    return Response(status, body, headers=headers, close=close)


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Method, path (query dropped), HTTP version and lower-cased headers of a request head."""
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise HttpError(400, "malformed request line", "send an HTTP/1.1 request")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header line")
        key = name.lower()
        if key in headers and key in ("content-length", "transfer-encoding"):
            raise HttpError(400, f"duplicate {name} header")
        headers[key] = value.strip(" \t")
    method, target, version = match.groups()
    return method, target.split("?", 1)[0], version, headers


def query_of(head: bytes) -> str:
    """The query of a request head's target ("" without one); call after ``parse_head``."""
    line = head.lstrip(b"\r\n").split(b"\r\n", 1)[0]
    target = line.split(b" ", 2)[1] if line.count(b" ") >= 2 else b""
    return target.partition(b"?")[2].decode("latin-1")


def content_length(headers: dict[str, str], limit: int) -> int:
    if "transfer-encoding" in headers:
        raise HttpError(501, "Transfer-Encoding is not supported", "send a Content-Length body")
    value = headers.get("content-length", "0")
    if not _DIGITS.fullmatch(value):
        raise HttpError(400, f"invalid Content-Length {value!r}")
    if int(value) > limit:
        raise HttpError(413, f"body larger than {limit} bytes")
    return int(value)
