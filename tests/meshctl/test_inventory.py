"""hosts.toml: parsing with field paths, VIP allocation, the registry it yields."""

from __future__ import annotations

import json
from typing import Any

import pytest
import toml

from meshctl.inventory import (
    VIP_RANGE,
    HostSpec,
    Inventory,
    ServiceSpec,
    parse_label,
    parse_service,
)
from meshd.errors import ConfigError
from meshd.registry import IssuerRef, Registry, check_vip_range

WEB1 = HostSpec("web1", "10.0.0.11", services=(ServiceSpec("web", 8080, "www-data"),))
API1 = HostSpec(
    "api1", "10.0.0.12", labels=(("version", "v1"),), services=(ServiceSpec("api", 9000),)
)
API2 = HostSpec("api2", "10.0.0.13", user="ops", port=2222, services=(ServiceSpec("api", 9000),))


def test_roundtrip_through_toml() -> None:
    inventory = Inventory().with_host(WEB1).with_host(API1).with_host(API2)
    again = Inventory.from_dict(toml.loads(toml.dumps(inventory.to_toml_dict())), "hosts.toml")
    assert again == inventory


def test_issuer_flag_round_trips_and_is_written_only_when_set() -> None:
    inventory = Inventory().with_host(WEB1).with_host(API1).with_issuer("api1", True)
    doc = inventory.to_toml_dict()
    assert doc["hosts"]["api1"]["issuer"] is True and "issuer" not in doc["hosts"]["web1"]
    assert Inventory.from_dict(toml.loads(toml.dumps(doc)), "hosts.toml") == inventory
    assert inventory.with_issuer("api1", False).host("api1") == API1
    assert inventory.with_issuer("nobody", True) == inventory


@pytest.mark.parametrize(
    ("issuers", "names", "expected"),
    [
        ((), ("web1", "api1"), []),
        (("api1",), ("web1", "api1"), [IssuerRef("api1", "10.0.0.12", 15000)]),
        (("api1",), ("web1",), []),  # not joined: not where anyone renews
        (
            ("api1", "web1"),
            ("web1", "api1", "api2"),
            [IssuerRef("api1", "10.0.0.12", 15000), IssuerRef("web1", "10.0.0.11", 15000)],
        ),
    ],
)
def test_issuers(
    issuers: tuple[str, ...], names: tuple[str, ...], expected: list[IssuerRef]
) -> None:
    inventory = Inventory().with_host(WEB1).with_host(API1).with_host(API2)
    for name in issuers:
        inventory = inventory.with_issuer(name, True)
    assert inventory.issuers(15000, names) == expected


def test_vips_are_stable_and_never_reused() -> None:
    inventory = Inventory().with_host(API1).with_host(WEB1)
    vips = dict(inventory.vips)
    assert vips == {"api": "10.255.0.1", "web": "10.255.0.2"}
    smaller = inventory.without_host("api1")
    assert dict(smaller.vips) == vips  # kept for when the service comes back
    grown = smaller.with_host(HostSpec("db1", "10.0.0.20", services=(ServiceSpec("db", 5432),)))
    assert dict(grown.vips)["db"] == "10.255.0.3"


def test_registry_document_is_what_meshd_accepts() -> None:
    inventory = Inventory().with_host(API1).with_host(API2).with_host(WEB1)
    built = inventory.registry(version=7, mesh_port=15443)
    doc = built.to_dict()
    registry = check_vip_range(Registry.from_dict(doc, "registry"), str(VIP_RANGE), "registry")
    assert registry == built  # what meshctl built is what meshd reads
    api = registry.service("api")
    assert api is not None and [e.host for e in api.endpoints] == ["api1", "api2"]
    assert api.endpoints[0].labels == (("version", "v1"),)
    assert ("10.0.0.12", 9000) in {(e.address, e.port) for e in api.endpoints}
    assert registry.version == 7


@pytest.mark.parametrize("mesh_port", [15443, 16443])
@pytest.mark.parametrize("ipv6", [{}, {"api1": ("fd00::12", "fd00::13")}])
def test_the_registry_meshctl_pushes_is_the_one_meshd_reads(
    mesh_port: int, ipv6: dict[str, tuple[str, ...]]
) -> None:
    built = Inventory().with_host(API1).with_host(API2).with_host(WEB1).registry(7, mesh_port, ipv6)
    pushed = json.loads(json.dumps(built.to_dict()))  # as the admin API's PUT carries it
    assert Registry.from_dict(pushed, "registry") == built
    api = built.service("api")
    assert api is not None and api.endpoints[0].ipv6 == ipv6.get("api1", ())


def test_identities() -> None:
    assert [str(i) for i in WEB1.identities("t.mesh")] == [
        "spiffe://t.mesh/host/web1",
        "spiffe://t.mesh/svc/web",
    ]


def _doc(**host: Any) -> dict[str, Any]:
    return {"hosts": {"h1": {"address": "10.0.0.1", **host}}}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_doc(port=0), r"hosts.toml: hosts.h1.port: 0 is not a port"),
        (_doc(fail_mode="ajar"), r"hosts.h1.fail_mode: 'ajar' is not one of"),
        (
            _doc(services=[{"name": "api", "port": "80"}]),
            r"hosts.h1.services\[0\].port: expected int",
        ),
        (
            _doc(services=[{"name": "API", "port": 80}]),
            r"hosts.h1.services\[0\].name: invalid service name",
        ),
        (_doc(colour="red"), r"hosts.h1.colour: unknown field"),
        ({"hosts": {"Bad_Name": {"address": "x"}}}, r"hosts.Bad_Name.name: invalid host name"),
        ({"hosts": {"h": {"address": "web.example"}}}, r"hosts.h.address: 'web.example' is not"),
        (
            {
                "hosts": {
                    "h": {
                        "address": "10.0.0.1",
                        "services": [{"name": "a", "port": 80}, {"name": "b", "port": 80}],
                    }
                }
            },
            r"hosts.h.services: h: services 'a' and 'b' both use port 80",
        ),
        (
            {
                "hosts": {
                    "h": {
                        "address": "10.0.0.1",
                        "services": [{"name": "a", "port": 1, "run_as": "a b"}],
                    }
                }
            },
            r"hosts.h.services\[0\].run_as: invalid user 'a b'",
        ),
        ({"vips": {"api": "192.168.0.1"}}, r"vips.api: 192.168.0.1 is outside"),
        # what meshd would refuse in the registry, refused here first
        ({"hosts": {"h": {"address": "10.255.0.7"}}}, r"hosts.h.address: 10.255.0.7 is inside"),
        (_doc(labels={"zone": "a b"}), r"hosts.h1.labels: invalid label 'zone'='a b'"),
        (
            {"hosts": {"h": {"address": "10.0.0.1", "issuer": "yes"}}},
            r"hosts.h.issuer: expected bool",
        ),
        (
            {"vips": {"a": "10.255.0.1", "b": "10.255.0.1"}},
            r"vips.b: 10.255.0.1 is also the VIP of 'a'",
        ),
        (
            {
                "hosts": {
                    "h1": {"address": "10.0.0.1", "services": [{"name": "api", "port": 1}]},
                    "h2": {"address": "10.0.0.2", "services": [{"name": "api", "port": 2}]},
                }
            },
            r"hosts.h2.services\[0\].port: service 'api' uses port 1",
        ),
    ],
)
def test_invalid(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Inventory.from_dict(doc, "hosts.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("api:8080", ServiceSpec("api", 8080)), ("api:8080:www", ServiceSpec("api", 8080, "www"))],
)
def test_parse_service(text: str, expected: ServiceSpec) -> None:
    assert parse_service(text) == expected


@pytest.mark.parametrize("text", ["api", "api:http", "api:0", "api:1:2:3", "API:80"])
def test_parse_service_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_service(text)


@pytest.mark.parametrize("text", ["zone=a b", "zo ne=a", "zone=a\nINFO meshd: x"])
def test_parse_label_refuses_what_meshd_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid label"):
        parse_label(text)
