"""The load generator against local servers that misbehave on purpose, and its pure parts.

Each server counts what it did (whole answers, resets, closes); the load
generator, run as the hosts run it (``python3 loadgen.py``), must count the
same, kind by kind: a failure that it missed would hide a broken renewal.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e import loadgen

LOADGEN = Path(loadgen.__file__)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Served:
    """What a server did, by kind (whole answers are "ok")."""

    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1


# a behaviour gets the connection and the request's number on it (1, 2, ...), answers or
# misbehaves, and returns what it did and whether the connection goes on
Behaviour = Callable[[socket.socket, int], tuple[str, bool]]


def keep_alive(conn: socket.socket, n: int) -> tuple[str, bool]:
    conn.sendall(OK)
    return "ok", True


def reset_every_third(conn: socket.socket, n: int) -> tuple[str, bool]:
    if n % 3:
        return keep_alive(conn, n)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return "reset", False  # closed with linger 0: an RST, request unanswered


def close_every_third(conn: socket.socket, n: int) -> tuple[str, bool]:
    if n % 3:
        return keep_alive(conn, n)
    return "closed", False  # a FIN where the answer should be


def half_answer_every_fourth(conn: socket.socket, n: int) -> tuple[str, bool]:
    if n % 4:
        return keep_alive(conn, n)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    return "short_read", False


def half_head_every_fifth(conn: socket.socket, n: int) -> tuple[str, bool]:
    if n % 5:
        return keep_alive(conn, n)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
    return "short_read", False


def error_every_other(conn: socket.socket, n: int) -> tuple[str, bool]:
    if n % 2:
        return keep_alive(conn, n)
    conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
    return "non_2xx", True


def connection_close(conn: socket.socket, n: int) -> tuple[str, bool]:
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    return "ok", False  # a whole answer, then a clean close: no failure


def chunked(conn: socket.socket, n: int) -> tuple[str, bool]:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    return "ok", True


def silent(conn: socket.socket, n: int) -> tuple[str, bool]:
    conn.recv(1)  # blocks until the client gives up
    return "timeout", False


@contextlib.contextmanager
def server(behaviour: Behaviour) -> Iterator[tuple[int, Served]]:
    """A threaded HTTP/1.1-ish server on loopback; yields its port and its tally."""
    served = Served()
    listener = socket.create_server(("127.0.0.1", 0))
    threads: list[threading.Thread] = []
    conns: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            _serve(conn, behaviour, served)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conns.append(conn)
                t = threading.Thread(target=serve, args=(conn,), daemon=True)
                threads.append(t)
                t.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1], served
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in [acceptor, *threads]:
            t.join(5)


def _serve(conn: socket.socket, behaviour: Behaviour, served: Served) -> None:
    data, n = b"", 0
    with contextlib.suppress(OSError):
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            _, _, data = data.partition(b"\r\n\r\n")
            n += 1
            kind, more = behaviour(conn, n)
            served.add(kind)
            if not more:
                return


def load(*argv: str, timeout: float = 60) -> dict[str, object]:
    """Run loadgen.py as the hosts run it: a python3 process; its JSON summary."""
    done = subprocess.run(
        [sys.executable, str(LOADGEN), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


def failures(summary: dict[str, object]) -> dict[str, int]:
    counted = summary["failures"]
    assert isinstance(counted, dict)
    return {k: v for k, v in counted.items() if v}


@pytest.mark.parametrize(
    "behaviour",
    [
        keep_alive,
        reset_every_third,
        close_every_third,
        half_answer_every_fourth,
        half_head_every_fifth,
        error_every_other,
        connection_close,
        chunked,
    ],
)
def test_every_request_is_counted_as_the_server_saw_it(behaviour: Behaviour) -> None:
    with server(behaviour) as (port, served):
        summary = load(f"--url=http://127.0.0.1:{port}/x", "--connections=4", "--duration=1")
    counts = dict(served.counts)
    assert counts.pop("ok", 0) == summary["ok"] and summary["ok"]
    assert failures(summary) == counts, summary["first_failures"]
    assert summary["requests"] == summary["ok"] + sum(counts.values())


def test_keep_alive_uses_one_connection_each_and_close_reconnects() -> None:
    with server(keep_alive) as (port, _):
        kept = load(f"--url=http://127.0.0.1:{port}/", "--connections=3", "--duration=0.5")
    with server(connection_close) as (port, _):
        closed = load(f"--url=http://127.0.0.1:{port}/", "--connections=3", "--duration=0.5")
    assert kept["connects"] == 3 and kept["ok"] > 3  # type: ignore[operator]
    assert closed["connects"] == closed["ok"] and closed["failed"] == 0


def test_a_silent_server_is_a_timeout_and_a_closed_port_is_refused() -> None:
    with server(silent) as (port, _):
        quiet = load(
            f"--url=http://127.0.0.1:{port}/", "--connections=2", "--duration=0.5", "--timeout=1"
        )
        quiet_kinds = failures(quiet)  # read before the server shuts its connections
    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # bound, never listening: nobody can take the port
    try:
        url = f"--url=http://127.0.0.1:{held.getsockname()[1]}/"
        refused = load(url, "--connections=2", "--duration=0.3", "--timeout=0.5")
    finally:
        held.close()
    assert quiet_kinds == {"timeout": 2} and quiet["ok"] == 0, quiet  # one each, then the end
    assert set(failures(refused)) == {"connect_refused"} and refused["ok"] == 0


def test_rate_paces_requests_and_output_is_written(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    with server(keep_alive) as (port, served):
        summary = load(
            f"--url=http://127.0.0.1:{port}/",
            "--connections=4",
            "--rate=100",
            "--duration=2",
            f"--output={out}",
        )
    assert 180 <= summary["ok"] <= 205, summary  # type: ignore[operator]
    assert served.counts == {"ok": summary["ok"]}
    assert json.loads(out.read_text()) == summary
    timeline = summary["timeline"]
    assert isinstance(timeline, list) and all(40 <= ok <= 110 for ok, _ in timeline[:2]), timeline


def test_connections_are_spread_over_the_urls() -> None:
    with server(keep_alive) as (a, served_a), server(keep_alive) as (b, served_b):
        summary = load(
            f"--url=http://127.0.0.1:{a}/", f"--url=http://127.0.0.1:{b}/", "--duration=0.5"
        )
    assert served_a.counts["ok"] and served_b.counts["ok"]
    assert served_a.counts["ok"] + served_b.counts["ok"] == summary["ok"]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, 0.0),
        ([1.0], 99, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 75, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([float(i) for i in range(1, 1001)], 99.9, 999.0),
        ([float(i) for i in range(1, 101)], 1, 1.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert loadgen.percentile(values, q) == expected


@pytest.mark.parametrize(
    ("url", "host", "port", "request_line"),
    [
        ("http://api.mesh:8081/healthz", "api.mesh", 8081, b"GET /healthz HTTP/1.1\r\n"),
        ("http://10.0.0.1/", "10.0.0.1", 80, b"GET / HTTP/1.1\r\n"),
        ("http://[fd00::1]:81/a?b=1", "fd00::1", 81, b"GET /a?b=1 HTTP/1.1\r\n"),
        ("http://h", "h", 80, b"GET / HTTP/1.1\r\n"),
    ],
)
def test_targets_from_urls(url: str, host: str, port: int, request_line: bytes) -> None:
    target = loadgen.Target.of(url)
    assert (target.host, target.port) == (host, port)
    assert target.request.startswith(request_line) and target.request.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("url", ["https://h/", "ftp://h/", "h:80/"])
def test_only_plain_http_urls(url: str) -> None:
    with pytest.raises(ValueError, match="only http://"):
        loadgen.Target.of(url)


def test_the_log_has_every_request_with_its_end_latency_status_and_url() -> None:
    before = time.time()
    with server(error_every_other) as (port, served):
        summary = load(
            f"--url=http://127.0.0.1:{port}/a",
            f"--url=http://127.0.0.1:{port}/b",
            "--connections=2",
            "--rate=100",
            "--duration=0.5",
            "--log-requests",
        )
    after = time.time()
    log = summary["log"]
    assert isinstance(log, list) and len(log) == summary["requests"] == sum(served.counts.values())
    assert all(before < end < after and 0 < ms < 1000 for end, ms, _, _ in log), log
    statuses = [status for _, _, status, _ in log]
    assert statuses.count(503) == served.counts["non_2xx"] and statuses.count(200) == summary["ok"]
    assert {url for *_, url in log} == {0, 1}  # connection i keeps URL i
    assert "log" not in load(f"--url=http://127.0.0.1:{port}/", "--duration=0.1", "--rate=10")


def test_a_request_without_an_answer_is_logged_with_status_zero() -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # bound, never listening: refused
    try:
        url = f"--url=http://127.0.0.1:{held.getsockname()[1]}/"
        summary = load(url, "--connections=1", "--duration=0.2", "--log-requests")
    finally:
        held.close()
    log = summary["log"]
    assert isinstance(log, list) and log and len(log) == summary["failed"]
    assert {status for _, _, status, _ in log} == {0}


@pytest.mark.parametrize("rotate", [True, False])
def test_rotate_gives_each_url_its_share_on_every_connection(rotate: bool) -> None:
    with server(keep_alive) as (port, _):
        urls = [f"--url=http://127.0.0.1:{port}/{name}" for name in ("a", "b", "c")]
        flags = ["--rotate"] if rotate else []
        summary = load(*urls, *flags, "--connections=2", "--duration=0.5", "--log-requests")
    log = summary["log"]
    assert isinstance(log, list)
    counts = [sum(1 for *_, url in log if url == i) for i in range(3)]
    if rotate:  # in turn on each of the 2 connections: at most one apart on each
        assert max(counts) - min(counts) <= 2 and min(counts) > 10, counts
    else:  # connection i keeps URL i: the third gets none
        assert counts[2] == 0 and counts[0] and counts[1], counts


def test_rotate_refuses_urls_of_several_hosts() -> None:
    done = subprocess.run(
        [sys.executable, str(LOADGEN), "--url=http://a:1/", "--url=http://b:1/", "--rotate"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "one host and port" in done.stderr, done.stderr
