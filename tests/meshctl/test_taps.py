"""``meshctl top``'s tap readers against the stand-in admin server: stream, refusals, retry, close."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.taps import RETRY, Taps, refusal, tap_path
from tests.meshctl.topmesh import model, top_mesh
from tests.meshctl.trafficserver import Series, TrafficServer

HOSTS = {"api1": "127.0.0.31", "old1": "127.0.0.32", "gone1": "127.0.0.33", "idle1": "127.0.0.34"}


@pytest.mark.parametrize(
    ("service", "path"),
    [(None, "/tap"), ("api", "/tap?service=api"), ("a b&c", "/tap?service=a+b%26c")],
)
def test_tap_path(service: str | None, path: str) -> None:
    assert tap_path(service) == path


@pytest.mark.parametrize(
    ("status", "head", "why"),
    [
        (404, b"HTTP/1.1 404 Not Found", "no /tap (meshd older than meshctl)"),
        (503, b"HTTP/1.1 503 Busy", "tap busy (meshd serves 4 taps at most)"),
        (403, b"HTTP/1.1 403 Forbidden", "tap refused (403): operator certificate not accepted"),
        (500, b"HTTP/1.1 500 Oops\r\nX: y", "tap refused: HTTP/1.1 500 Oops"),
    ],
)
def test_refusal(status: int, head: bytes, why: str) -> None:
    assert refusal(status, head) == why


def test_streams_names_refusals_retries_and_closes(tmp_path: Path) -> None:
    mesh = top_mesh(tmp_path, HOSTS)
    api = Series("inbound", "web", "api", 10, paths=("/a",))
    hosts = [
        model(mesh, "api1", HOSTS["api1"], api),
        replace(model(mesh, "old1", HOSTS["old1"], api), no_tap=True),  # a meshd before /tap
        model(mesh, "idle1", HOSTS["idle1"], Series("inbound", "web", "db", 0)),  # a silent tap
    ]  # nothing listens for gone1
    client = AdminClient.for_workspace(mesh.ws, 5.0)
    endpoints = [AdminEndpoint(name, address, mesh.port) for name, address in HOSTS.items()]
    server = TrafficServer(hosts, mesh.port, mesh.pki.bundle).start()
    try:
        before = threading.active_count()
        taps = Taps(client, endpoints, None).start()
        time.sleep(RETRY + 1.0)  # attempts at 0 s and RETRY s, the next not before 2 RETRY
        events = taps.take()
        missing = taps.missing()
        started = time.monotonic()
        taps.close()
        closing = time.monotonic() - started
    finally:
        server.stop()
    assert {e.path for e in events} == {"/a"} and len(events) == pytest.approx(40, abs=8)
    assert missing == (
        ("old1", "no /tap (meshd older than meshctl)"),
        ("gone1", "connection refused"),
    )
    assert server.requests == 2  # old1 asked at 0 s and at RETRY s: no more often
    # idle1's reader was blocked in a read that only close's shutdown of its socket ends
    assert closing < 0.5 and not any(r.thread.is_alive() for r in taps.readers)
    assert threading.active_count() <= before


LINE = (  # any time: Taps passes events on, the window judges their times
    '{"time": 1.5, "direction": "inbound", "method": "GET", "path": "/ok", "status": 200, '
    '"latency_ms": 1.5}\n'
)
LONG = "x" * 100_000 + "\n"


def chunks(*parts: str) -> str:
    return "".join(f"{len(p):x}\r\n{p}\r\n" for p in parts)


@pytest.mark.parametrize(
    ("body", "paths", "why"),
    [
        ("zz\r\n", [], "tap ended: FramingError"),  # not a chunk size
        ("7fffffff\r\n", [], "tap ended: FramingError"),  # a chunk too large to hold
        (chunks(LONG, "[" * 4_000 + "\n", "{}\n", "null\n", LINE) + "0\r\n\r\n", ["/ok"],
         "tap closed by meshd"),  # lines past the bound, nested too deep, not requests
        (chunks(LINE[:30], LINE[30:] + LINE[:5]), ["/ok"], None),  # a line cut by chunks
    ],
)  # fmt: skip
def test_a_broken_or_hostile_tap_costs_its_lines_never_top(
    tmp_path: Path, body: str, paths: list[str], why: str | None
) -> None:
    mesh = top_mesh(tmp_path, {"bad1": "127.0.0.35"})
    host = replace(model(mesh, "bad1", "127.0.0.35"), tap_body=body)
    client = AdminClient.for_workspace(mesh.ws, 5.0)
    server = TrafficServer([host], mesh.port, mesh.pki.bundle).start()
    taps = Taps(client, [AdminEndpoint("bad1", "127.0.0.35", mesh.port)], None).start()
    try:
        deadline = time.monotonic() + 5
        while taps.readers[0].error == "connecting" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        events, missing = taps.take(), taps.missing()
    finally:
        taps.close()
        server.stop()
    assert [e.path for e in events] == paths
    assert missing == ((("bad1", why),) if why else ())
