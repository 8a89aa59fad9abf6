"""http_probe.py against servers on loopback: raw targets arrive as sent, answers are read
whole, a connection closed after an answer ends a keep-alive run, a reset is told apart.

The servers here stand in for meshd: a tiny HTTP/1.1 server that echoes the
raw request line (closing after one answer when asked), and a listener that
resets every connection.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from tests.e2e import http_probe


def _serve(sock: socket.socket, close_after: set[str]) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=_answer, args=(conn, close_after), daemon=True).start()


def _answer(conn: socket.socket, close_after: set[str]) -> None:
    with conn, conn.makefile("rb") as stream:
        while line := stream.readline():
            while stream.readline() not in (b"\r\n", b""):
                pass
            target = line.decode("latin-1").split(" ")[1]
            body = json.dumps({"target": target}).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Twice: a\r\n"
                b"x-twice: b\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            if target in close_after:
                return


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    sock = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve, args=(sock, {"/close"}), daemon=True).start()
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def resetting() -> Iterator[tuple[str, int]]:
    sock = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # linger 0: a RST

    threading.Thread(target=run, daemon=True).start()
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        sock.close()


def _get(target: str) -> dict[str, str]:
    return {"method": "GET", "target": target}


TARGETS = ["/v1/public/%2e%2E/admin", "//a//b", "/a/..;/b", "/x\\y", "/q?a=%2f"]


def test_targets_arrive_byte_for_byte_on_one_connection(echo: tuple[str, int]) -> None:
    answers = http_probe.keep_alive(*echo, [_get(t) for t in TARGETS])
    assert [json.loads(a["body"])["target"] for a in answers] == TARGETS
    assert {a["connection"] for a in answers} == {1}
    assert answers[0]["headers"]["x-twice"] == "a,b"  # repeated headers joined, names lower


def test_a_keep_alive_run_stops_at_a_closed_connection(echo: tuple[str, int]) -> None:
    answers = http_probe.keep_alive(*echo, [_get("/close"), _get("/next"), _get("/never")])
    assert answers[0]["status"] == 200
    assert len(answers) == 2 and "error" in answers[1], answers


@pytest.mark.parametrize("mode", ["fresh", "parallel"])
def test_one_connection_per_request(echo: tuple[str, int], mode: str) -> None:
    answers = http_probe.MODES[mode](*echo, [_get(f"/{i}") for i in range(6)])
    assert [json.loads(a["body"])["target"] for a in answers] == [f"/{i}" for i in range(6)]
    assert sorted(a["connection"] for a in answers) == list(range(6))


def test_tcp_tells_a_reset_from_an_answer(
    echo: tuple[str, int], resetting: tuple[str, int]
) -> None:
    answered = http_probe.tcp(*echo, b"GET /t HTTP/1.1\r\n\r\n", wait=0.5)
    assert not answered["reset"] and answered["received"].startswith("HTTP/1.1 200")
    reset = http_probe.tcp(*resetting, b"hello\r\n", wait=2)
    assert reset["reset"] and reset["received"] == "", reset
