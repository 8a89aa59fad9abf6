"""When meshd renews its certificate, how it backs off, and what it asks for. Pure.

A certificate got at ``got`` (at start: ``max(now, not_before)``) is due at a
random point between 60 % and 70 % of the life left from then, so that a
fleet started together does not ask its issuers at once. A round that finds
no issuer willing is retried after 1 s, doubling, capped at ``min(60 s, a
quarter of the time left)`` so that several tries still fit before expiry
(60 s once it has passed),
with half of each delay drawn at random. ``now`` and every random draw (in
[0, 1)) are passed in; times are Unix seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from meshd.identity import SpiffeId
from meshd.registry import Registry

DUE_FROM, DUE_SPREAD = 0.6, 0.1  # of the certificate's life from when meshd got it
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 60.0
MIN_BACKOFF = 0.5  # however close the expiry, never a busy loop


def due_at(got: float, not_after: float, draw: float) -> float:
    """When a certificate got at ``got`` and expiring at ``not_after`` is to be renewed."""
    return got + (not_after - got) * (DUE_FROM + DUE_SPREAD * draw)


def backoff(failures: int, now: float, not_after: float, draw: float) -> float:
    """Seconds to wait after ``failures`` (>= 1) failed rounds in a row, jittered."""
    left = not_after - now
    # past expiry no issuer will take our certificate: nothing left to hurry for
    cap = max(MIN_BACKOFF, min(MAX_BACKOFF, left / 4)) if left > 0 else MAX_BACKOFF
    ceiling = min(cap, FIRST_BACKOFF * 2.0 ** min(failures - 1, 30))
    return max(MIN_BACKOFF, ceiling / 2 + ceiling / 2 * draw)


def csr_ids(held: Iterable[SpiffeId], registry: Registry, host: str) -> tuple[SpiffeId, ...]:
    """What to ask for: what the certificate holds, minus services no longer assigned to ``host``.

    The host's own identity always stays (held certificates always carry it).
    """
    assigned = registry.services_of(host)
    return tuple(sorted(i for i in set(held) if i.kind != "svc" or i.name in assigned))


@dataclass(frozen=True)
class Plan:
    """Renewal's state between rounds: when to go next, and how the last rounds went."""

    got: float  # when meshd got the running certificate
    not_after: float
    next_at: float
    failures: int = 0  # rounds failed in a row
    last_error: str = ""
    renewed_at: float | None = None  # the last success, if any since start
    renewals: int = 0
    issuer: str = ""  # who signed the running certificate, when renewal got it


def start(not_before: float, not_after: float, now: float, draw: float) -> Plan:
    """The plan for a certificate meshd starts with (or that a push or reload swapped in)."""
    got = max(now, not_before)
    return Plan(got, not_after, due_at(got, not_after, draw))


def renewed(plan: Plan, not_after: float, issuer: str, now: float, draw: float) -> Plan:
    """A round got a certificate expiring at ``not_after`` from ``issuer``."""
    fresh = start(now, not_after, now, draw)
    return replace(fresh, renewed_at=now, renewals=plan.renewals + 1, issuer=issuer, last_error="")


def failed(plan: Plan, error: str, now: float, draw: float) -> Plan:
    """A round in which no issuer signed: keep the certificate, try again after a back-off."""
    failures = plan.failures + 1
    wait = backoff(failures, now, plan.not_after, draw)
    return replace(plan, next_at=now + wait, failures=failures, last_error=error)


def swapped(plan: Plan, not_before: float, not_after: float, now: float, draw: float) -> Plan:
    """Another certificate runs now (a push, a reload): schedule from it, keep the counts.

    No issuer signed it (as far as meshd knows).
    """
    fresh = start(not_before, not_after, now, draw)
    return replace(
        plan, got=fresh.got, not_after=not_after, next_at=fresh.next_at, failures=0, issuer=""
    )
