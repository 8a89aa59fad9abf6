"""The registry's IPv6 addresses of an endpoint: validated at the door, routed like its address."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshd.errors import ConfigError
from meshd.policy.bundle import NO_POLICY, Bundle
from meshd.registry import MAX_IPV6, Registry
from tests.meshd.policy.sample import config

DOC: dict[str, Any] = {
    "version": 1,
    "services": {
        "api": {
            "vip": "10.255.0.1",
            "port": 8080,
            "endpoints": [
                {"host": "api1", "address": "10.0.0.11", "port": 8080, "ipv6": ["fd00:77::11"]},
                {"host": "api2", "address": "10.0.0.12", "port": 8080},
            ],
        },
    },
}


def _with_ipv6(value: object) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc["services"]["api"]["endpoints"][1]["ipv6"] = value
    return doc


def test_an_ipv6_address_routes_to_its_endpoint() -> None:
    registry = Registry.from_dict(_with_ipv6(["FD00:77:0::12"]), "registry.json")
    routes = Bundle.compile(config(), registry, NO_POLICY).routes  # what meshd decides with
    route = routes.get(("fd00:77::12", 8080))  # as meshd reads it from the socket
    assert route is not None and len(route.endpoints) == 1
    endpoint = route.endpoints[0]
    assert endpoint.host == "api2" and endpoint.address == "10.0.0.12"
    assert ("fd00:77::12", 8081) not in routes
    assert endpoint.addresses == ("10.0.0.12", "fd00:77::12")


def test_round_trip_keeps_ipv6_and_leaves_it_out_when_empty() -> None:
    registry = Registry.from_dict(DOC, "registry.json")
    assert registry.to_dict() == Registry.from_dict(registry.to_dict(), "again").to_dict()
    endpoints = registry.to_dict()["services"]["api"]["endpoints"]
    assert endpoints[0]["ipv6"] == ["fd00:77::11"] and "ipv6" not in endpoints[1]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("fd00::1", "expected list"),
        ([1], "1 is not an IPv6 address"),
        (["10.0.0.12"], "'10.0.0.12' is not an IPv6 address"),
        (["fd00::1%eth0"], "is not a global unicast address"),
        (["::1"], "is not a global unicast address"),
        (["fe80::1"], "is not a global unicast address"),
        (["ff02::1"], "is not a global unicast address"),
        (["::"], "is not a global unicast address"),
        (["::ffff:10.0.0.12"], "is not a global unicast address"),
        (["fd00::1", "fd00:0::1"], "an address is listed twice"),
        ([f"fd00::{i:x}" for i in range(1, MAX_IPV6 + 2)], f"at most {MAX_IPV6}"),
    ],
)
def test_bad_ipv6_lists_are_refused_with_their_field(value: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=r"registry\.json: ") as caught:
        Registry.from_dict(_with_ipv6(value), "registry.json")
    assert problem in caught.value.message
    assert "services.api.endpoints[1].ipv6" in caught.value.message


def test_an_ipv6_address_of_two_services_is_refused() -> None:
    doc = copy.deepcopy(DOC)
    endpoint = {"host": "db1", "address": "10.0.0.20", "port": 8080, "ipv6": ["fd00:77::11"]}
    doc["services"]["db"] = {"vip": "10.255.0.2", "port": 8080, "endpoints": [endpoint]}
    with pytest.raises(
        ConfigError, match=r"services\.db: \[fd00:77::11\]:8080 is also used by 'api'"
    ):
        Registry.from_dict(doc, "registry.json")
