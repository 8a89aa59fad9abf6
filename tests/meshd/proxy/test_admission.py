"""One test per resource rule over real sockets: room at the limit minus one, refusal at it,
and the room given back when a connection, stream or link ends.

A pair A -> B on loopback (tests/meshd/pairs.py) with one limit set low on
one side; clients go through A's upstream listener to B's echo app, or talk
the link protocol to B by hand (tests/meshd/abusers.py). The rules
themselves are table-tested in tests/meshd/policy/test_decide.py; strict
mTLS for plaintext is in test_proxy.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator

import pytest

from meshd.proxy.frames import HEADER, HEADER_SIZE, RST, RST_REFUSED, frame, parse_reset
from tests.meshd.abusers import Intruder
from tests.meshd.harness import Meshd
from tests.meshd.pairs import Pair
from tests.poll import until

LIMIT = 2


def _echo(pair: Pair) -> socket.socket:
    """A client connection through A to B's echo app."""
    return socket.create_connection(("127.0.0.1", pair.a.ports["upstream:echo"]), timeout=5)


def _echoes(sock: socket.socket) -> bool:
    """Does the connection reach the app (True), or is it closed on us (False)?"""
    try:
        sock.sendall(b"ping")
        return sock.recv(10) == b"ping"
    except (ConnectionResetError, BrokenPipeError):
        return False


@contextlib.contextmanager
def _clients(pair: Pair, n: int) -> Iterator[list[socket.socket]]:
    socks = [_echo(pair) for _ in range(n)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _active(pair: Pair, meshd: Meshd) -> int:
    status, text = pair.net.admin(meshd, "GET", "/stats")
    assert status == 200, text
    return int(json.loads(text)["active_connections"])


def _idle(pair: Pair) -> None:
    """Wait for the pair's first request (start_pair makes one) to end on both sides."""
    until(lambda: _active(pair, pair.a) == _active(pair, pair.b) == 0, 5, "connections to end")


def _refused(pair: Pair, meshd: Meshd, listener: str, reason: str) -> float:
    return pair.net.metric(
        meshd, "meshd_connections_refused_total", listener=listener, reason=reason
    )


@pytest.mark.parametrize(
    ("side", "listener"),
    [pytest.param("a", "outbound", id="outbound"), pytest.param("b", "mesh", id="mesh-port")],
)
def test_max_connections(make_pair: Callable[..., Pair], side: str, listener: str) -> None:
    pair = make_pair(**{f"extra_{side}": f"[limits]\nmax_connections = {LIMIT}"})
    meshd = pair.a if side == "a" else pair.b
    _idle(pair)
    with _clients(pair, LIMIT) as admitted:
        assert all(_echoes(s) for s in admitted)  # the last one at the limit minus one
        with _echo(pair) as over:
            assert not _echoes(over)
        assert _refused(pair, meshd, listener, "limit") == 1
        admitted[0].close()
        until(lambda: _active(pair, meshd) == LIMIT - 1, 5, "the closed connection released")
        with _echo(pair) as again:
            assert _echoes(again)
    assert _refused(pair, meshd, listener, "limit") == 1


def test_max_streams_per_peer(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(extra_b=f"[limits]\nmax_streams_per_peer = {LIMIT}")
    _idle(pair)
    for round_ in (1, 2):  # the second round needs the first one's share back
        with _clients(pair, LIMIT) as admitted:
            assert all(_echoes(s) for s in admitted), f"round {round_}"
            with _echo(pair) as over:
                assert not _echoes(over)
            assert _refused(pair, pair.b, "mesh", "peer_limit") == round_
        until(lambda: _active(pair, pair.b) == 0, 5, "B's streams to end")
    pair.b.wait_log(r"refused stream from spiffe://t\.mesh/host/a to echo:\d+: .*holds 2 streams")


def _frames(wire: bytes) -> list[tuple[int, int, bytes]]:
    found, offset = [], 0
    while offset + HEADER_SIZE <= len(wire):
        kind, sid, length = HEADER.unpack_from(wire, offset)
        found.append((kind, sid, wire[offset + HEADER_SIZE : offset + HEADER_SIZE + length]))
        offset += HEADER_SIZE + length
    return found


def _receive(host: Intruder, wanted: bytes, times: int) -> bytes:
    received = b""
    while received.count(wanted) < times:
        received += host.read_until(wanted)
    return received


def test_max_streams_per_link(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(extra_b=f"[limits]\nmax_streams_per_link = {LIMIT}")
    echo = pair.apps.echo_port
    with Intruder(pair) as host:
        sids = [host.open("echo", echo, b"hello") for _ in range(LIMIT)]
        _receive(host, b"hello", LIMIT)  # each of them relayed
        over = host.open("echo", echo, b"x")
        wire = host.read_until(b"too many streams on this link")
        refusals = [(sid, parse_reset(p)) for kind, sid, p in _frames(wire) if kind == RST]
        assert refusals == [(over, (RST_REFUSED, "too many streams on this link"))]
        host.send(frame(RST, sids[0], b"\x01done"))  # one of ours ends: room for another
        again = host.open("echo", echo, b"again")
        wire = host.read_until(b"again")
        assert [sid for kind, sid, p in _frames(wire) if p == b"again"] == [again]


def test_max_links_per_peer(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(extra_b=f"[limits]\nmax_links_per_peer = {LIMIT}")
    echo = pair.apps.echo_port
    links = [Intruder(pair) for _ in range(LIMIT)]
    try:
        for link in links:  # each one is up: it relays
            link.open("echo", echo, b"hello")
            link.read_until(b"hello")
        with Intruder(pair) as over:
            assert over.cut_off()
        pair.b.wait_log(r"refused link from 127\.0\.0\.1:\d+: .*host/x already holds its links")
        assert (
            pair.net.metric(
                pair.b, "meshd_handshake_failures_total", listener="mesh", reason="too_many_links"
            )
            == 1
        )
        links.pop().close()
        links_in = 1 + LIMIT - 1  # A's own, and the intruders' left
        until(lambda: len(_stats(pair)["links_in"]) == links_in, 5, "B to let the link go")
        with Intruder(pair) as again:
            again.open("echo", echo, b"again")
            again.read_until(b"again")
    finally:
        for link in links:
            link.close()


def _stats(pair: Pair) -> dict[str, list[object]]:
    status, text = pair.net.admin(pair.b, "GET", "/stats")
    assert status == 200, text
    result: dict[str, list[object]] = json.loads(text)
    return result
