"""The handshake gate: bounded room for unauthenticated peers, oldest evicted first."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshd.gate import HandshakeGate, source_key


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
