"""Bytes of open connections: taken into the byte counters when they are read, the rest
when the connection closes; the counters never go down and count each byte once."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshd.telemetry.events import ConnectionClosed, ConnectionOpened, EventBus
from meshd.telemetry.live import OpenConnections
from meshd.telemetry.metrics import Metrics

EDGE = ("outbound", "web", "api")


@dataclass(eq=False)
class Conn:
    """A relay's counts, as a Stream keeps them."""

    sent: int = 0
    received: int = 0


@pytest.mark.parametrize(
    ("flipped", "steps", "folds"),
    [
        # each read yields what moved since the last, nothing when nothing moved
        (False, [(10, 0), (10, 0), (15, 7)], [[(EDGE, 10, 0)], [], [(EDGE, 5, 7)]]),
        # inbound: the stream received what the client side sent
        (True, [(3, 40), (3, 41)], [[(EDGE, 40, 3)], [(EDGE, 1, 0)]]),
    ],
)
def test_fold_yields_what_moved_since_the_last_read(
    flipped: bool, steps: list[tuple[int, int]], folds: list[list[tuple[object, int, int]]]
) -> None:
    live, conn = OpenConnections(), Conn()
    live.add(conn, EDGE, flipped)
    for (sent, received), expected in zip(steps, folds, strict=True):
        conn.sent, conn.received = sent, received
        assert list(live.fold()) == expected
    last_sent, last_received = steps[-1]
    folded = (last_received, last_sent) if flipped else (last_sent, last_received)
    assert live.remove(conn) == folded
    assert live.remove(conn) == (0, 0)  # gone: folded no more
    assert list(live.fold()) == []


def sent_total(metrics: Metrics) -> float:
    line = 'meshd_connection_bytes_total{direction="outbound",source="web",destination="api",'
    text = metrics.render()
    found = [x for x in text.splitlines() if x.startswith(line + 'flow="sent"}')]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def test_metrics_count_open_connections_once_and_never_go_down() -> None:
    bus = EventBus()
    metrics = Metrics(bus, process_metrics=False)
    conn = Conn()
    bus.publish(ConnectionOpened(*EDGE))
    bus.open.add(conn, EDGE)
    seen = []
    for sent in (100, 250, 250, 900):
        conn.sent = sent
        metrics.collect()
        seen.append(sent_total(metrics))
    counted_sent, counted_received = bus.open.remove(conn)
    conn.sent = 1000  # moved after the last read, before it closed
    bus.publish(ConnectionClosed(*EDGE, 1000, 0, 1.0, "", counted_sent, counted_received))
    seen.append(sent_total(metrics))  # the close not yet taken in: what was folded stays
    metrics.collect()
    seen.append(sent_total(metrics))
    assert seen == [100, 250, 250, 900, 900, 1000]
    assert metrics.traffic("h").tcp[0].bytes_in == 1000
