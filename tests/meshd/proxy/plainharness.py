"""An in-process ``PlainInbound`` on loopback: plaintext from outside the mesh, for tests.

A real listener relays to a real app; only the original destination, which
iptables would give, is stood in for (`original_dst_is`). `plain_client`
runs the listener with its connector in a task group, opens one client
connection and, on the way out, closes both and the loop's tasks:

    rt = runtime(tmp_path, app.port, "permissive")
    original_dst_is(monkeypatch, app.port)

    async def talk(rt: Runtime) -> bytes | type[Exception]:
        async with plain_client(rt) as client:
            client.writer.write(b"GET / HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n")
            return await outcome(client.reader.read())

    received = anyio.run(talk, rt, backend="asyncio")
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from meshd.config import MeshdConfig
from meshd.policy.bundle import AppliedPolicy
from meshd.policy.lang import wire
from meshd.proxy import inbound
from meshd.proxy.connect import Connector
from meshd.runtime import Runtime
from tests.meshd.tlsfixtures import TD, TestPki


def runtime(tmp_path: Path, app_port: int, mtls: str) -> Runtime:
    """meshd B's runtime: host ``b`` serving ``web`` on ``app_port``, mesh-wide mTLS ``mtls``."""
    ident = TestPki(tmp_path).issue("b", "host/b", "svc/web")
    files = {"cert": str(ident.cert), "key": str(ident.key), "bundle": str(ident.bundle)}
    config = MeshdConfig.from_dict(
        {
            "identity": {"host": "b", "trust_domain": TD, **files},
            "mesh": {"mtls": mtls},
            "services": [{"name": "web", "port": app_port}],
        },
        "test",
    )
    return Runtime.load(config)


def push(rt: Runtime, version: int, *documents: dict[str, Any]) -> None:
    """Put ``documents`` in force as policy ``version``, as the admin API's PUT /policy does."""
    pushed = wire.PolicyDocument.from_json({"version": version, "documents": list(documents)})
    rt.policy = AppliedPolicy(version, tuple(wire.load(pushed, TD, dt.datetime.now(dt.UTC))))
    rt.recompile()


def original_dst_is(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    """Every plaintext connection was headed for ``port`` on loopback (iptables' answer)."""
    monkeypatch.setattr(inbound, "original_dst", lambda sock: ("127.0.0.1", port))


@dataclass(frozen=True)
class Client:
    """One client connection to the listener; ``opened``: time.monotonic() just before it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float


@contextlib.asynccontextmanager
async def plain_client(rt: Runtime, tracked: bool = False) -> AsyncIterator[Client]:
    """A PlainInbound listener for ``rt`` and one connection to it, all closed on the way out.

    ``tracked``: the listener's relays are the ones a ``MeshPort`` re-judges on a push.
    """
    connector = Connector(5.0)
    async with anyio.create_task_group() as tg:
        await tg.start(connector.serve)
        # the MeshPort stays alive in rt.swapped, where a push reaches it
        relayed = inbound.MeshPort(rt, connector).plain if tracked else None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: inbound.PlainInbound(rt, connector, relayed), "127.0.0.1"
        )
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        yield Client(reader, writer, opened)
        writer.close()
        with contextlib.suppress(ConnectionError):  # reset by meshd, as some tests want
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        tg.cancel_scope.cancel()


async def outcome(read: Awaitable[bytes]) -> bytes | type[Exception]:
    """What ``read`` gave within 10 s, or ConnectionResetError if meshd reset the connection."""
    try:
        with anyio.fail_after(10):
            return await read
    except ConnectionResetError:
        return ConnectionResetError
