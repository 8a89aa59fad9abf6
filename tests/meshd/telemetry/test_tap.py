"""The tap's pure parts: sampling, filters, the line a client gets, bounded client queues."""

from __future__ import annotations

import json

import pytest

from meshd.proxy.http.observe import Listening
from meshd.telemetry.events import RequestObserved
from meshd.telemetry.tap import (
    QUEUE,
    TapClient,
    TapFilter,
    TapHub,
    sampled,
    service_name,
    tap_record,
)

SVC = "spiffe://t.mesh/svc/"


def event(
    source: str = "web", destination: str = "api", path: str = "/a", status: int = 200
) -> RequestObserved:
    return RequestObserved("outbound", source, destination, "GET", status, 0.0125, path, "", 42)


@pytest.mark.parametrize(
    ("ratio", "draw", "expected"),
    [
        (1.0, 0.999, True),
        (1.0, 0.0, True),
        (0.0, 0.0, False),
        (0.5, 0.49, True),
        (0.5, 0.5, False),
        (0.1, 0.05, True),
        (0.1, 0.2, False),
    ],
)
def test_sampled(ratio: float, draw: float, expected: bool) -> None:
    assert sampled(ratio, draw) is expected


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("api", "api"),
        (SVC + "api", "api"),
        ("spiffe://t.mesh/host/a", "spiffe://t.mesh/host/a"),
        ("unauthenticated", "unauthenticated"),
    ],
)
def test_service_name(label: str, name: str) -> None:
    assert service_name(label) == name


@pytest.mark.parametrize(
    ("services", "sample", "source", "destination", "draw", "wanted"),
    [
        ((), 1.0, "web", "api", 0.9, True),
        (("api",), 1.0, "web", "api", 0.9, True),
        (("web",), 1.0, "web", "api", 0.9, True),  # either end
        (("api",), 1.0, SVC + "web", SVC + "api", 0.9, True),  # labels that are IDs
        (("db",), 1.0, "web", "api", 0.0, False),
        ((), 0.25, "web", "api", 0.2, True),
        ((), 0.25, "web", "api", 0.3, False),
        (("api",), 0.25, "web", "api", 0.3, False),
    ],
)
def test_filter(
    services: tuple[str, ...],
    sample: float,
    source: str,
    destination: str,
    draw: float,
    wanted: bool,
) -> None:
    f = TapFilter(frozenset(services), sample)
    assert f.wants(event(source, destination), draw) is wanted


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/items/42", "/items/42"),
        ("/a\x1b[2Jb", "/a\\x1b[2Jb"),  # a terminal escape from a peer stays text
        ("/\xe9t\xe9", "/\\xe9t\\xe9"),
        ("/x\r\n{}", "/x\\r\\n{}"),
        ("/" + "a" * 300, "/" + "a" * 199 + "..."),
    ],
)
def test_record_escapes_the_path(path: str, shown: str) -> None:
    record = tap_record(event(SVC + "web", SVC + "api", path, 503), 1765000000.5)
    assert record == {
        "time": 1765000000.5,
        "direction": "outbound",
        "source": "web",
        "destination": "api",
        "method": "GET",
        "path": shown,
        "status": 503,
        "latency_ms": 12.5,
        "bytes_in": 42,
        "bytes_out": 0,
    }
    assert json.dumps(record).isascii()


def test_a_client_queue_is_bounded_and_counts_what_it_drops() -> None:
    client = TapClient(TapFilter())
    taken = [client.offer(b"x\n") for _ in range(QUEUE + 10)]
    assert taken.count(False) == 10 and len(client.queue) == QUEUE
    assert client.drop_report() == b'{"dropped":10}\n'
    assert client.drop_report() is None  # reported once
    assert len(client.take()) == QUEUE and not client.queue


@pytest.mark.parametrize(
    ("access", "clients", "on"), [(False, 0, False), (True, 0, True), (False, 1, True)]
)
def test_the_switch_is_on_while_someone_listens(access: bool, clients: int, on: bool) -> None:
    listening = Listening()
    hub = TapHub(listening)
    hub.want_requests(access)
    joined = [hub.join(TapFilter()) for _ in range(clients)]
    assert listening.on is on
    for client in joined:
        assert client is not None
        hub.leave(client)
    assert listening.on is access


def test_at_most_max_clients_and_drops_are_kept_after_leaving() -> None:
    hub = TapHub(Listening(), max_clients=4, draw=lambda: 0.0, clock=lambda: 1.0)
    clients = [hub.join(TapFilter()) for _ in range(4)]
    assert None not in clients and hub.join(TapFilter()) is None
    first = clients[0]
    assert first is not None
    for _ in range(QUEUE + 3):
        hub.request(event())
    assert hub.dropped() == 4 * 3
    hub.leave(first)
    assert hub.dropped() == 4 * 3 and hub.join(TapFilter()) is not None
