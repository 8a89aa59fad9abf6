"""The link pool: a dial that goes wrong in any way is a failed dial, held against its endpoint."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import anyio

from meshd.config import MeshdConfig
from meshd.proxy.pool import LinkPool
from meshd.registry import Endpoint
from meshd.runtime import Runtime
from meshd.telemetry.events import HandshakeFailed
from meshd.tls.context import mutual_context
from tests.meshd.tlsfixtures import TD, TestPki


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
                assert bad.link_key in pool.balancer.failed_until and bad.link_key not in pool.links
        finally:
            server.close()

    anyio.run(main, backend="asyncio")
    failed = [e for e in events.queue if isinstance(e, HandshakeFailed)]
    assert [e.reason for e in failed] == ["connect_failed"]
