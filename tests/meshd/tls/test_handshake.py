"""Waiting for a peer's whole ClientHello before spending TLS state on it."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anyio
import pytest

from meshd.tls.handshake import client_hello

pytestmark = pytest.mark.anyio
HELLO = bytes.fromhex("1603010200") + b"\x01" + b"h" * 0x1FF  # a 512-byte record, whole


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": True}  # as the daemon runs


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    accepted.setblocking(False)
    with server, client, accepted:
        yield accepted, client


async def test_a_whole_hello_goes_on_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(HELLO)
    with anyio.fail_after(1):
        assert await client_hello(ours)
    assert ours.recv(600, socket.MSG_PEEK) == HELLO  # nothing was taken from the socket


async def test_part_of_a_hello_waits_for_the_rest(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(HELLO[:100])
    with anyio.move_on_after(0.5) as waiting:
        await client_hello(ours)
    assert waiting.cancelled_caught, "a partial ClientHello must not go on to TLS"
    theirs.sendall(HELLO[100:])
    with anyio.fail_after(1):
        assert await client_hello(ours)


async def test_a_peer_that_closes_without_a_word(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.close()
    with anyio.fail_after(1):
        assert not await client_hello(ours)


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03"])
async def test_what_is_no_whole_record_header_goes_on_to_fail_its_handshake(
    pair: tuple[socket.socket, socket.socket], first: bytes
) -> None:
    ours, theirs = pair
    theirs.sendall(first)
    if len(first) < 5:  # a header cut short: it may still come, or the peer gives up
        theirs.shutdown(socket.SHUT_WR)
    with anyio.fail_after(1):
        assert await client_hello(ours)


async def test_a_partial_hello_then_close_goes_on(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(HELLO[:100])
    theirs.shutdown(socket.SHUT_WR)
    with anyio.fail_after(1):
        assert await client_hello(ours)  # the handshake then fails on what it got
