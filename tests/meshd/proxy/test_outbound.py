"""Endpoint picking: least outstanding streams, ties round robin, failed endpoints skipped."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import cast

import anyio

from meshd.config import MeshdConfig
from meshd.proxy.outbound import LinkPool
from meshd.registry import Endpoint, Service
from meshd.runtime import Runtime
from meshd.telemetry.events import HandshakeFailed
from meshd.tls.context import mutual_context
from tests.meshd.tlsfixtures import TD, TestPki

E1, E2, E3 = (Endpoint(f"h{i}", f"10.0.0.{i}", 80, 15443) for i in (1, 2, 3))
WEB = Service("web", "10.255.0.1", 80, (E1, E2, E3))


def _pool() -> LinkPool:
    return LinkPool(cast(Runtime, None))  # picking needs no runtime


def test_ties_go_round_robin() -> None:
    pool = _pool()
    assert [pool.pick(WEB, set()) for _ in range(6)] == [E1, E2, E3, E1, E2, E3]


def test_fewest_outstanding_wins() -> None:
    pool = _pool()
    pool.outstanding = {E1.link_key: 3, E2.link_key: 1, E3.link_key: 2}
    assert {pool.pick(WEB, set()) for _ in range(5)} == {E2}


def test_failed_endpoints_are_skipped_until_their_backoff_ends() -> None:
    pool = _pool()
    pool.failed_until = {E3.link_key: (time.monotonic() + 60, 1.0)}
    assert E3 not in {pool.pick(WEB, set()) for _ in range(9)}
    pool.failed_until = {e.link_key: (time.monotonic() + 60, 1.0) for e in (E1, E2, E3)}
    assert pool.pick(WEB, set()) is not None  # all failed: still try one rather than none


def test_avoid_and_single_endpoint() -> None:
    pool = _pool()
    assert {pool.pick(WEB, {E1.link_key, E2.link_key}) for _ in range(3)} == {E3}
    assert pool.pick(WEB, {E1.link_key, E2.link_key, E3.link_key}) is None
    solo = Service("db", "10.255.0.2", 5432, (E1,))
    assert pool.pick(solo, set()) is E1


def test_anything_that_goes_wrong_for_one_endpoint_is_a_failed_dial(tmp_path: Path) -> None:
    """Over real TLS: a dial that raises past its handshake is counted, never the daemon's end.

    The endpoint's host name is invalid (the registry refuses that now; this is
    the dial path's own guard): the check after the handshake raised ConfigError.
    """
    pki = TestPki(tmp_path)
    ident, peer = pki.issue("a", "host/a"), pki.issue("b", "host/b")
    config = MeshdConfig.from_dict(
        {
            "identity": {
                "host": "a",
                "trust_domain": TD,
                "cert": str(ident.cert),
                "key": str(ident.key),
                "bundle": str(ident.bundle),
            }
        },
        "test",
    )
    rt = Runtime.load(config)
    events = rt.bus.subscribe(16)
    server_ctx = mutual_context(ssl.Purpose.CLIENT_AUTH, peer.cert, peer.key, peer.bundle, [])

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            async with anyio.create_task_group() as tg:
                rt.tg = tg
                pool = LinkPool(rt)
                bad = Endpoint("Not_A_Host", "127.0.0.1", 80, port)
                await pool._dial(bad)
                assert bad.link_key in pool.failed_until and bad.link_key not in pool.links
        finally:
            server.close()

    anyio.run(main, backend="asyncio")
    failed = [e for e in events.queue if isinstance(e, HandshakeFailed)]
    assert [e.reason for e in failed] == ["connect_failed"]
