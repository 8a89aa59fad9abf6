"""Raw HTTP/1.1 and TCP from a testbed host: request targets sent byte for byte.

``urllib`` and ``http.client`` tidy a request target before sending it, and
the policy tests need the tricks (``%2e%2e``, ``//``, ``..;``, a raw ``\\``)
to reach meshd as written; they also need to see whether a connection was
kept alive after a 403, whether it was reset, and the headers meshd added.
Standard library only, so it runs on a testbed host's stock ``python3``:

    python3 http_probe.py http HOST PORT --requests JSON [--mode keep-alive|fresh|parallel]
    python3 http_probe.py tcp HOST PORT --send TEXT

``--requests`` is a JSON list of ``{"method", "target", "headers": [[name, value]]}``.
``keep-alive`` sends them one after another on one connection and stops at the
first failure (so a connection closed after a 403 shows as an error on the
next request); ``fresh`` opens a connection per request; ``parallel`` opens
one per request first, then sends them all at once (a rate limit's burst).
Each answer is ``{"status", "headers" (lower-case names), "body", "connection"}``
or ``{"error"}``; ``tcp`` prints ``{"reset", "received", "error"}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

TIMEOUT = 10.0
MAX_BODY = 1 << 20


class Closed(Exception):
    """The server closed the connection before a whole response."""


def request_bytes(host: str, port: int, method: str, target: str, headers: Sequence[Any]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if method in ("POST", "PUT"):
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response(stream: Any) -> dict[str, Any]:
    """One response from a socket's binary file: status, headers, body (as text)."""
    status_line = stream.readline(65536)
    if not status_line:
        raise Closed("closed before a status line")
    parts = status_line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = stream.readline(65536)
        if not line:
            raise Closed("closed in the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    body = _body(stream, status, headers)
    return {"status": status, "headers": headers, "body": body.decode("utf-8", "replace")}


def _body(stream: Any, status: int, headers: dict[str, str]) -> bytes:
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(stream.readline(1024).split(b";")[0], 16)
            if size == 0:
                while stream.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(stream.read(size))
            stream.readline(8)
    if "content-length" in headers:
        length = int(headers["content-length"])
        data = stream.read(min(length, MAX_BODY))
        if len(data) < length:
            raise Closed("closed in the body")
        return bytes(data)
    return bytes(stream.read(MAX_BODY))  # until the server closes


def _one(conn: socket.socket, stream: Any, host: str, port: int, req: dict[str, Any]) -> Any:
    conn.sendall(request_bytes(host, port, req["method"], req["target"], req.get("headers", [])))
    return read_response(stream)


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}"}


def keep_alive(host: str, port: int, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """All on one connection, in order; the first failure ends the run."""
    answers: list[dict[str, Any]] = []
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
        stream = conn.makefile("rb")
        for req in requests:
            try:
                answer = _one(conn, stream, host, port, req)
            except (OSError, Closed, ValueError, IndexError) as exc:
                answers.append(_error(exc))
                break
            answers.append({**answer, "connection": 1})
    return answers


def fresh(host: str, port: int, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A new connection for each request."""
    answers = []
    for i, req in enumerate(requests):
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
                answers.append(
                    {**_one(conn, conn.makefile("rb"), host, port, req), "connection": i}
                )
        except (OSError, Closed, ValueError, IndexError) as exc:
            answers.append(_error(exc))
    return answers


def parallel(host: str, port: int, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One connection per request, all connected first, then sent at the same moment."""
    conns = [socket.create_connection((host, port), timeout=TIMEOUT) for _ in requests]
    answers: list[dict[str, Any]] = [{} for _ in requests]
    start = threading.Barrier(len(requests))

    def run(i: int) -> None:
        start.wait()
        try:
            answers[i] = {**_one(conns[i], conns[i].makefile("rb"), host, port, requests[i])}
            answers[i]["connection"] = i
        except (OSError, Closed, ValueError, IndexError) as exc:
            answers[i] = _error(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for conn in conns:
        conn.close()
    return answers


MODES = {"keep-alive": keep_alive, "fresh": fresh, "parallel": parallel}


def tcp(host: str, port: int, payload: bytes, wait: float = 3.0) -> dict[str, Any]:
    """Connect, send ``payload``, read until the peer closes or ``wait`` passes.

    ``reset``: the connection was reset (ECONNRESET or EPIPE) rather than answered.
    """
    received = b""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
            conn.settimeout(wait)
            conn.sendall(payload)
            while len(received) < 65536:
                data = conn.recv(4096)
                if not data:
                    break
                received += data
    except (ConnectionResetError, BrokenPipeError) as exc:
        return {"reset": True, "received": received.decode("latin-1"), "error": repr(exc)}
    except TimeoutError:
        return {"reset": False, "received": received.decode("latin-1"), "error": "timeout"}
    return {"reset": False, "received": received.decode("latin-1"), "error": ""}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("kind", choices=["http", "tcp"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--requests", default="[]", help="JSON list of requests")
    parser.add_argument("--mode", choices=sorted(MODES), default="keep-alive")
    parser.add_argument("--send", default="", help="tcp: the bytes to send (latin-1 text)")
    args = parser.parse_args(argv)
    if args.kind == "tcp":
        print(json.dumps(tcp(args.host, args.port, args.send.encode("latin-1"))))
    else:
        print(json.dumps(MODES[args.mode](args.host, args.port, json.loads(args.requests))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
