"""A link's life between the certificates that made it: when it retires, and what moves.

With fake transports: the timers a link sets from both certificates' expiry
(a table), and what a retiring link does with its streams (an HTTP stream
moves at its next request boundary, an opaque one stays). The same over
real meshd processes and real TLS is in test_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from meshd.identity import SpiffeId
from meshd.proxy import link as link_module
from meshd.proxy.connect import Connector
from meshd.proxy.frames import (
    DATA,
    FIN,
    GOAWAY,
    HEADER,
    HEADER_SIZE,
    MAX_SID,
    OpenRequest,
    frame,
)
from meshd.proxy.http.actions import Answer
from meshd.proxy.http.exchange import HttpExchange
from meshd.proxy.http.observe import HttpObserver
from meshd.proxy.inbound import MeshPort
from meshd.proxy.link import SWAP_GRACE, Link
from meshd.proxy.pool import LinkPool
from meshd.proxy.stream import Moving, Stream
from meshd.registry import Registry, Revocation
from meshd.runtime import Runtime
from meshd.telemetry.events import OUTBOUND, LinkRetired
from meshd.tls.context import TlsMaterial
from tests.meshd.policy.sample import HOST_A, HOST_C, REGISTRY, config
from tests.meshd.proxy.test_frames import FakeTransport, turn
from tests.meshd.proxy.test_link import SOURCE, turns_until

pytestmark = pytest.mark.anyio
REQUEST = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
NEXT = b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n"
HOUR = 3600.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class PeerCert:
    """What a link reads of the TLS object: the peer certificate's expiry and serial."""

    def __init__(self, not_after: float, serial: str = "0A1B") -> None:
        self.not_after, self.serial = not_after, serial

    def getpeercert(self) -> dict[str, Any]:
        when = time.strftime("%b %d %H:%M:%S %Y GMT", time.gmtime(self.not_after))
        return {"notAfter": when, "serialNumber": self.serial}


def _link(dialer: bool = True) -> tuple[Link, FakeTransport]:
    retired: list[str] = []
    link = Link(
        dialer=dialer,
        max_frame=1 << 14,
        max_streams=10,
        ping_interval=HOUR,
        on_retire=lambda _, reason: retired.append(reason),
    )
    wire = FakeTransport()
    link.transport = wire
    return link, wire


def _frames(out: bytes | bytearray) -> list[tuple[int, int, bytes]]:
    found, pos = [], 0
    while pos < len(out):
        kind, sid, length = HEADER.unpack_from(out, pos)
        pos += HEADER_SIZE
        found.append((kind, sid, bytes(out[pos : pos + length])))
        pos += length
    return found


def _http_stream(link: Link, hooks: bool = False) -> tuple[Stream, FakeTransport, list[Link]]:
    """An outbound HTTP stream on ``link``; what its mover was called with."""
    moved: list[Link] = []
    stream, app = Stream(window=1 << 16), FakeTransport()
    stream.transport = app
    if hooks:
        stream.http = HttpExchange(lambda e: None, OUTBOUND, "a", "web", 8192, (lambda h: (),))
    else:
        stream.http = HttpObserver(lambda e: None, OUTBOUND, "a", "web", 8192)
    stream.mover = lambda s, old: moved.append(old)
    link.open_stream(stream, OpenRequest("web", 80, SOURCE))
    return stream, app, moved


# --- when a link retires and when it is cut -----------------------------------------------
@pytest.mark.parametrize(
    ("dialer", "own", "peer", "retire_in", "expire_in"),
    [
        pytest.param(True, HOUR, HOUR, HOUR - 10, HOUR, id="long-lived: 10 s before"),
        pytest.param(True, HOUR, 40, 30, 40, id="peer-expires-first: a quarter of 40 s"),
        pytest.param(True, 8, HOUR, 6, 8, id="ours-expires-first: a quarter of 8 s"),
        pytest.param(False, 8, HOUR, None, 8, id="accepted: no retirement, cut at ours"),
        pytest.param(False, HOUR, 20, None, 20, id="accepted: cut at the peer's"),
    ],
)
async def test_a_link_retires_before_and_is_cut_at_the_earlier_expiry(
    dialer: bool, own: float, peer: float, retire_in: float | None, expire_in: float
) -> None:
    link, _ = _link(dialer)
    now = time.time()
    link.own_expiry = now + own
    link._schedule_expiry(cast(Any, PeerCert(now + peer)))
    loop = asyncio.get_running_loop()
    assert link._expiry is not None
    assert abs(link._expiry.when() - loop.time() - expire_in) <= 1.1  # the cert has seconds
    if retire_in is None:
        assert link._retiring is None
    else:
        assert link._retiring is not None
        assert abs(link._retiring.when() - loop.time() - retire_in) <= 1.1
    assert link.peer_serial == "0A1B"
    link.connection_lost(None)


async def test_an_expired_link_is_aborted() -> None:
    link, wire = _link()
    link.own_expiry = time.time() + HOUR
    link._schedule_expiry(cast(Any, PeerCert(time.time() - 1)))  # expired: now
    await turns_until(lambda: wire.aborted)
    assert wire.aborted


# --- what moves -----------------------------------------------------------------------
@pytest.mark.parametrize("hooks", [False, True], ids=["observer", "exchange with hooks"])
async def test_an_http_stream_moves_at_its_next_request_boundary(hooks: bool) -> None:
    link, wire = _link()
    stream, app, moved = _http_stream(link, hooks)
    stream.send(REQUEST)
    link.retire("expiring")
    await turn()
    assert not moved and stream.link is link  # a request is outstanding
    assert isinstance(stream.http, Moving)
    link.data_received(frame(DATA, stream.sid, RESPONSE[:10]))
    await turn()
    assert not moved  # half a response
    link.data_received(frame(DATA, stream.sid, RESPONSE[10:]))
    await turns_until(lambda: bool(moved))
    assert moved == [link] and stream.link is None and not link.streams
    assert not isinstance(stream.http, Moving)
    await turn()
    sent = _frames(wire.out)
    assert (GOAWAY, 0, b"") in sent and sent[-1] == (FIN, 1, b"")  # closed cleanly: no RST
    assert app.out == RESPONSE and not (app.aborted or app.closed)
    stream.send(NEXT)  # held until a fresh link takes it
    fresh, fresh_wire = _link()
    fresh.open_stream(stream, OpenRequest("web", 80, SOURCE))
    await turn()
    assert [d for k, _, d in _frames(fresh_wire.out) if k == DATA] == [NEXT]


async def test_an_idle_http_stream_moves_at_once() -> None:
    link, _ = _link()
    stream, _, moved = _http_stream(link)
    stream.send(REQUEST)
    link.data_received(frame(DATA, stream.sid, RESPONSE))
    link.retire("renewed")
    assert moved == [link] and not link.streams and link.retired == "renewed"


async def test_a_request_sent_before_the_move_keeps_the_stream_on_its_link() -> None:
    """A response completes, and the app's next request goes out in the same loop turn."""
    link, _ = _link()
    stream, _, moved = _http_stream(link)
    stream.send(REQUEST)
    link.retire("expiring")
    link.data_received(frame(DATA, stream.sid, RESPONSE))
    stream.send(NEXT)  # before the move's turn
    await turn()
    await turn()
    assert not moved and stream.link is link
    link.data_received(frame(DATA, stream.sid, RESPONSE))
    await turns_until(lambda: bool(moved))
    assert moved == [link]


async def test_a_stream_waiting_for_an_answer_does_not_move() -> None:
    link, _ = _link()
    stream, _, moved = _http_stream(link, hooks=True)
    exchange = cast(HttpExchange, stream.http)
    exchange.answer = (Answer(403), "GET", 0.0)
    link.retire("expiring")
    assert not moved and isinstance(stream.http, Moving)


UPLOAD = b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\n"
TOO_LARGE = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("hooks", [False, True], ids=["observer", "exchange with hooks"])
async def test_an_early_answer_to_an_upload_moves_the_stream_only_once_the_upload_ends(
    hooks: bool,
) -> None:
    """A 413 before the body is through: the rest of the body belongs to the old link."""
    link, wire = _link()
    stream, _, moved = _http_stream(link, hooks)
    stream.send(UPLOAD + b"12345")
    link.retire("expiring")
    link.data_received(frame(DATA, stream.sid, TOO_LARGE))
    await turn()
    await turn()
    assert not moved and stream.link is link  # half the body is still to go, here
    stream.send(b"67890")
    await turns_until(lambda: bool(moved))
    await turn()
    sent = [d for k, _, d in _frames(wire.out) if k == DATA]
    assert b"".join(sent) == UPLOAD + b"1234567890" and _frames(wire.out)[-1] == (FIN, 1, b"")


@pytest.mark.parametrize("side", ["app", "peer"])
async def test_a_stream_half_closed_while_moving_stays(side: str) -> None:
    """The response completes, and a FIN comes in the same turn: the move is called off."""
    link, _ = _link()
    stream, _, moved = _http_stream(link)
    stream.send(REQUEST)
    link.retire("expiring")
    if side == "app":
        link.data_received(frame(DATA, stream.sid, RESPONSE))
        stream.send_fin()
    else:
        link.data_received(frame(DATA, stream.sid, RESPONSE) + frame(FIN, stream.sid))
    await turn()
    await turn()
    assert not moved and stream.link is link and link.streams == {1: stream}


@pytest.mark.parametrize("kind", ["opaque", "half-closed"])
async def test_an_opaque_stream_stays_on_its_retiring_link(kind: str) -> None:
    link, wire = _link()
    stream, app, moved = _http_stream(link)
    if kind == "opaque":
        stream.http = None
    else:
        stream.send_fin()
    link.retire("expiring")
    await turn()
    assert not moved and link.streams == {1: stream} and stream.link is link
    assert (FIN, 1, b"") not in _frames(wire.out) or kind == "half-closed"
    assert not (app.aborted or app.closed)


async def test_a_retired_link_gives_the_peer_time_to_close_it() -> None:
    link, wire = _link()
    link.retire("renewed")
    await turn()
    assert not wire.closed and link._retiring is not None  # the grace before closing


async def test_a_goaway_makes_a_dialled_link_retire() -> None:
    link, _ = _link()
    _, _, moved = _http_stream(link)
    link.data_received(frame(GOAWAY, 0))
    assert link.retired == "goaway" and moved == [link]


# --- the pool's side -----------------------------------------------------------------------
STARTED = 1_800_000_000.0  # the peer certificate's notBefore


def _pool_with(link: Link, rt: Runtime | None = None) -> tuple[LinkPool, list[Any]]:
    rt = rt or Runtime(config(), cast(TlsMaterial, None), REGISTRY)
    events = rt.bus.subscribe(16).queue
    pool = LinkPool(rt)
    link.on_retire, link.key = pool._retired, ("10.77.0.11", 15002)
    link.peer_names = frozenset({HOST_A})
    link.peer_serial = "01A6"
    link.peer_not_before = STARTED
    pool.links[link.key] = link
    return pool, cast(list[Any], events)


@pytest.mark.parametrize("reason", ["ids", "expiring"])
async def test_a_retiring_link_leaves_the_pool_and_is_counted(reason: str) -> None:
    link, _ = _link()
    pool, events = _pool_with(link)
    if reason == "ids":
        link.next_sid = MAX_SID
        _http_stream(link)
    else:
        link.retire(reason)
    assert not pool.links and pool.retiring == {link}
    assert [e.reason for e in events if isinstance(e, LinkRetired)] == [reason]


@pytest.mark.parametrize(
    ("revoked", "torn_down"),
    [
        (Revocation("a", ids=(HOST_A,)), True),
        (Revocation("a", serials=("1A6",)), True),
        (Revocation("c", ids=(HOST_C,), serials=("1A60",)), False),
        # a joins again: its ID still revokes a certificate from before, not one since
        (Revocation("a", ids=(HOST_A,), before=int(STARTED) + 1), True),
        (Revocation("a", ids=(HOST_A,), before=int(STARTED)), False),
    ],
    ids=["by id", "by serial", "another host", "from before a rejoin", "since a rejoin"],
)
async def test_a_swap_that_revokes_a_peer_tears_its_links_down(
    revoked: Revocation, torn_down: bool
) -> None:
    link, wire = _link()
    pool, events = _pool_with(link)
    pool.rt.registry = Registry.of(REGISTRY.version, REGISTRY.services, revoked=(revoked,))
    pool.rt.tls = cast(TlsMaterial, SimpleNamespace(generation=b"g1", trust=b"t1"))
    link.generation = b"g1"  # not a swap of our certificate
    pool.rt.recompile()
    assert wire.aborted is torn_down
    retired = [e.reason for e in events if isinstance(e, LinkRetired)]
    assert retired == (["revoked"] if torn_down else [])


# --- a swap of meshd's TLS material (certificate or trust bundle) ------------------------
def _up(dialer: bool, generation: bytes) -> tuple[Link, FakeTransport, Runtime]:
    """A link up for an hour, made with ``generation``; the runtime of its pool or port."""
    link, wire = _link(dialer)
    link.generation, link.trust, link.own_expiry = generation, b"t1", time.time() + HOUR
    link._schedule_expiry(cast(Any, PeerCert(time.time() + HOUR)))
    link.peer_names, link.peer_key = frozenset({HOST_A}), HOST_A
    rt = Runtime(config(), _tls(b"g1", b"t1"), REGISTRY)
    if dialer:
        _pool_with(link, rt)
    else:
        MeshPort(rt, cast(Connector, None)).links.add(link)
    return link, wire, rt


def _tls(generation: bytes, trust: bytes) -> TlsMaterial:
    return cast(TlsMaterial, SimpleNamespace(generation=generation, trust=trust))


@pytest.mark.parametrize("dialer", [True, False], ids=["dialled", "accepted"])
@pytest.mark.parametrize(
    ("generation", "trust", "cut"),
    [(b"g1", b"t1", HOUR), (b"g2", b"t1", HOUR), (b"g2", b"t2", SWAP_GRACE)],
    ids=["the same", "a renewed certificate", "another trust bundle"],
)
async def test_a_swap_retires_links_made_with_other_tls_material_and_a_trust_swap_ends_them(
    dialer: bool, generation: bytes, trust: bytes, cut: float
) -> None:
    """A renewal leaves both chains valid: the link retires (its HTTP streams move) and
    ends at the earlier expiry, so opaque streams run on; a new trust bundle may not verify
    the peer any more: then the link is cut after a grace."""
    link, wire, rt = _up(dialer, b"g1")
    swapped = generation != b"g1"
    rt.tls = _tls(generation, trust)
    rt.recompile()
    await turn()
    goaway = (GOAWAY, 0, b"") in _frames(wire.out)
    assert goaway is swapped and (link.retired == "renewed") is (swapped and dialer)
    assert link._expiry is not None
    cut_in = link._expiry.when() - asyncio.get_running_loop().time()
    assert abs(cut_in - cut) <= 1.1
    rt.recompile()  # another swap to the same material: nothing more
    await turn()
    assert _frames(wire.out).count((GOAWAY, 0, b"")) == int(swapped)
    link.connection_lost(None)


@pytest.mark.parametrize("dialer", [True, False], ids=["dialled", "accepted"])
async def test_a_link_the_peer_keeps_past_the_grace_is_aborted(
    dialer: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link_module, "SWAP_GRACE", 0.05)
    link, wire, rt = _up(dialer, b"g1")
    stream, _, _ = _http_stream(link) if dialer else (None, None, None)
    if stream is not None:
        stream.http = None  # opaque: it stays on the retiring link
    rt.tls = _tls(b"g2", b"t2")
    rt.recompile()
    await asyncio.sleep(0.2)
    assert wire.aborted


@pytest.mark.parametrize("straddled", [True, False], ids=["swapped meanwhile", "no swap"])
async def test_a_link_accepted_across_a_swap_is_ended_as_the_swap_would(straddled: bool) -> None:
    """Made (handshake begun) with the old material, ready after the swap's hooks ran."""
    link, wire, rt = _up(False, b"g0" if straddled else b"g1")
    link.peer_ids = frozenset({SpiffeId.parse(HOST_A)})
    port = MeshPort(rt, cast(Connector, None))
    port.on_ready(link)
    await turn()
    assert link in port.links and not wire.aborted
    assert ((GOAWAY, 0, b"") in _frames(wire.out)) is straddled
    assert link._expiry is not None
    cut_in = link._expiry.when() - asyncio.get_running_loop().time()
    assert abs(cut_in - HOUR) <= 1.1  # a renewal meanwhile: both chains stay valid
    link.connection_lost(None)
