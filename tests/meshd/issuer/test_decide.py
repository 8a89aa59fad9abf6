"""Which identities an issuer signs for a caller: the pure rule, by table."""

from __future__ import annotations

import pytest

from meshd.identity import SpiffeId
from meshd.issuer.decide import Caller, Grant, Refusal, grant
from meshd.registry import Endpoint, Registry, Revocation, Service

TD = "t.mesh"
NOW = 1_800_000_000.0


def sid(path: str, domain: str = TD) -> SpiffeId:
    return SpiffeId(domain, "/" + path)


def api_on(*hosts: str) -> Service:
    return Service("api", "10.255.0.2", 8080, tuple(Endpoint(h, "10.0.0.1", 8080) for h in hosts))


REGISTRY = Registry.of(7, [api_on("h1")])
STARTED = NOW - 3600  # when H1's certificate started
H1 = Caller(frozenset({sid("host/h1"), sid("svc/api"), sid("svc/db")}), "0A1B", STARTED)


def revoked(
    ids: tuple[str, ...] = (), serials: tuple[str, ...] = (), until: int = 0, before: int = 0
) -> Registry:
    entry = Revocation("h1", ids, serials, until, before)
    return Registry.of(7, [api_on("h1")], revoked=[entry])


H1_ID = ("spiffe://t.mesh/host/h1",)


@pytest.mark.parametrize(
    ("caller", "requested", "registry", "expected"),
    [
        # what it holds and the registry assigns: signed, exactly as asked
        (H1, ["host/h1", "svc/api"], REGISTRY, {"host/h1", "svc/api"}),
        (H1, ["host/h1"], REGISTRY, {"host/h1"}),
        # a service no longer (or never) assigned to the caller's host: left out, the rest signed
        (H1, ["host/h1", "svc/db"], REGISTRY, {"host/h1"}),
        (H1, ["host/h1", "svc/api", "svc/db"], REGISTRY, {"host/h1", "svc/api"}),
        (H1, ["host/h1", "svc/api"], Registry.of(8, [api_on("h2")]), {"host/h1"}),
        # the host ID is never left out: a CSR without it is refused
        (H1, ["svc/api"], REGISTRY, "does not ask for the caller's host identity"),
        (H1, ["svc/db"], REGISTRY, "does not ask for the caller's host identity"),
        # an identity its certificate does not hold
        (H1, ["host/h2"], REGISTRY, "host/h2 is not held"),
        (H1, ["svc/web"], REGISTRY, "svc/web is not held"),
        # kinds an issuer never signs, even when held
        (H1, ["operator/alice"], REGISTRY, "not a host or service identity"),
        (H1, ["monitor/prom"], REGISTRY, "not a host or service identity"),
        (H1, ["issuer/h1"], REGISTRY, "not a host or service identity"),
        (H1, ["svc/api/extra"], REGISTRY, "not a host or service identity"),
        # another trust domain
        (H1, ["other.mesh:host/h1"], REGISTRY, "outside the trust domain"),
        # nothing asked
        (H1, [], REGISTRY, "does not ask for the caller's host identity"),
        # revoked, by identity or by serial, while in force
        (H1, ["host/h1"], revoked(ids=H1_ID), "revoked (host h1, by identity"),
        # the name joined again: only a certificate from before then is revoked by its ID
        (H1, ["host/h1"], revoked(ids=H1_ID, before=int(STARTED) + 1), "by identity"),
        (H1, ["host/h1"], revoked(ids=H1_ID, before=int(STARTED)), {"host/h1"}),
        (H1, ["host/h1"], revoked(ids=H1_ID, serials=("0A1B",), before=1), "by serial"),
        (H1, ["host/h1"], revoked(serials=("0A1B",)), "revoked (host h1, by serial"),
        (H1, ["host/h1"], revoked(serials=("0A1B",), until=int(NOW) + 1), "revoked"),
        (H1, ["host/h1"], revoked(serials=("0A1B",), until=int(NOW) - 1), {"host/h1"}),
        (H1, ["host/h1"], revoked(serials=("FFFF",)), {"host/h1"}),
        (H1, ["host/h1"], revoked(serials=("A1B",)), "by serial"),  # ssl: "0A1B"
        # the caller is not one host
        (
            Caller(frozenset({sid("operator/alice")}), "1", STARTED),
            ["host/h1"],
            REGISTRY,
            "no host identity",
        ),
        (
            Caller(frozenset({sid("host/h1"), sid("host/h2")}), "1", STARTED),
            ["host/h1"],
            REGISTRY,
            "2 host identities",
        ),
        (
            Caller(frozenset({sid("host/h1", "other.mesh")}), "1", STARTED),
            ["host/h1"],
            REGISTRY,
            "no host",
        ),
    ],
)
def test_grant(
    caller: Caller, requested: list[str], registry: Registry, expected: set[str] | str
) -> None:
    wanted = [
        sid(r.split(":", 1)[1], r.split(":", 1)[0]) if ":" in r else sid(r) for r in requested
    ]
    verdict = grant(caller, wanted, registry, TD, NOW)
    if isinstance(expected, str):
        assert isinstance(verdict, Refusal), verdict
        assert expected in verdict.reason
    else:
        assert isinstance(verdict, Grant), verdict
        assert verdict.ids == frozenset(sid(p) for p in expected)
        assert len(verdict.dropped) == len(set(wanted) - verdict.ids)


def test_a_left_out_service_is_said_and_why() -> None:
    verdict = grant(H1, [sid("host/h1"), sid("svc/db")], REGISTRY, TD, NOW)
    assert isinstance(verdict, Grant) and verdict.dropped == (
        "spiffe://t.mesh/svc/db: registry version 7 no longer assigns service db to host h1",
    )


@pytest.mark.parametrize(
    ("registry", "floor"),
    [
        (REGISTRY, 0),
        (revoked(ids=H1_ID, before=int(STARTED)), int(STARTED)),  # the name joined again
        (revoked(ids=("spiffe://t.mesh/host/h2",), before=int(NOW)), 0),  # another host's
    ],
)
def test_a_grant_starts_no_earlier_than_the_name_joined_again(
    registry: Registry, floor: int
) -> None:
    verdict = grant(H1, [sid("host/h1")], registry, TD, NOW)
    assert isinstance(verdict, Grant) and verdict.not_before == floor
