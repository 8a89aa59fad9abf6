"""Room for POST /issue: no host, revoked or greedy, can keep another from renewing.

A revoked host is refused before it takes an issue session, one host holds
at most ``max_issue_sessions_per_host`` of them, and a session that does not
send its request at once is closed (``issue_read_timeout``). Refusals are
counted in full and logged in brief.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from meshd.issuer import service
from meshd.telemetry.logs import Throttle
from tests.meshd.admin.test_admin import call, connect, read_response
from tests.meshd.issuer import test_issuer
from tests.meshd.issuer.test_issuer import Pki, csr_for, make_daemon, make_issuer, metric, serving

pytestmark = pytest.mark.anyio
pki, anyio_backend = test_issuer.pki, test_issuer.anyio_backend  # its fixtures


@pytest.fixture(autouse=True)
def fresh_throttle(monkeypatch: pytest.MonkeyPatch) -> Throttle:
    throttle = Throttle()  # the daemon's is process-wide: other tests' lines count in it
    monkeypatch.setattr(service, "peer_lines", throttle)
    return throttle


async def test_a_revoked_host_takes_no_issue_session(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, fresh_throttle: Throttle
) -> None:
    caplog.set_level(logging.INFO, logger="meshd.issuer")
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server, AsyncExitStack() as stack:
        assert (await make_issuer(server, pki))[0] == 200
        for _ in range(8):  # h2 is revoked: each is refused before it sends a word
            stream = await stack.enter_async_context(await connect(server, pki.h2))
            status, _, data = await read_response(stream, within=1)
            assert status == 403 and "revoked (host h2" in json.loads(data)["error"]
        assert (server.admin.issuing, server.counter("forbidden")) == (0, 8)
        csr, _ = csr_for("host/h1", "svc/api")
        status, body = await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr})
        assert status == 200, body
    assert (metric(daemon, "refused"), metric(daemon, "signed")) == (8, 1)
    lines = [r.getMessage() for r in caplog.records if "issuer: refused" in r.getMessage()]
    assert 1 <= len(lines) <= fresh_throttle.burst, lines  # the metric counts them all


async def test_a_greedy_host_holds_two_sessions_and_not_for_long(pki: Pki, tmp_path: Path) -> None:
    greedy = pki.mesh.issue("h4", "host/h4")
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server, AsyncExitStack() as stack:
        assert (await make_issuer(server, pki))[0] == 200
        held = [await stack.enter_async_context(await connect(server, greedy)) for _ in range(8)]
        await anyio.sleep(0.2)
        assert server.admin.issuing == 2
        for stream in held[2:]:
            status, _, data = await read_response(stream, within=1)
            assert status == 503 and "for host h4" in json.loads(data)["error"]
        csr, _ = csr_for("host/h1", "svc/api")
        status, body = await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr})
        assert status == 200, body
        start = time.monotonic()
        for stream in held[:2]:  # silent: closed at the head deadline, not read_timeout's 10 s
            assert (await read_response(stream, within=4))[0] == 408
        assert time.monotonic() - start < 3
        with anyio.fail_after(2):  # after the linger
            while server.admin.issuing:
                await anyio.sleep(0.01)
