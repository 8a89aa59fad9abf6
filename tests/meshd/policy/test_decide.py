"""One row per admission rule: admitted at its limit minus one, refused at it, with code and rule.

Each admission point is a table: what comes in (destination, request, peer,
counters) and the decision, summed up as ``("forward", service, endpoints,
rule)``, ``("deliver", service, port, rule)``, ``("link", peer, rule)`` or
``("refuse", code, reason, rule)``. Rows where several rules would refuse
pin the order of the checks, which decides the code a peer sees.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from meshd.identity import SpiffeId
from meshd.policy import decide
from meshd.policy.bundle import NO_POLICY, Address, Bundle
from meshd.policy.decisions import (
    HOST_IDENTITY,
    LOCAL_SERVICES,
    MAX_CONNECTIONS,
    MAX_LINKS_PER_PEER,
    MAX_STREAMS_PER_PEER,
    MTLS_MODE,
    REGISTRY_REVOKED,
    REGISTRY_SERVICES,
    SOURCE_IN_CERTIFICATE,
    AcceptLink,
    Deliver,
    Forward,
    Refuse,
)
from meshd.proxy.frames import OpenRequest
from meshd.registry import Registry, Revocation
from tests.meshd.policy.sample import (
    B1,
    B2,
    DB,
    HOST_A,
    HOST_C,
    MAX_CONNS,
    MAX_PEER_LINKS,
    MAX_PEER_STREAMS,
    REGISTRY,
    TD,
    WEB,
    config,
)

STRICT = Bundle.compile(config("strict"), REGISTRY, NO_POLICY)
PERMISSIVE = Bundle.compile(config("permissive"), REGISTRY, NO_POLICY)
Summary = tuple[object, ...]


def summary(decision: Forward | Deliver | AcceptLink | Refuse) -> Summary:
    if isinstance(decision, Forward):
        return ("forward", decision.service.name, decision.endpoints, decision.rule)
    if isinstance(decision, Deliver):
        return ("deliver", decision.service, decision.port, decision.rule)
    if isinstance(decision, AcceptLink):
        return ("link", str(decision.peer), decision.rule)
    return ("refuse", decision.code, decision.reason, decision.rule)


LIMIT = ("refuse", "limit", "connection limit reached", MAX_CONNECTIONS)
TO_API = ("forward", "api", (B1, B2), REGISTRY_SERVICES)
TO_B1 = ("forward", "api", (B1,), REGISTRY_SERVICES)  # addressed directly: no other will do
TO_B2 = ("forward", "api", (B2,), REGISTRY_SERVICES)
VIP = ("10.255.0.2", 80)
NOWHERE = ("10.255.0.9", 80)


@pytest.mark.parametrize(
    ("active", "upstream", "dst", "expected"),
    [
        pytest.param(MAX_CONNS - 1, None, VIP, TO_API, id="max_connections-minus-one"),
        pytest.param(MAX_CONNS, None, VIP, LIMIT, id="max_connections"),
        pytest.param(MAX_CONNS, None, NOWHERE, LIMIT, id="max_connections-first"),
        pytest.param(0, None, ("10.77.0.12", 8080), TO_B2, id="an-endpoint-addressed"),
        pytest.param(0, None, ("fd00:77::11", 8080), TO_B1, id="an-endpoints-ipv6-address"),
        pytest.param(
            0,
            None,
            NOWHERE,
            (
                "refuse",
                "unknown_destination",
                "10.255.0.9:80 is not a mesh service",
                REGISTRY_SERVICES,
            ),
            id="unknown-destination",
        ),
        pytest.param(
            0,
            None,
            ("10.255.0.2", 81),
            (
                "refuse",
                "unknown_destination",
                "10.255.0.2:81 is not a mesh service",
                REGISTRY_SERVICES,
            ),
            id="a-vip-on-another-port",
        ),
        pytest.param(
            0,
            None,
            None,
            ("refuse", "unknown_destination", "it was not redirected", REGISTRY_SERVICES),
            id="not-redirected",
        ),
        pytest.param(0, "api", None, TO_API, id="upstream-listener"),
        pytest.param(MAX_CONNS, "api", None, LIMIT, id="upstream-listener-max_connections"),
        pytest.param(
            0,
            "nope",
            None,
            ("refuse", "unknown_destination", "it was not redirected", REGISTRY_SERVICES),
            id="upstream-listener-of-an-unknown-service",
        ),
        pytest.param(
            0, "lonely", None, ("forward", "lonely", (), REGISTRY_SERVICES), id="no-endpoints"
        ),
    ],
)
def test_outbound(
    active: int, upstream: str | None, dst: Address | None, expected: Summary
) -> None:
    assert summary(decide.outbound(STRICT, active, upstream, dst)) == expected


TO_LOCAL_API = ("deliver", "api", 8080, LOCAL_SERVICES)
NAMES = frozenset({HOST_A, WEB})


@pytest.mark.parametrize(
    ("request_", "peer_streams", "active", "expected"),
    [
        pytest.param(
            OpenRequest("api", 8080, WEB),
            MAX_PEER_STREAMS - 1,
            MAX_CONNS - 1,
            TO_LOCAL_API,
            id="every-limit-minus-one",
        ),
        pytest.param(
            OpenRequest("api", 8080, WEB),
            MAX_PEER_STREAMS,
            0,
            (
                "refuse",
                "peer_limit",
                f"{HOST_A} already holds {MAX_PEER_STREAMS} streams here",
                MAX_STREAMS_PER_PEER,
            ),
            id="max_streams_per_peer",
        ),
        pytest.param(OpenRequest("api", 8080, WEB), 0, MAX_CONNS, LIMIT, id="max_connections"),
        pytest.param(
            OpenRequest("api", 8080, HOST_A), 0, 0, TO_LOCAL_API, id="the-peer-host-as-source"
        ),
        pytest.param(
            OpenRequest("api", 8080, DB),
            MAX_PEER_STREAMS,
            MAX_CONNS,
            (
                "refuse",
                "source_not_in_certificate",
                f"peer does not hold {DB}",
                SOURCE_IN_CERTIFICATE,
            ),
            id="source-not-in-certificate-first",
        ),
        pytest.param(
            OpenRequest("db", 8080, WEB),
            MAX_PEER_STREAMS,
            MAX_CONNS,
            ("refuse", "unknown_service", "no local service db on port 8080", LOCAL_SERVICES),
            id="unknown-service-before-limits",
        ),
        pytest.param(
            OpenRequest("api", 7000, WEB),
            0,
            0,
            ("refuse", "unknown_service", "no local service api on port 7000", LOCAL_SERVICES),
            id="a-local-service-on-another-port",
        ),
        pytest.param(
            OpenRequest("api", 8080, WEB),
            MAX_PEER_STREAMS,
            MAX_CONNS,
            (
                "refuse",
                "peer_limit",
                f"{HOST_A} already holds {MAX_PEER_STREAMS} streams here",
                MAX_STREAMS_PER_PEER,
            ),
            id="max_streams_per_peer-before-max_connections",
        ),
    ],
)
def test_stream(request_: OpenRequest, peer_streams: int, active: int, expected: Summary) -> None:
    decision = decide.stream(STRICT, request_, HOST_A, NAMES, peer_streams, active)
    assert summary(decision) == expected


MTLS_STRICT = ("refuse", "plaintext", "mtls is strict", MTLS_MODE)
PLAIN_API = ("deliver", "api", 8080, MTLS_MODE)
NO_LOCAL = ("refuse", "plaintext", "10.77.0.2:9999 is no local service", LOCAL_SERVICES)


@pytest.mark.parametrize(
    ("bundle", "dst", "active", "expected"),
    [
        pytest.param(STRICT, ("10.77.0.2", 8080), 0, MTLS_STRICT, id="strict"),
        pytest.param(STRICT, ("10.77.0.2", 8080), MAX_CONNS, MTLS_STRICT, id="strict-first"),
        pytest.param(STRICT, ("10.77.0.2", 9999), 0, NO_LOCAL, id="strict-no-local-service"),
        pytest.param(
            STRICT,
            None,
            0,
            ("refuse", "plaintext", "? is no local service", LOCAL_SERVICES),
            id="not-redirected",
        ),
        pytest.param(
            PERMISSIVE,
            ("10.77.0.2", 8080),
            MAX_CONNS - 1,
            PLAIN_API,
            id="permissive-max_connections-minus-one",
        ),
        pytest.param(
            PERMISSIVE, ("10.77.0.2", 8080), MAX_CONNS, LIMIT, id="permissive-max_connections"
        ),
        pytest.param(
            PERMISSIVE, ("10.77.0.2", 9999), 0, NO_LOCAL, id="permissive-no-local-service"
        ),
    ],
)
def test_plaintext(bundle: Bundle, dst: Address | None, active: int, expected: Summary) -> None:
    assert summary(decide.plaintext(bundle, dst, active)) == expected


def ids(*texts: str) -> frozenset[SpiffeId]:
    return frozenset(SpiffeId.parse(t) for t in texts)


NOT_A_HOST = ("refuse", "wrong_identity", "no host identity of our trust domain", HOST_IDENTITY)


@pytest.mark.parametrize(
    ("peer_ids", "links", "expected"),
    [
        pytest.param(ids(HOST_A), {}, ("link", HOST_A, HOST_IDENTITY), id="first-link"),
        pytest.param(
            ids(HOST_A, WEB),
            {HOST_A: MAX_PEER_LINKS - 1},
            ("link", HOST_A, HOST_IDENTITY),
            id="max_links_per_peer-minus-one",
        ),
        pytest.param(
            ids(HOST_A),
            {HOST_A: MAX_PEER_LINKS},
            ("refuse", "too_many_links", f"{HOST_A} already holds its links", MAX_LINKS_PER_PEER),
            id="max_links_per_peer",
        ),
        pytest.param(
            ids(HOST_A),
            {HOST_C: MAX_PEER_LINKS},
            ("link", HOST_A, HOST_IDENTITY),
            id="another-peer-at-its-limit",
        ),
        pytest.param(ids(WEB), {}, NOT_A_HOST, id="a-service-identity-only"),
        pytest.param(ids("spiffe://other.mesh/host/a"), {}, NOT_A_HOST, id="another-trust-domain"),
        pytest.param(ids(f"spiffe://{TD}/host/a/b"), {}, NOT_A_HOST, id="not-our-naming-scheme"),
        pytest.param(frozenset(), {}, NOT_A_HOST, id="no-identity"),
    ],
)
def test_link(peer_ids: frozenset[SpiffeId], links: Mapping[str, int], expected: Summary) -> None:
    assert summary(decide.link(STRICT, peer_ids, links, "", NOW)) == expected


# host a's ID and serial 01A6 (as meshctl spells it: 1A6) are revoked; c's 2B is not;
# host e's name joined again at REJOINED: its ID revokes only certificates from before
HOST_E = f"spiffe://{TD}/host/e"
NOW = 1_800_000_000.0
REJOINED = 1_799_990_000
REVOKED = Bundle.compile(
    config(),
    Registry.of(
        REGISTRY.version,
        REGISTRY.services,
        revoked=(
            Revocation("a", (HOST_A,), ("1A6",), 1),
            Revocation("d", (), ("ff00",), 1),
            Revocation("e", (HOST_E,), (), 1, before=REJOINED),
        ),
    ),
    NO_POLICY,
)
BY_ID = ("refuse", "revoked", f"{HOST_A} is revoked", REGISTRY_REVOKED)


def by_serial(serial: str) -> Summary:
    return ("refuse", "revoked", f"certificate serial {serial} is revoked", REGISTRY_REVOKED)


@pytest.mark.parametrize(
    ("peer_ids", "serial", "links", "expected"),
    [
        pytest.param(ids(HOST_A), "", {}, BY_ID, id="revoked-id"),
        pytest.param(ids(WEB, HOST_A), "2B", {}, BY_ID, id="revoked-id-beside-another"),
        pytest.param(ids(HOST_C), "01A6", {}, by_serial("01A6"), id="revoked-serial-as-ssl"),
        pytest.param(ids(HOST_C), "1A6", {}, by_serial("1A6"), id="revoked-serial-as-meshctl"),
        pytest.param(ids(HOST_C), "FF00", {}, by_serial("FF00"), id="revoked-serial-lower-case"),
        pytest.param(ids(HOST_C), "2B", {}, ("link", HOST_C, HOST_IDENTITY), id="not-revoked"),
        pytest.param(ids(HOST_C), "1A60", {}, ("link", HOST_C, HOST_IDENTITY), id="another-serial"),
        pytest.param(
            ids(HOST_A), "", {HOST_A: MAX_PEER_LINKS}, BY_ID, id="revoked-before-the-link-limit"
        ),
        pytest.param(ids(WEB), "1A6", {}, by_serial("1A6"), id="revoked-before-the-host-check"),
    ],
)
def test_link_to_a_revoked_peer(
    peer_ids: frozenset[SpiffeId], serial: str, links: Mapping[str, int], expected: Summary
) -> None:
    assert summary(decide.link(REVOKED, peer_ids, links, serial, NOW)) == expected


@pytest.mark.parametrize(
    ("host", "not_before", "revoked"),
    [
        (HOST_E, 0, True),
        (HOST_E, REJOINED - 1, True),  # a stolen copy, or an issuer's renewal of one
        (HOST_E, REJOINED, False),  # signed when the name joined again
        (HOST_E, NOW, False),
        (HOST_A, NOW, True),  # revoked in full: whenever its certificate started
    ],
)
def test_a_rejoined_name_revokes_only_certificates_from_before(
    host: str, not_before: float, revoked: bool
) -> None:
    refusal = decide.revoked(REVOKED, [host], "2B", not_before)
    assert (refusal is not None) is revoked
    decision = summary(decide.link(REVOKED, ids(host), {}, "2B", not_before))
    expected = ("refuse", "revoked", f"{host} is revoked", REGISTRY_REVOKED)
    assert (decision == expected) is revoked


def test_a_bundle_without_revocations_refuses_nobody() -> None:
    assert decide.revoked(STRICT, [HOST_A], "1A6", 0) is None
    assert summary(decide.link(STRICT, ids(HOST_A), {}, "1A6", 0)) == (
        "link",
        HOST_A,
        HOST_IDENTITY,
    )


def test_admissions_are_the_bundles_own_values() -> None:
    """Admitting builds nothing per connection: the decision was compiled with the bundle."""
    assert decide.outbound(STRICT, 0, None, VIP) is STRICT.routes[VIP]
    assert decide.outbound(STRICT, 0, "api", None) is STRICT.routes[VIP]
    request = OpenRequest("api", 8080, WEB)
    assert decide.stream(STRICT, request, HOST_A, NAMES, 0, 0) is STRICT.local["api"]
    assert decide.plaintext(PERMISSIVE, ("10.0.0.1", 8080), 0) is PERMISSIVE.plaintext[8080]
