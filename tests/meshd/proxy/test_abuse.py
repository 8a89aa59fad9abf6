"""Abuse against real meshd processes, where meshd waits or buffers before it trusts a peer.

1. Before a peer is known: silent sockets and handshakes that never finish on
   the mesh port, garbage on every port, slowloris through the relay.
2. An authenticated mesh host that misbehaves: garbage inside a link, PING and
   refused-OPEN floods it never reads, flow control ignored, many streams and
   links it never reads, log lines forged in OPEN fields, empty DATA,
   certificates that expire under a link or should never identify a peer.
3. Local clients: OPEN+RST storms (clients that abort mid-connect), idle
   connections, clients that never read.
(The admin port's own abuse is in test_abuse_admin.py.)

Each test runs a pair A -> B on loopback (tests/meshd/pairs.py). While the
abuse goes on, a normal client keeps fetching a page through A; afterwards
it got every answer in time, the peak RSS of each meshd (the maximum over
the run, sampled every 20 ms by tests/meshd/watch.py) stayed within a bound,
RSS and descriptors come back near their baseline, the apps' connections are
all closed, and both meshd exit 0 on SIGTERM.

Measured on a 2-core box (one meshd): ~31 MiB at rest; 2,000 idle streams
+4.5 MiB (A) and +11..18 (B); the bounds below leave about twice what each
abuse costs now, far below what it cost before it was bounded (noted per test).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import re
import resource
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from meshd.proxy.frames import DATA, HEADER, OPEN, PING, RST, WINDOW, OpenRequest, frame
from tests.meshd.abusers import Crowd, Intruder, cut_off, normal_client, partial_client_hello
from tests.meshd.harness import Meshd, MeshNet
from tests.meshd.pairs import BIG, Pair, get_web, mesh_client
from tests.meshd.watch import Watch
from tests.poll import until

MiB = 1024  # in KiB, as RSS is measured
RSS_GROWTH = 40 * MiB  # what one abuse may add to a meshd's RSS, at its peak
SETTLED_RSS = 8 * MiB  # how close to its baseline a meshd's RSS must come back (within 20 s)
SETTLED_FDS = 16  # and its descriptors
T = TypeVar("T")
STALL_MAX = 256 * 1024 * 1024  # it stalls well before: kernel socket buffers (22-59 MiB seen)


def watched(pair: Pair, *more: Meshd) -> Watch:
    return Watch({m.name: m.proc.pid for m in (pair.a, pair.b, *more)})


def settle(label: str, pair: Pair, watch: Watch, growth: int = RSS_GROWTH) -> None:
    """Peak within ``growth``; memory, descriptors and app connections back to rest."""
    for name in watch.pids:
        watch.check_peak(label, name, growth)
    wait_for("the apps' connections to close", lambda: not pair.apps.transports, 20)
    try:
        watch.settled(label, SETTLED_RSS, SETTLED_FDS)
    finally:
        print(f"{label}: heap of B {stats(pair, pair.b)['heap']}")


def check_survived(pair: Pair) -> None:
    """Both meshd still run and serve, and stop cleanly on SIGTERM."""
    assert pair.a.proc.poll() is None, pair.a.log_text()
    assert pair.b.proc.poll() is None, pair.b.log_text()
    pair.get()
    for meshd in (pair.a, pair.b):
        assert meshd.stop() == 0, meshd.log_text()
        assert "Traceback" not in meshd.log_text(), meshd.log_text()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stats(pair: Pair, meshd: Meshd) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(pair.net.admin(meshd, "GET", "/stats")[1])
    return result


def _active(pair: Pair, meshd: Meshd) -> int:
    """App connections meshd relays right now (its /stats)."""
    return int(stats(pair, meshd)["active_connections"])


def _links_in(pair: Pair) -> int:
    links = stats(pair, pair.b)["links_in"]
    assert isinstance(links, list)
    return len(links)


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    until(condition, timeout, what, every=0.1)


def log_lines(meshd: Meshd, pattern: str) -> list[str]:
    return [line for line in meshd.log_text().splitlines() if re.search(pattern, line)]


# === 1. before a peer is known ===========================================================
# Before: a Link allocated its 256 KiB read buffer at accept, and uvloop another 256 KiB per
# TLS connection, with no bound on handshakes in flight: 3,000 silent sockets took B from
# 31 MiB to 957 MiB, kept after they closed.
@pytest.mark.parametrize(
    ("what", "payload"),
    [("silent sockets", b""), ("handshakes that never finish", partial_client_hello())],
)
def test_unauthenticated_sockets_on_the_mesh_port_hold_nothing(
    pair: Pair, net: MeshNet, what: str, payload: bytes
) -> None:
    raise_fd_limit()
    with watched(pair) as watch, Crowd(pair.b.ports["mesh"], 3000, payload) as crowd:
        until(lambda: crowd.opened >= 3000, 20, "3000 sockets opened", every=0.1)
        c = net.start("c", upstreams={"web": 0})  # a mesh host links while they keep coming
        started = time.monotonic()
        until(lambda: _served_via(c), 10, "a new mesh host to link to B", every=0.05)
        linked = time.monotonic() - started  # its dial may be turned away once: back-off 1 s
        with normal_client(pair, via=c) as prober:
            time.sleep(1.0)
        watch.sample()
    print(
        f"\n{what}: {crowd.opened} opened by many sources, held up to 3000; C linked in {linked:.2f}s"
    )
    prober.check(what)
    settle(what, pair, watch, growth=24 * MiB)
    assert net.metric_sum(pair.b, "meshd_handshake_failures_total", reason="evicted") > 0
    check_survived(pair)


def _served_via(meshd: Meshd) -> bool:
    try:
        get_web(meshd)
    except (OSError, AssertionError, http.client.HTTPException):
        return False
    return True


def _garbage_payloads() -> list[bytes]:
    client_hello = bytes.fromhex("16030100c4010000c00303") + os.urandom(200)
    return [
        os.urandom(3000),
        client_hello,  # a TLS record header announcing a ClientHello, then noise
        HEADER.pack(DATA, 1, 0xFFFFFFFF) + os.urandom(64),  # an absurd frame, in plaintext
        b"\x16\x03\x03\xff\xff" + b"\x00" * 50,  # a TLS record of 64 KiB that never comes
    ]


def _throw(port: int, payload: bytes) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=8) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
    except OSError:
        pass  # reset: refused, as it should be


def _throw_all(jobs: list[tuple[int, bytes]]) -> None:
    for port, payload in jobs:
        _throw(port, payload)


def test_garbage_is_refused_counted_and_logged_in_moderation(pair: Pair) -> None:
    """Before: one log line per failed handshake (20,000 lines in 5 s from one prober)."""
    a, b, net = pair.a, pair.b, pair.net
    targets = {
        "B mesh": b.ports["mesh"],
        "B inbound": b.ports["inbound"],
        "A upstream": a.ports["upstream:web"],
        "A admin": a.ports["admin"],
        "B admin": b.ports["admin"],
    }
    rounds = 40
    jobs = [
        (port, payload)
        for _ in range(rounds)
        for port in targets.values()
        for payload in _garbage_payloads()
    ]
    per_target = rounds * len(_garbage_payloads())
    with watched(pair) as watch, normal_client(pair) as prober:
        workers = [threading.Thread(target=_throw_all, args=(jobs[i::8],)) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        wait_for(
            "B to count the mesh port's failed handshakes",
            lambda: (
                net.metric_sum(b, "meshd_handshake_failures_total", listener="mesh") >= per_target
            ),
        )
    mesh_failures = net.metric_sum(b, "meshd_handshake_failures_total", listener="mesh")
    inbound_refused = net.metric_sum(
        b, "meshd_connections_refused_total", listener="inbound", reason="plaintext"
    )
    admin_failures = [
        net.metric_sum(m, "meshd_handshake_failures_total", listener="admin") for m in (a, b)
    ]
    print(
        f"\ngarbage: {len(jobs)} connections; B mesh handshake failures {mesh_failures:.0f}, "
        f"B inbound refused {inbound_refused:.0f}, admin handshake failures A/B {admin_failures}"
    )
    assert mesh_failures == per_target
    assert inbound_refused == per_target
    assert admin_failures == [per_target, per_target]
    b.wait_log(r"mesh port: TLS handshake with 127\.0\.0\.1:\d+ failed \(not_tls\)")
    b.wait_log(r"more failed handshakes on the mesh port in the last 10s were not logged", 15)
    logged = log_lines(b, r"mesh port: TLS handshake with")
    assert len(logged) <= 10, f"{len(logged)} lines for {per_target} failed handshakes"
    prober.check("garbage")
    settle("garbage", pair, watch)
    check_survived(pair)


def test_slowloris_does_not_stop_meshd_serving_others(pair: Pair) -> None:
    port = pair.a.ports["upstream:web"]
    head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 100_000  # never ends
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    stop = threading.Event()
    sent = [0]

    def drip() -> None:
        while not stop.is_set() and sent[0] < len(head):
            for s in socks:
                s.send(head[sent[0] : sent[0] + 1])
            sent[0] += 1
            stop.wait(0.1)

    dripper = threading.Thread(target=drip, daemon=True)
    with watched(pair) as watch:
        dripper.start()
        try:
            wait_for("200 slow connections on A and B", lambda: _active(pair, pair.b) == 200)
            assert _active(pair, pair.a) == 200
            with normal_client(pair) as prober:
                time.sleep(3.0)
            assert dripper.is_alive(), "the slowloris stopped early (a send failed?)"
        finally:
            stop.set()
            dripper.join(5)
            for s in socks:
                s.close()
    print(f"\nslowloris: 200 connections, {sent[0]} bytes each at 10 bytes/s")
    prober.check("slowloris")
    settle("slowloris", pair, watch)
    check_survived(pair)


# === 2. an authenticated mesh host that misbehaves ========================================
X_SOURCE = "spiffe://t.mesh/host/x"


def _open_echo(port: int) -> bytes:
    return frame(OPEN, 1, OpenRequest("echo", port, X_SOURCE).encode())


@pytest.mark.parametrize(
    ("bad", "logged"),
    [
        (
            lambda _: HEADER.pack(DATA, 1, 0x7FFFFFFF),
            r"frame of 2147483647 bytes exceeds the limit",
        ),
        (lambda _: frame(99, 0, b"??"), r"unknown frame type 99"),
        (lambda _: frame(OPEN, 1, b"\xff\xfe\xfd"), r"malformed OPEN frame"),
        (lambda _: frame(OPEN, 2, b"x"), r"unexpected OPEN for stream 2"),
        (lambda port: _open_echo(port) + frame(WINDOW, 1, b"\x00"), r"malformed WINDOW frame"),
        (lambda _: HEADER.pack(PING, 0, 1 << 20), r"PING frame of 1048576 bytes \(at most 8\)"),
    ],
    ids=["absurd-length", "unknown-type", "bad-open", "even-open", "short-window", "huge-ping"],
)
def test_garbage_inside_a_valid_link_aborts_only_that_link(
    pair: Pair, bad: Callable[[int], bytes], logged: str
) -> None:
    net, b = pair.net, pair.b
    intruder = net.pki.issue("x", "host/x")  # a genuine mesh host, misbehaving
    with normal_client(pair) as prober:
        for _ in range(5):
            raw = socket.create_connection(("127.0.0.1", b.ports["mesh"]), timeout=5)
            with mesh_client(net, intruder).wrap_socket(raw) as tls:
                tls.sendall(bad(pair.apps.echo_port))
                assert cut_off(tls), "B kept a link that broke the protocol"
        b.wait_log(rf"aborting link to 127\.0\.0\.1:\d+: protocol error: .*{logged}")
    prober.check(f"garbage in a link ({logged})")
    check_survived(pair)


BIG_PING = frame(PING, 0, os.urandom(1 << 20))
SMALL_PINGS = frame(PING, 0, b"12345678") * 4096


def _failed_opens(round_: int, pair: Pair) -> bytes:
    """2,000 OPENs for a service B has, whose app is down (each accepted, then reset)."""
    request = OpenRequest("gone", pair.apps.gone_port, X_SOURCE).encode()
    return b"".join(frame(OPEN, round_ * 4000 + 2 * i + 1, request) for i in range(2000))


def _refused_opens(round_: int, pair: Pair) -> bytes:
    """2,000 OPENs for a service B does not have (stream ids rising round after round)."""
    request = OpenRequest("nosuch", 80, X_SOURCE).encode()
    return b"".join(frame(OPEN, round_ * 4000 + 2 * i + 1, request) for i in range(2000))


@pytest.mark.parametrize(
    ("what", "wire", "limit"),
    [
        ("one-MiB PINGs", lambda *_: BIG_PING, 300 << 20),
        ("eight-byte PINGs", lambda *_: SMALL_PINGS, 64 << 20),
        ("refused OPENs", _refused_opens, 64 << 20),
        ("OPENs whose app is down", _failed_opens, 64 << 20),
    ],
    ids=["big-pings", "small-pings", "refused-opens", "failed-opens"],
)
def test_a_flood_from_a_host_that_never_reads_is_cut_off(
    pair: Pair, what: str, wire: Callable[[int, Pair], bytes], limit: int
) -> None:
    with watched(pair) as watch, normal_client(pair) as prober:
        intruder = Intruder(pair, rcvbuf=4096)
        sent, round_ = 0, 0
        with contextlib.suppress(OSError):  # reset or TLS EOF: cut off
            while sent < limit:
                data = wire(round_, pair)
                intruder.send(data)
                sent, round_ = sent + len(data), round_ + 1
        intruder.close()
    print(f"\n{what}: B cut the link off after {sent / 2**20:.1f} MiB")
    prober.check(what)
    settle(what, pair, watch, growth=24 * MiB)
    assert sent < limit, f"B never cut off a peer flooding {what}"
    pair.b.wait_log(r"aborting link to .*(the peer asks for replies|PING frame of)")
    check_survived(pair)


def test_a_peer_ignoring_flow_control_is_cut_off(pair: Pair) -> None:
    """A mesh host that sends DATA past its stream window must not make B buffer it all."""
    chunk = HEADER.pack(DATA, 1, 65536) + os.urandom(65536)
    with watched(pair) as watch, normal_client(pair) as prober:
        intruder = Intruder(pair)
        intruder.send(_open_echo(pair.apps.echo_port))
        sent = intruder.flood(chunk, 200 << 20)  # the echo app's replies are never read
        pair.b.wait_log(
            r"aborting link to 127\.0\.0\.1:\d+: protocol error: stream 1: the peer sent more"
        )
        intruder.close()
    print(f"\nflow control: B cut the link off after {sent / 2**20:.1f} MiB of DATA")
    assert sent < 32 * 2**20
    prober.check("peer ignoring flow control")
    settle("peer ignoring flow control", pair, watch)
    check_survived(pair)


# Before: no link-level budget (about 2 MiB of host memory per stream, 10,000 streams per
# link) and no limit on links per peer: every stream of a host that never reads could
# make B hold a full stream window of what the app sent.
def test_many_streams_and_links_from_a_host_that_never_reads(pair: Pair) -> None:
    fast = pair.apps.http_port
    get_mid = b"GET /mid HTTP/1.1\r\nHost: mid\r\n\r\n"  # 1.5 MiB: more than a window
    with watched(pair) as watch, normal_client(pair) as prober:
        intruders = [Intruder(pair, rcvbuf=4096) for _ in range(6)]
        wait_for("B to refuse the links past 4", lambda: _links_in(pair) == 1 + 4)
        pair.b.wait_log(r"refused link from 127\.0\.0\.1:\d+: .*already holds its links")
        for intruder in intruders:
            with contextlib.suppress(OSError):  # the refused ones are closed
                for _ in range(30):
                    intruder.open("fast", fast, get_mid)
        wait_for("the app to answer 120 GETs", lambda: pair.apps.requests >= 120, 20)
        time.sleep(1.0)  # nobody reads any of it: B can no longer send to these hosts
        for _ in range(60):  # and more streams, one by one, from then on
            for intruder in intruders:
                with contextlib.suppress(OSError):
                    intruder.open("fast", fast, get_mid)
            time.sleep(0.01)
        wait_for("the app to answer 360 GETs", lambda: pair.apps.requests >= 360, 20)
        time.sleep(2.0)
        for intruder in intruders:
            intruder.close()
    print(f"\nnever-read streams: the app got {pair.apps.big_written / 2**20:.0f} MiB out")
    prober.check("many streams and links, never read")
    settle("many streams and links, never read", pair, watch)
    check_survived(pair)


def test_a_flood_of_empty_frames_does_not_hold_the_loop(pair: Pair) -> None:
    """Before: frames without work (empty DATA, DATA for a stream that ended) were not
    counted against a turn: a host sending them held B's event loop for seconds."""
    with watched(pair) as watch, normal_client(pair) as prober, Intruder(pair) as intruder:
        sid = intruder.open("echo", pair.apps.echo_port, b"hi")
        intruder.read_until(b"hi")
        reader = threading.Thread(target=cut_off, args=(intruder.tls,), daemon=True)
        reader.start()  # this host reads everything B sends: only the frames are the abuse
        sent = intruder.flood(frame(DATA, sid, b"") * 10_000, 48 << 20)
    print(f"\nempty DATA: {sent / 2**20:.0f} MiB of empty frames")
    prober.check("empty DATA flood")
    settle("empty DATA flood", pair, watch)
    check_survived(pair)


def test_opens_reset_at_once_leave_no_connect_behind(pair: Pair) -> None:
    """Before: an OPEN reset while its app connect was pending released its admission but
    not the connect: with an app that does not accept, 98,200 OPEN+RST in 3 s left B with
    16,170 descriptors."""
    stuck = pair.apps.stuck_port
    request = OpenRequest("stuck", stuck, X_SOURCE).encode()
    with watched(pair) as watch, normal_client(pair) as prober, Intruder(pair) as intruder:
        sid, deadline = 1, time.monotonic() + 3
        while time.monotonic() < deadline:
            wire = b"".join(
                frame(OPEN, sid + 2 * i, request) + frame(RST, sid + 2 * i, b"\x01gone")
                for i in range(500)
            )
            intruder.send(wire)
            sid += 1000
    print(f"\nOPEN+RST to a stuck app: {(sid - 1) // 2} streams opened and reset")
    prober.check("OPEN+RST to a stuck app")
    assert watch.peaks["b"].fds - watch.baseline["b"].fds < 1000, watch.peaks["b"]
    settle("OPEN+RST to a stuck app", pair, watch)
    check_survived(pair)


def test_one_host_cannot_take_every_connection(make_pair: Callable[..., Pair]) -> None:
    """Before: max_connections was shared by every peer, and one took them all."""
    pair = make_pair(extra_b="[limits]\nmax_connections = 300\nmax_streams_per_peer = 200")
    with normal_client(pair) as prober, Intruder(pair) as intruder:
        for _ in range(400):
            intruder.open("echo", pair.apps.echo_port, b"x")
        wait_for("B to relay 200 of them", lambda: pair.apps.echo_open >= 200)
        time.sleep(1.0)
        assert pair.apps.echo_open == 200
    refused = pair.net.metric_sum(pair.b, "meshd_connections_refused_total", reason="peer_limit")
    print(f"\nper-peer share: 200 relayed, {refused:.0f} refused")
    assert refused == 200
    prober.check("one host, 400 streams")
    check_survived(pair)


# Before: OPEN fields were logged as they came, newlines included, and meshctl decided
# whether a reload worked from meshd's journal: any mesh host could forge that line.
def test_log_lines_forged_in_open_fields_never_reach_the_log(pair: Pair) -> None:
    forged = "INFO meshd: reloaded /etc/meshd/meshd.toml (registry version 99)"
    echo = pair.apps.echo_port
    payloads = [
        f"web\n{forged}\x00{echo}\x00{X_SOURCE}\x00".encode(),
        f"echo\x00{echo}\x00{X_SOURCE}\n{forged}\x00".encode(),
        f"echo\x00{echo}\x00{X_SOURCE}\x0010.0.0.1:80\n{forged}".encode(),
    ]
    with normal_client(pair) as prober:
        for payload in payloads:
            with Intruder(pair) as intruder:
                intruder.send(frame(OPEN, 1, payload))
                assert intruder.cut_off(), "B kept a link with a malformed OPEN"
        pair.b.wait_log(r"protocol error: malformed OPEN frame")
    assert not re.search(r"^INFO meshd: reloaded", pair.b.log_text(), re.MULTILINE)
    prober.check("forged log lines")
    check_survived(pair)


def test_an_empty_data_frame_keeps_the_link(pair: Pair) -> None:
    """Before: a zero-length DATA frame aborted the link as 'unknown frame type 2'."""
    with Intruder(pair) as intruder:
        sid = intruder.open("echo", pair.apps.echo_port, b"ping")
        intruder.read_until(b"ping")
        intruder.send(frame(DATA, sid, b"") + frame(DATA, sid, b"pong"))
        intruder.read_until(b"pong")
    assert "unknown frame type" not in pair.b.log_text()
    check_survived(pair)


# Before: a link outlived the certificate it was authenticated with, and session tickets
# let an expired certificate resume a session (not verified again).
def test_no_link_outlives_its_peer_certificate(pair: Pair) -> None:
    short = pair.net.pki.issue("short", "host/x", lifetime=dt.timedelta(seconds=4))
    with Intruder(pair, short) as intruder:
        intruder.open("echo", pair.apps.echo_port, b"hello")
        intruder.read_until(b"hello")
        started = time.monotonic()
        assert intruder.cut_off(), "B kept the link after the peer's certificate expired"
    print(f"\nexpiry: link cut {time.monotonic() - started:.1f}s after it was up (cert: 4 s)")
    pair.b.wait_log(r"aborting link to .*the peer's certificate expired")
    check_survived(pair)


def _served(pair: Pair, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> bool:
    """Does a link made with ``session`` (resumed, if B allows it) get an echo back?"""
    raw = socket.create_connection(("127.0.0.1", pair.b.ports["mesh"]), timeout=5)
    try:
        with ctx.wrap_socket(raw, session=session) as tls:
            request = OpenRequest("echo", pair.apps.echo_port, X_SOURCE).encode()
            tls.sendall(frame(OPEN, 1, request) + frame(DATA, 1, b"again"))
            received = b""
            while b"again" not in received:
                chunk = tls.recv(65536)
                if not chunk:
                    return False
                received += chunk
            return True
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return False


def test_an_expired_certificate_cannot_resume_a_session(pair: Pair) -> None:
    short = pair.net.pki.issue("short", "host/x", lifetime=dt.timedelta(seconds=3))
    ctx = mesh_client(pair.net, short)
    raw = socket.create_connection(("127.0.0.1", pair.b.ports["mesh"]), timeout=5)
    with ctx.wrap_socket(raw) as tls:
        request = OpenRequest("echo", pair.apps.echo_port, X_SOURCE).encode()
        tls.sendall(frame(OPEN, 1, request) + frame(DATA, 1, b"hello"))
        received = b""
        while b"hello" not in received:  # reading also takes in any session ticket
            received += tls.recv(65536)
        session = tls.session
    time.sleep(4.0)
    assert not _served(pair, ctx, session), "an expired certificate resumed a session"
    check_survived(pair)


# Before: a leaf marked as a CA, or without key usage, was accepted; ALPN was offered but
# never required.
@pytest.mark.parametrize(
    ("kind", "logged"),
    [
        ("ca-leaf", r"CA certificate, not a leaf"),
        ("no-key-usage", r"no key usage"),
        ("no-alpn", r"does not speak meshd-link/2 or meshd-link/1"),
    ],
)
def test_peers_that_are_not_proper_mesh_hosts_are_refused(
    pair: Pair, kind: str, logged: str
) -> None:
    pki = pair.net.pki
    identity = {
        "ca-leaf": lambda: pki.issue_odd("odd", "host/x", ca=True, key_usage=True),
        "no-key-usage": lambda: pki.issue_odd("odd", "host/x", ca=False, key_usage=False),
        "no-alpn": lambda: pki.issue("x", "host/x"),
    }[kind]()
    alpn = None if kind == "no-alpn" else "meshd-link/1"
    with Intruder(pair, identity, alpn=alpn) as intruder:
        with contextlib.suppress(OSError):
            intruder.open("echo", pair.apps.echo_port, b"hello")
        assert intruder.cut_off()
    pair.b.wait_log(rf"aborting link to .*peer refused: .*{logged}")
    assert pair.apps.echo_open == 0
    check_survived(pair)


# === 3. local clients =====================================================================
# Before: a stream reset while its app connection was being made adopted that connection
# once made, and nothing ever closed it: 5,000 clients that sent a byte and aborted left
# 2,563 app connections open on B while its active_connections read 0.
def test_clients_that_abort_mid_connect_leave_no_app_connection(pair: Pair) -> None:
    raise_fd_limit()
    port = pair.a.ports["upstream:echo"]
    linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # on, 0 s: close sends RST
    with watched(pair) as watch, normal_client(pair) as prober:
        for _ in range(20):
            socks = []
            for _ in range(250):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                s.send(b"x")
                socks.append(s)
            for s in socks:
                s.close()
        wait_for("B to release every stream", lambda: _active(pair, pair.b) == 0, 20)
        wait_for("A to release every stream", lambda: _active(pair, pair.a) == 0, 20)
    print(f"\nOPEN+RST storm: echo app connections open afterwards: {pair.apps.echo_open}")
    prober.check("OPEN+RST storm")
    settle("OPEN+RST storm", pair, watch)
    check_survived(pair)


def _open_echoes(
    port: int, count: int, sent_at: dict[socket.socket, float] | None = None
) -> list[socket.socket]:
    """``count`` connections through A to the echo app, each proven alive by one round trip.

    ``sent_at`` gets when each one's round trip started: meshd saw its last activity after that.
    """
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        socks.append(s)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    pending, deadline = len(socks), time.monotonic() + 20
    while pending:
        assert time.monotonic() < deadline, f"{pending} connections never echoed"
        for key, events in sel.select(1.0):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            if events & selectors.EVENT_WRITE:
                conn.send(b"hi")
                if sent_at is not None:
                    sent_at[conn] = time.monotonic()
                sel.modify(conn, selectors.EVENT_READ)
            else:
                assert conn.recv(10) == b"hi"
                sel.unregister(conn)
                pending -= 1
    sel.close()
    return socks


def test_clients_that_never_read_do_not_stall_the_others(pair: Pair) -> None:
    """Slow downloads hold their stream windows, never the whole link: a connection made
    before them, idle meanwhile, to another service, is still answered at once. (A link
    budget that paused every stream stalled it once ten downloads went unread.)"""
    kept = http.client.HTTPConnection("127.0.0.1", pair.a.ports["upstream:web"], timeout=5)
    kept.request("GET", "/")
    assert kept.getresponse().read() == b"web got 0 bytes from 127.0.0.1"
    greedy = []
    for _ in range(20):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", pair.a.ports["upstream:fast"]))
        s.sendall(b"GET /big HTTP/1.1\r\nHost: big\r\n\r\n")
        greedy.append(s)
    try:
        wait_for("the app to answer 20 GET /big", lambda: pair.apps.requests >= 20)
        time.sleep(2.0)  # their windows fill up; nobody reads them
        for _ in range(5):
            started = time.monotonic()
            kept.request("GET", "/")
            assert kept.getresponse().read() == b"web got 0 bytes from 127.0.0.1"
            assert time.monotonic() - started < 1.0
    finally:
        kept.close()
        for s in greedy:
            s.close()
    check_survived(pair)


def test_two_thousand_idle_connections(pair: Pair) -> None:
    raise_fd_limit()
    with watched(pair) as watch:
        started = time.monotonic()
        socks = _open_echoes(pair.a.ports["upstream:echo"], 2000)
        try:
            opened = time.monotonic() - started
            assert pair.apps.echo_open == 2000
            assert _active(pair, pair.a) == 2000
            assert _active(pair, pair.b) == 2000
            with normal_client(pair) as prober:
                time.sleep(2.0)
            print(f"\nidle: 2000 connections opened and echoed in {opened:.1f}s")
            # still usable after sitting idle
            for s in socks[::200]:
                s.setblocking(True)
                s.settimeout(5)
                s.sendall(b"again")
                assert s.recv(10) == b"again"
        finally:
            for s in socks:
                s.close()
        wait_for("A to release every stream", lambda: _active(pair, pair.a) == 0)
        wait_for("B to release every stream", lambda: _active(pair, pair.b) == 0)
    prober.check("2000 idle")
    settle("2000 idle", pair, watch)
    check_survived(pair)


@pytest.mark.parametrize("where", ["both", "a-only"])
def test_idle_connections_are_closed_after_the_idle_timeout(
    make_pair: Callable[..., Pair], where: str
) -> None:
    """With ``[timeouts] idle = 2.0``, meshd closes connections idle for ~2 s, not busy ones.

    "a-only": only A has the short timeout; B must let go of its side too
    (its stream and its connection to the app), not keep them for its own 300 s.
    """
    idle = "[timeouts]\nidle = 2.0"
    pair = make_pair(extra_a=idle, extra_b=idle if where == "both" else "")
    sent_at: dict[socket.socket, float] = {}
    socks = _open_echoes(pair.a.ports["upstream:echo"], 21, sent_at)
    try:
        last_use = time.monotonic()
        busy = socks[-1]
        busy.setblocking(True)
        busy.settimeout(5)
        idle_socks = socks[:-1]
        closed_after: dict[socket.socket, float] = {}  # seconds after last_use
        idle_for: list[float] = []  # seconds after the socket's own last round trip began
        while len(closed_after) < len(idle_socks) and time.monotonic() - last_use < 6:
            busy.sendall(b"still here")  # a connection in use is not idle
            assert busy.recv(100) == b"still here"
            waiting = [s for s in idle_socks if s not in closed_after]
            readable, _, _ = select.select(waiting, [], [], 0.2)
            for s in readable:
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(10) == b""
                now = time.monotonic()
                closed_after[s] = now - last_use
                idle_for.append(now - sent_at[s])
        times = sorted(closed_after.values()) or [0.0]
        print(
            f"\nidle timeout 2.0s ({where}): {len(closed_after)} of {len(idle_socks)} idle "
            f"connections closed after {times[0]:.2f}-{times[-1]:.2f}s; the busy one still works"
        )
        assert len(closed_after) == len(idle_socks)
        # closed once idle for 2 s (a sweep runs every 0.5 s), not before, not long after
        assert all(t >= 1.95 for t in idle_for), sorted(idle_for)
        assert all(t <= 4.0 for t in times), times
        busy.sendall(b"ok")
        assert busy.recv(10) == b"ok"
        # the far side lets go as well: B's streams and B's connections to the app
        wait_for(
            "the echo app to see the idle connections closed", lambda: pair.apps.echo_open == 1
        )
        wait_for("B to release the idle streams", lambda: _active(pair, pair.b) == 1)
    finally:
        for s in socks:
            s.close()
    check_survived(pair)


def test_client_that_never_reads_a_large_response(pair: Pair) -> None:
    port = pair.a.ports["upstream:fast"]
    with watched(pair) as watch, socket.create_connection(("127.0.0.1", port), timeout=5) as greedy:
        greedy.sendall(b"GET /big HTTP/1.1\r\nHost: big\r\n\r\n")
        with normal_client(pair) as prober:
            wait_for("the app to start sending", lambda: pair.apps.big_written > 0)
            stalled_at, last, deadline = time.monotonic(), -1, time.monotonic() + 20
            while time.monotonic() - stalled_at < 1.0 and time.monotonic() < deadline:
                if pair.apps.big_written != last:
                    last, stalled_at = pair.apps.big_written, time.monotonic()
                time.sleep(0.1)
            time.sleep(1.0)
    written = pair.apps.big_written
    print(f"\nnever reads (GET /big): the app got {written / 2**20:.1f} MiB of 512 MiB out")
    assert written < STALL_MAX  # the rest waits in the app: nobody buffers it for a non-reader
    prober.check("never reads (GET)")
    settle("never reads (GET)", pair, watch)
    check_survived(pair)


def test_client_that_never_reads_its_echo(pair: Pair) -> None:
    port = pair.a.ports["upstream:echo"]
    chunk = os.urandom(1 << 20)
    with watched(pair) as watch, socket.create_connection(("127.0.0.1", port), timeout=5) as greedy:
        greedy.setblocking(False)
        sent, stalled_at = 0, time.monotonic()
        with normal_client(pair) as prober:
            while sent < BIG and time.monotonic() - stalled_at < 1.0:
                try:
                    n = greedy.send(chunk)
                except BlockingIOError:
                    time.sleep(0.05)
                    continue
                sent += n
                stalled_at = time.monotonic()
            time.sleep(0.5)
    print(
        f"\nnever reads (echo): the client could send {sent / 2**20:.1f} MiB of 512 MiB, then stalled"
    )
    assert sent < STALL_MAX
    prober.check("never reads (echo)")
    settle("never reads (echo)", pair, watch)
    check_survived(pair)
