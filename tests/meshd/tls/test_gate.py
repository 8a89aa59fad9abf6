"""The handshake gate: bounded room for unauthenticated peers, oldest evicted first."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshd.tls.gate import HandshakeGate, source_key


class Recorder:
    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def cancel(self, name: str) -> Callable[[], None]:
        return lambda: self.cancelled.append(name)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("local", "local"),
    ],
)
def test_source_key(host: str, key: str) -> None:
    assert source_key(host) == key


def test_admits_up_to_the_limit_without_evicting() -> None:
    rec, gate = Recorder(), HandshakeGate(limit=3, per_source=3)
    tickets = [gate.admit(f"10.0.0.{i}", rec.cancel(str(i))) for i in range(3)]
    assert len(gate) == 3 and rec.cancelled == [] and gate.evicted == 0
    for t in tickets:
        gate.release(t)
    assert len(gate) == 0 and gate.sources() == 0


def test_full_gate_evicts_the_oldest_handshake() -> None:
    rec, gate = Recorder(), HandshakeGate(limit=3, per_source=3)
    for i in range(3):
        gate.admit(f"10.0.0.{i}", rec.cancel(f"old{i}"))
    gate.admit("10.0.0.9", rec.cancel("new"))
    assert rec.cancelled == ["old0"]
    assert len(gate) == 3 and gate.evicted == 1


def test_a_full_gate_evicts_from_the_busiest_source() -> None:
    rec, gate = Recorder(), HandshakeGate(limit=4, per_source=4)
    gate.admit("10.0.0.1", rec.cancel("operator"))  # the oldest, but alone from its source
    for i in range(3):
        gate.admit("10.0.0.66", rec.cancel(f"crowd{i}"))
    gate.admit("10.0.0.2", rec.cancel("host"))
    assert rec.cancelled == ["crowd0"]
    gate.admit("10.0.0.3", rec.cancel("another"))
    assert rec.cancelled == ["crowd0", "crowd1"]


def test_a_full_source_evicts_its_own_oldest_not_others() -> None:
    rec, gate = Recorder(), HandshakeGate(limit=10, per_source=2)
    gate.admit("10.0.0.1", rec.cancel("honest"))
    gate.admit("10.0.0.66", rec.cancel("bad0"))
    gate.admit("10.0.0.66", rec.cancel("bad1"))
    gate.admit("10.0.0.66", rec.cancel("bad2"))
    assert rec.cancelled == ["bad0"]
    assert len(gate) == 3


def test_ipv6_sources_count_by_their_64() -> None:
    rec, gate = Recorder(), HandshakeGate(limit=10, per_source=2)
    for i in range(3):
        gate.admit(f"2001:db8::{i + 1}", rec.cancel(str(i)))
    assert rec.cancelled == ["0"]


def test_release_is_idempotent_and_an_evicted_ticket_stays_released() -> None:
    rec, gate = Recorder(), HandshakeGate(limit=1, per_source=1)
    first = gate.admit("10.0.0.1", rec.cancel("first"))
    second = gate.admit("10.0.0.2", rec.cancel("second"))
    gate.release(first)  # the evicted handshake's own cleanup runs later
    gate.release(first)
    assert len(gate) == 1
    gate.release(second)
    assert len(gate) == 0 and gate.sources() == 0


def test_a_flood_never_holds_more_than_the_limit() -> None:
    rec, gate = Recorder(), HandshakeGate(limit=64, per_source=16)
    for i in range(5000):
        gate.admit(f"10.9.{i % 7}.1", rec.cancel(str(i)))
        assert len(gate) <= 64
    assert gate.evicted == 5000 - len(gate)


def test_refuses_a_gate_without_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        HandshakeGate(limit=0, per_source=1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_handshake_within_its_grace_is_not_evicted_the_newcomer_is_turned_away() -> None:
    rec, clock = Recorder(), Clock()
    gate = HandshakeGate(limit=2, per_source=2, grace=0.25, clock=clock)
    gate.admit("10.0.0.1", rec.cancel("honest"))
    gate.admit("10.0.0.2", rec.cancel("crowd0"))
    assert gate.admit("10.0.0.3", rec.cancel("crowd1")) is None  # all within their grace
    assert rec.cancelled == [] and gate.turned_away == 1 and len(gate) == 2
    clock.now += 0.3  # past the grace: the oldest of the busiest goes, as before
    assert gate.admit("10.0.0.3", rec.cancel("crowd1")) is not None
    assert rec.cancelled == ["honest"]


def test_a_source_over_its_share_is_turned_away_within_the_grace() -> None:
    rec, clock = Recorder(), Clock()
    gate = HandshakeGate(limit=10, per_source=1, grace=1.0, clock=clock)
    gate.admit("10.0.0.66", rec.cancel("first"))
    assert gate.admit("10.0.0.66", rec.cancel("second")) is None
    assert gate.admit("10.0.0.1", rec.cancel("other")) is not None
    assert rec.cancelled == []


def test_a_full_gate_and_a_full_source_evict_two_when_past_their_grace() -> None:
    rec, clock = Recorder(), Clock()
    gate = HandshakeGate(limit=3, per_source=2, grace=0.1, clock=clock)
    gate.admit("10.0.0.1", rec.cancel("a"))
    gate.admit("10.0.0.66", rec.cancel("b"))
    gate.admit("10.0.0.66", rec.cancel("c"))
    clock.now += 1
    assert gate.admit("10.0.0.66", rec.cancel("d")) is not None
    assert rec.cancelled == ["b"] and len(gate) == 3
