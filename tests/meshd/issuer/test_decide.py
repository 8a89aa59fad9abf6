"""Which identities an issuer signs for a caller: the pure rule, by table."""

from __future__ import annotations

import pytest

from meshd.identity import SpiffeId
from meshd.issuer.decide import Caller, Refusal, grant
from meshd.registry import Endpoint, Registry, Revocation, Service

TD = "t.mesh"
NOW = 1_800_000_000.0


def sid(path: str, domain: str = TD) -> SpiffeId:
    return SpiffeId(domain, "/" + path)


def api_on(*hosts: str) -> Service:
    return Service("api", "10.255.0.2", 8080, tuple(Endpoint(h, "10.0.0.1", 8080) for h in hosts))


REGISTRY = Registry.of(7, [api_on("h1")])
H1 = Caller(frozenset({sid("host/h1"), sid("svc/api"), sid("svc/db")}), "0A1B")


def revoked(ids: tuple[str, ...] = (), serials: tuple[str, ...] = (), until: int = 0) -> Registry:
    return Registry.of(7, [api_on("h1")], revoked=[Revocation("h1", ids, serials, until)])


@pytest.mark.parametrize(
    ("caller", "requested", "registry", "expected"),
    [
        # what it holds and the registry assigns: signed, exactly as asked
        (H1, ["host/h1", "svc/api"], REGISTRY, {"host/h1", "svc/api"}),
        (H1, ["host/h1"], REGISTRY, {"host/h1"}),
        # a service no longer (or never) assigned to the caller's host
        (H1, ["host/h1", "svc/db"], REGISTRY, "no longer assigns service db to host h1"),
        (H1, ["svc/api"], Registry.of(8, [api_on("h2")]), "registry version 8 no longer assigns"),
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
        (H1, [], REGISTRY, "asks for no SPIFFE ID"),
        # revoked, by identity or by serial, while in force
        (
            H1,
            ["host/h1"],
            revoked(ids=("spiffe://t.mesh/host/h1",)),
            "revoked (host h1, by identity",
        ),
        (H1, ["host/h1"], revoked(serials=("0A1B",)), "revoked (host h1, by serial"),
        (H1, ["host/h1"], revoked(serials=("0A1B",), until=int(NOW) + 1), "revoked"),
        (H1, ["host/h1"], revoked(serials=("0A1B",), until=int(NOW) - 1), {"host/h1"}),
        (H1, ["host/h1"], revoked(serials=("FFFF",)), {"host/h1"}),
        (H1, ["host/h1"], revoked(serials=("A1B",)), "by serial"),  # ssl: "0A1B"
        # the caller is not one host
        (
            Caller(frozenset({sid("operator/alice")}), "1"),
            ["host/h1"],
            REGISTRY,
            "no host identity",
        ),
        (
            Caller(frozenset({sid("host/h1"), sid("host/h2")}), "1"),
            ["host/h1"],
            REGISTRY,
            "2 host identities",
        ),
        (Caller(frozenset({sid("host/h1", "other.mesh")}), "1"), ["host/h1"], REGISTRY, "no host"),
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
        assert verdict == frozenset(sid(p) for p in expected)
