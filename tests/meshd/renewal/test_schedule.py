"""Renewal's schedule: when a certificate is due, how failures back off, what a CSR asks for."""

from __future__ import annotations

import pytest

from meshd.identity import SpiffeId
from meshd.registry import Endpoint, Registry, Service
from meshd.renewal import schedule


@pytest.mark.parametrize(
    ("got", "not_after", "draw", "due"),
    [
        (0, 100, 0.0, 60.0),  # 60 % of the life, the earliest
        (0, 100, 0.5, 65.0),
        (0, 100, 0.999, 69.99),  # never past 70 %
        (1000, 1060, 0.5, 1039.0),  # a one-minute leaf: 39 s in
        (50, 150, 0.0, 110.0),  # got late (a restart): from then, not from not_before
    ],
)
def test_due_at(got: float, not_after: float, draw: float, due: float) -> None:
    assert schedule.due_at(got, not_after, draw) == pytest.approx(due)


@pytest.mark.parametrize(
    ("not_before", "now", "due"),
    [
        (-300, 0, 60.0),  # backdated: counted from now, so the 2/3 point is ahead
        (10, 0, 64.0),  # not yet valid: from not_before
    ],
)
def test_start_counts_from_when_meshd_got_it(not_before: float, now: float, due: float) -> None:
    assert schedule.start(not_before, 100, now, 0.0).next_at == pytest.approx(due)


@pytest.mark.parametrize(
    ("failures", "now", "not_after", "draw", "wait"),
    [
        (1, 0, 1000, 1.0, 1.0),  # 1 s first
        (1, 0, 1000, 0.0, 0.5),  # half of it jittered
        (2, 0, 1000, 1.0, 2.0),  # doubling
        (4, 0, 1000, 1.0, 8.0),
        (10, 0, 1000, 1.0, 60.0),  # capped at 60 s
        (10, 0, 1000, 0.0, 30.0),
        (10, 0, 40, 1.0, 10.0),  # a quarter of the time left, when that is less
        (10, 0, 1, 1.0, 0.5),  # never a busy loop, however close the expiry
        (3, 100, 40, 1.0, 4.0),  # past expiry: still doubling ...
        (10, 100, 40, 1.0, 60.0),  # ... up to 60 s: nothing to hurry for
        (200, 0, 1e9, 1.0, 60.0),  # no overflow after many failures
    ],
)
def test_backoff(failures: int, now: float, not_after: float, draw: float, wait: float) -> None:
    assert schedule.backoff(failures, now, not_after, draw) == pytest.approx(wait)


def test_a_failure_keeps_the_certificate_and_a_success_resets_the_count() -> None:
    plan = schedule.start(0, 100, 0, 0.0)
    plan = schedule.failed(plan, "issuer a: refused", 60, 1.0)
    plan = schedule.failed(plan, "issuer a: refused", 61, 1.0)
    assert (plan.failures, plan.next_at, plan.not_after) == (2, 63.0, 100)
    assert plan.last_error == "issuer a: refused"
    plan = schedule.renewed(plan, 200, "a", 63, 0.0)
    assert (plan.failures, plan.renewals, plan.issuer, plan.last_error) == (0, 1, "a", "")
    assert plan.next_at == pytest.approx(63 + 137 * 0.6)


def test_a_swap_by_others_reschedules_and_keeps_the_counts() -> None:
    plan = schedule.renewed(schedule.start(0, 100, 0, 0.0), 200, "a", 60, 0.0)
    plan = schedule.failed(plan, "down", 150, 0.0)
    plan = schedule.swapped(plan, 140, 400, 160, 0.0)
    assert (plan.got, plan.next_at, plan.failures, plan.renewals) == (160, 304.0, 0, 1)
    assert plan.issuer == ""  # "a" signed the certificate that no longer runs


TD = "t.mesh"
HOST, API, OLD = (SpiffeId(TD, p) for p in ("/host/a", "/svc/api", "/svc/old"))


def registry(*assigned: tuple[str, str]) -> Registry:
    services = [
        Service(name, "10.255.0.1", 80, (Endpoint(host, "127.0.0.1", 80, 1),))
        for name, host in assigned
    ]
    return Registry.of(1, services)


@pytest.mark.parametrize(
    ("held", "reg", "asked"),
    [
        ((HOST, API), registry(("api", "a")), (HOST, API)),
        ((HOST, API, OLD), registry(("api", "a")), (HOST, API)),  # old: no longer ours
        ((HOST, API), registry(("api", "b")), (HOST,)),  # api moved to b
        ((HOST, API), registry(), (HOST,)),  # the host id always stays
        ((HOST,), registry(("api", "a")), (HOST,)),  # never more than held
    ],
)
def test_csr_ids(held: tuple[SpiffeId, ...], reg: Registry, asked: tuple[SpiffeId, ...]) -> None:
    assert schedule.csr_ids(held, reg, "a") == tuple(sorted(asked))
