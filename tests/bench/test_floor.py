"""bench/floor.py, the Python floor the benchmark measures next to meshd, relays correctly.

A yardstick that dropped or mangled bytes would flatter itself, so its two
processes run for real here: real TLS 1.3 with mutual certificates on loopback,
a real echo server behind B, and many client connections at once.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.meshd.harness import EchoServer, free_port
from tests.poll import until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from backend import Pki, make_pki

FLOOR = Path(__file__).resolve().parents[2] / "bench" / "floor.py"


class DigestEcho(EchoServer):
    """Echoes every byte back; after the client half-closes, sends a digest of what it got."""

    def _echo(self, conn: socket.socket) -> None:
        digest = hashlib.sha256()
        with conn:
            while data := conn.recv(65536):
                digest.update(data)
                conn.sendall(data)
            conn.sendall(b"sha256:" + digest.hexdigest().encode())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("floor-pki"))


@dataclass
class Floor:
    port_a: int  # where clients connect
    port_b: int  # the mTLS link's listener
    a: subprocess.Popen[bytes]
    b: subprocess.Popen[bytes]


@pytest.fixture
def floor(pki: Pki, tmp_path: Path) -> Iterator[Floor]:
    """B in front of an echo server, A linked to B."""
    echo = DigestEcho()
    procs: list[subprocess.Popen[bytes]] = []
    port_a, port_b = free_port(), free_port()
    try:
        for role, listen, target, cert, key in (
            ("b", port_b, echo.port, pki.b_cert, pki.b_key),
            ("a", port_a, port_b, pki.a_cert, pki.a_key),
        ):
            argv = [sys.executable, str(FLOOR), role, str(listen), "127.0.0.1", str(target)]
            with (tmp_path / f"floor-{role}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [*argv, str(cert), str(key), str(pki.bundle)], stdout=log, stderr=log
                    )
                )
            until(functools.partial(_listening, listen), 10, f"floor {role} listening on {listen}")
        yield Floor(port_a, port_b, a=procs[1], b=procs[0])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        echo.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while chunk := s.recv(1 << 20):
            received += chunk
        sender.join()
        return bytes(received)


def test_floor_relays_many_connections_both_ways_with_half_close(floor: Floor) -> None:
    payloads = [os.urandom(size) for size in (1, 1000, 70_000, 300_000) * 8]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: _roundtrip(floor.port_a, p), payloads))
    for payload, answer in zip(payloads, answers, strict=True):
        # the echo, then the server's digest sent after our half-close came through the link
        assert answer == payload + b"sha256:" + hashlib.sha256(payload).hexdigest().encode()


def test_floor_carries_bulk_intact(floor: Floor) -> None:
    payload = os.urandom(24 << 20)  # many 256 KiB frames, the link pausing and resuming
    answer = _roundtrip(floor.port_a, payload)
    digest = hashlib.sha256(payload)
    assert hashlib.sha256(answer[: len(payload)]).digest() == digest.digest()
    assert answer[len(payload) :] == b"sha256:" + digest.hexdigest().encode()


def test_floor_a_exits_when_its_link_is_lost(floor: Floor) -> None:
    """Without the link A could only hang its clients: it fails loudly instead."""
    assert (
        _roundtrip(floor.port_a, b"ping")
        == b"ping" + b"sha256:" + hashlib.sha256(b"ping").hexdigest().encode()
    )
    floor.b.terminate()
    assert floor.a.wait(10) != 0


def test_floor_refuses_a_client_without_a_mesh_certificate(pki: Pki, floor: Floor) -> None:
    """B requires a client certificate from the mesh CA, as meshd does."""
    context = ssl.create_default_context(cafile=str(pki.bundle))
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", floor.port_b), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
        pytest.raises((ssl.SSLError, ConnectionResetError)),
    ):
        # TLS 1.3: the server's refusal of the missing certificate arrives with the first read
        tls.sendall(b"\x01" + bytes(8))
        if not tls.recv(1):
            raise ConnectionResetError("closed without an answer")


class _Collect:
    """Stands in for a Stream: records what the link hands it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.fins = 0
        self.transport = None

    def deliver(self, data: memoryview) -> None:
        self.data += data

    def remote_fin(self) -> None:
        self.fins += 1


@pytest.mark.parametrize("chunk", [1, 2, 5, 8, 9, 10, 13, 4096])
def test_floor_parses_frames_cut_anywhere(chunk: int) -> None:
    """Headers and payloads split across reads at every offset still reach the right stream."""
    import asyncio  # noqa: PLC0415

    import floor as floor_module  # noqa: PLC0415

    header = floor_module.HEADER
    wire = b"".join(
        [
            header.pack(floor_module.DATA, 1, 5) + b"hello",
            header.pack(floor_module.DATA, 3, 3) + b"abc",
            header.pack(floor_module.FIN, 1, 0),
            header.pack(floor_module.DATA, 3, 4) + b"defg",
            header.pack(floor_module.DATA, 7, 2) + b"zz",  # no such stream: skipped
            header.pack(floor_module.FIN, 3, 0),
        ]
    )

    async def feed() -> tuple[_Collect, _Collect]:
        link = floor_module.Link()
        one, three = _Collect(), _Collect()
        link.streams.update({1: one, 3: three})  # type: ignore[dict-item]
        for start in range(0, len(wire), chunk):
            piece = wire[start : start + chunk]
            buffer = link.get_buffer(-1)
            buffer[: len(piece)] = piece
            link.buffer_updated(len(piece))
        return one, three

    one, three = asyncio.run(feed())
    assert (bytes(one.data), one.fins) == (b"hello", 1)
    assert (bytes(three.data), three.fins) == (b"abcdefg", 1)


def test_floor_drops_the_rest_of_a_frame_whose_stream_ended_meanwhile() -> None:
    """An app that closes while its DATA frame is half read: the rest goes nowhere, safely."""
    import asyncio  # noqa: PLC0415

    import floor as floor_module  # noqa: PLC0415

    header = floor_module.HEADER

    async def feed() -> tuple[_Collect, _Collect]:
        link = floor_module.Link()
        one, three = _Collect(), _Collect()
        link.streams.update({1: one, 3: three})  # type: ignore[dict-item]

        def put(piece: bytes) -> None:
            link.get_buffer(-1)[: len(piece)] = piece
            link.buffer_updated(len(piece))

        put(header.pack(floor_module.DATA, 1, 8) + b"half")
        del link.streams[1]  # the app closed (Stream.connection_lost)
        put(b"rest" + header.pack(floor_module.DATA, 3, 2) + b"ok")
        return one, three

    one, three = asyncio.run(feed())
    assert bytes(one.data) == b"half"
    assert bytes(three.data) == b"ok"
