"""Plaintext from outside the mesh (permissive mode) through the exchange, over loopback.

The listener is a real ``PlainInbound`` relaying to a real app; only the
original destination, which iptables would give, is stood in for
(tests/meshd/proxy/plainharness.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from meshd.proxy.http.plan import HttpPlan, HttpRules
from meshd.proxy.inbound import UNAUTHENTICATED
from meshd.runtime import Runtime
from meshd.telemetry.events import ConnectionClosed, RequestCompleted
from tests.meshd.proxy.http.hooked_meshd import DENIED, deny
from tests.meshd.proxy.http.recording import RecordingApp
from tests.meshd.proxy.plainharness import original_dst_is, plain_client, runtime

REQUESTS = (
    b"GET /one HTTP/1.1\r\nHost: web\r\n\r\n"
    b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n"
    b"GET /two HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
)


async def _exchange_bytes(rt: Runtime, data: bytes) -> bytes:
    """Send ``data`` to a PlainInbound listener; what came back before the connection closed."""
    async with plain_client(rt) as client:
        client.writer.write(data)
        with anyio.fail_after(10):
            return await client.reader.read()


@pytest.mark.parametrize("hooked", [False, True, "keep-alive"])
def test_plaintext_meets_the_hooks_of_its_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hooked: bool | str
) -> None:
    app = RecordingApp()
    try:
        rt = runtime(tmp_path, app.port, "permissive")
        if hooked:
            hook = deny("/admin", keep_alive=hooked == "keep-alive")
            rt.http_rules = HttpRules(inbound={"web": HttpPlan(hooks=(hook,))})
            rt.recompile()
        original_dst_is(monkeypatch, app.port)
        # keep-alive: the denied request first, so that no response is due before its answer
        data = REQUESTS.partition(b"\r\n\r\n")[2] if hooked == "keep-alive" else REQUESTS
        received = anyio.run(_exchange_bytes, rt, data, backend="asyncio")
    finally:
        app.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    if hooked == "keep-alive":  # answered in turn, and the connection goes on
        assert (statuses, app.paths()) == ([b"403", b"200"], ["/two"])
    elif hooked:  # answered in turn, then closed: what followed the denied request is dropped
        assert (statuses, app.paths()) == ([b"200", b"403"], ["/one"])
        assert received.endswith(DENIED)
    else:  # no plan, no exchange: relayed as it came
        assert (statuses, app.paths()) == ([b"200"] * 3, ["/one", "/admin", "/two"])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (REQUESTS, [("GET", 200)] * 3),  # HTTP: observed as the outbound side observes
        (b"\x00\x01binary, no request line\r\n\r\n", []),  # opaque: a plain relay
    ],
)
def test_plaintext_without_policy_is_observed_when_it_speaks_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, expected: list[tuple[str, int]]
) -> None:
    _, seen = _permissive(tmp_path, monkeypatch, _exchange_bytes, data)
    requests = [e for e in seen.queue if isinstance(e, RequestCompleted)]
    assert [(e.method, e.status) for e in requests] == expected
    assert {(e.direction, e.source, e.destination) for e in requests} <= {
        ("inbound", UNAUTHENTICATED, "web")
    }


def _permissive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: Any, *args: object
) -> tuple[Any, Any]:
    """``run(rt, *args)`` against a permissive meshd in front of a recording app: its
    result, and the subscription that saw the runtime's events."""
    app = RecordingApp()
    try:
        rt = runtime(tmp_path, app.port, "permissive")
        seen = rt.bus.subscribe(1000)
        original_dst_is(monkeypatch, app.port)
        return anyio.run(run, rt, *args, backend="asyncio"), seen
    finally:
        app.close()


GET_ONE = b"GET /one HTTP/1.1\r\nHost: web\r\n\r\n"


async def _folds_while_open(rt: Runtime) -> tuple[list[object], int]:
    """One request and its response on a connection that stays open: the byte counters'
    reads (folds) meanwhile, and the size of the response."""
    async with plain_client(rt) as client:
        folds: list[object] = []
        size = 0
        for _ in range(2):
            client.writer.write(GET_ONE)
            with anyio.fail_after(10):
                head = await client.reader.readuntil(b"\r\n\r\n")
                length = int(re.findall(rb"Content-Length: (\d+)", head)[0])
                size = len(head) + len(await client.reader.readexactly(length))
            folds.append(list(rt.bus.open.fold()))
        client.writer.close()
        with anyio.fail_after(10):
            while rt.bus.open.entries:  # until meshd saw it close
                await anyio.sleep(0.01)
        return folds, size


def test_plaintext_bytes_are_counted_while_the_connection_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folds, size), seen = _permissive(tmp_path, monkeypatch, _folds_while_open)
    edge = ("inbound", UNAUTHENTICATED, "web")
    assert folds == [[(edge, len(GET_ONE), size)]] * 2  # each read: what moved since the last
    closed = [e for e in seen.queue if isinstance(e, ConnectionClosed)]
    assert [(c.bytes_sent, c.counted_sent, c.bytes_received) for c in closed] == [
        (2 * len(GET_ONE), 2 * len(GET_ONE), 2 * size)
    ]
