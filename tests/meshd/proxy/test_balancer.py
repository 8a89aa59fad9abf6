"""The balancer: least outstanding streams, ties round robin, failed endpoints held off."""

from __future__ import annotations

import pytest

from meshd.proxy.balancer import FAIL_BACKOFF, MAX_ATTEMPTS, NOTHING_TRIED, Balancer, Key
from meshd.registry import Endpoint

E1, E2, E3, E4 = (Endpoint(f"h{i}", f"10.0.0.{i}", 80, 15443) for i in (1, 2, 3, 4))
ALL = (E1, E2, E3)
NOW = 1000.0
HELD = NOW + 60  # a failed endpoint's back-off ends after NOW


def _balancer(
    outstanding: dict[Endpoint, int] | None = None, held: tuple[Endpoint, ...] = ()
) -> Balancer:
    balancer = Balancer()
    balancer.outstanding = {e.link_key: n for e, n in (outstanding or {}).items()}
    balancer.failed_until = {e.link_key: (HELD, 1.0) for e in held}
    return balancer


def _keys(*endpoints: Endpoint) -> frozenset[Key]:
    return frozenset(e.link_key for e in endpoints)


@pytest.mark.parametrize(
    ("endpoints", "outstanding", "held", "avoid", "picks"),
    [
        pytest.param(ALL, {}, (), (), [E1, E2, E3, E1, E2, E3], id="ties-go-round-robin"),
        pytest.param(ALL, {E1: 3, E2: 1, E3: 2}, (), (), [E2] * 5, id="fewest-outstanding-wins"),
        pytest.param(ALL, {}, (E3,), (), [E1, E2, E1, E2], id="a-failed-endpoint-is-held-off"),
        pytest.param(
            ALL, {E1: 5, E2: 5}, (E3,), (), [E1, E2, E1], id="held-off-though-least-loaded"
        ),
        pytest.param((E1, E2), {}, (E1, E2), (), [E1, E2], id="all-failed-one-rather-than-none"),
        pytest.param(ALL, {}, (), (E1, E2), [E3, E3], id="tried-ones-are-avoided"),
        pytest.param(ALL, {}, (E3,), (E1, E2), [E3], id="a-failed-one-as-the-last-resort"),
        pytest.param(ALL, {}, (), ALL, [None], id="every-one-tried"),
        pytest.param((E1,), {E1: 9}, (E1,), (), [E1, E1], id="one-endpoint-fast-path"),
        pytest.param((E1,), {}, (), (E1,), [None], id="one-endpoint-tried"),
        pytest.param((), {}, (), (), [None], id="no-endpoints"),
    ],
)
def test_pick(
    endpoints: tuple[Endpoint, ...],
    outstanding: dict[Endpoint, int],
    held: tuple[Endpoint, ...],
    avoid: tuple[Endpoint, ...],
    picks: list[Endpoint | None],
) -> None:
    balancer = _balancer(outstanding, held)
    assert [balancer.pick("web", endpoints, _keys(*avoid), NOW) for _ in picks] == picks


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(HELD - 0.001, {E1, E2}, id="before-its-back-off-ends"),
        pytest.param(HELD, {E1, E2, E3}, id="once-its-back-off-ends"),
    ],
)
def test_a_held_off_endpoint_comes_back_when_its_back_off_ends(
    now: float, expected: set[Endpoint]
) -> None:
    balancer = _balancer(held=(E3,))
    assert {balancer.pick("web", ALL, NOTHING_TRIED, now) for _ in range(6)} == expected


def test_round_robin_is_kept_per_service() -> None:
    balancer = Balancer()
    assert balancer.pick("web", ALL, NOTHING_TRIED, NOW) == E1
    assert balancer.pick("api", ALL, NOTHING_TRIED, NOW) == E1
    assert balancer.pick("web", ALL, NOTHING_TRIED, NOW) == E2


@pytest.mark.parametrize(
    ("failures", "backoffs"),
    [
        pytest.param(1, [FAIL_BACKOFF[0]], id="first"),
        pytest.param(7, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], id="doubling-up-to-the-longest"),
    ],
)
def test_the_back_off_doubles_with_each_failure_in_a_row(
    failures: int, backoffs: list[float]
) -> None:
    balancer = Balancer()
    got = [balancer.failed(E1.link_key, NOW + i) for i in range(failures)]
    assert got == backoffs
    assert balancer.failed_until[E1.link_key] == (NOW + failures - 1 + backoffs[-1], backoffs[-1])


def test_a_recovered_endpoint_starts_its_back_off_anew() -> None:
    balancer = Balancer()
    for _ in range(3):
        balancer.failed(E1.link_key, NOW)
    balancer.recovered(E1.link_key)
    assert balancer.pick("web", (E1, E2), NOTHING_TRIED, NOW) == E1
    assert balancer.failed(E1.link_key, NOW) == FAIL_BACKOFF[0]


@pytest.mark.parametrize(
    ("endpoints", "tried", "expected"),
    [
        pytest.param(ALL, (E1,), {E2, E3}, id="after-one-try-another"),
        pytest.param(ALL, (E1, E2), {E3}, id="after-two-the-last"),
        pytest.param(ALL, ALL, {None}, id="none-left"),
        pytest.param((E1, E2, E3, E4), (E1, E2, E3), {None}, id="max-attempts-with-one-left"),
        pytest.param((E1,), (E1,), {None}, id="addressed-directly-no-other-will-do"),
    ],
)
def test_retry(
    endpoints: tuple[Endpoint, ...], tried: tuple[Endpoint, ...], expected: set[Endpoint | None]
) -> None:
    assert MAX_ATTEMPTS == 3  # the table is written for three tries
    balancer = _balancer(held=tried)  # as a failed dial leaves them
    got = {balancer.retry("web", endpoints, _keys(*tried), NOW) for _ in range(4)}
    assert got == expected


@pytest.mark.parametrize(
    ("opened", "closed", "left"),
    [
        pytest.param(2, 1, 1, id="counted"),
        pytest.param(1, 3, 0, id="never-below-zero"),
    ],
)
def test_outstanding_streams(opened: int, closed: int, left: int) -> None:
    balancer = Balancer()
    for _ in range(opened):
        balancer.opened(E1.link_key)
    for _ in range(closed):
        balancer.closed(E1.link_key)
    assert balancer.outstanding[E1.link_key] == left
