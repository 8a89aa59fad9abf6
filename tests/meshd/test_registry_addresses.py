"""The registry's IPv4 addresses: endpoints and VIPs are unicast host addresses, or refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshd.errors import ConfigError
from meshd.registry import Registry, check_vip_range

VIP_RANGE = "10.255.0.0/16"
DOC: dict[str, Any] = {
    "version": 1,
    "services": {
        "api": {
            "vip": "10.255.0.1",
            "port": 8080,
            "endpoints": [{"host": "api1", "address": "10.0.0.11", "port": 8080}],
        },
    },
}


def _with(field: str, value: str) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    if field == "vip":
        doc["services"]["api"]["vip"] = value
    else:
        doc["services"]["api"]["endpoints"][0][field] = value
    return doc


def _on_host(doc: dict[str, Any], mesh_host: str = "0.0.0.0") -> Registry:
    registry = Registry.from_dict(doc, "registry.json")
    return check_vip_range(registry, VIP_RANGE, "registry.json", mesh_host=mesh_host)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("0.0.0.0", "is not a host's unicast address"),  # connect() reaches this host
        ("0.1.2.3", "is not a host's unicast address"),
        ("255.255.255.255", "is not a host's unicast address"),
        ("240.0.0.1", "is not a host's unicast address"),
        ("224.0.0.1", "is not a host's unicast address"),
        ("239.255.0.1", "is not a host's unicast address"),
        ("169.254.1.2", "is not a host's unicast address"),
        ("10.0.0.300", "is not an IPv4 address"),
    ],
)
@pytest.mark.parametrize("field", ["address", "vip"])
def test_addresses_that_name_no_single_host_are_refused(
    field: str, address: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Registry.from_dict(_with(field, address), "registry.json")
    at = "services.api.vip" if field == "vip" else "services.api.endpoints[0].address"
    assert f"registry.json: {at}: {address!r} {problem}" in caught.value.message


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9"])
def test_a_loopback_endpoint_is_refused_where_meshd_serves_other_hosts(address: str) -> None:
    """127.0.0.1 is another machine on every host: only a one-machine mesh (meshd's mesh port
    on loopback: tests, demos) may list it."""
    with pytest.raises(ConfigError) as caught:
        _on_host(_with("address", address))
    assert (
        f"registry.json: services.api.endpoints[0].address: {address} is a loopback address"
        in caught.value.message
    )
    assert caught.value.hint and "host's own address" in caught.value.hint
    one_machine = _on_host(_with("address", address), mesh_host="127.0.0.1")
    assert one_machine.services[0].endpoints[0].address == address


def test_a_loopback_vip_is_refused_even_on_one_machine() -> None:
    with pytest.raises(ConfigError, match="is outside vip_range"):
        _on_host(_with("vip", "127.0.0.5"), mesh_host="127.0.0.1")


def test_host_addresses_are_accepted() -> None:
    for address in ("10.0.0.11", "192.168.1.5", "100.64.0.1", "203.0.113.9"):
        registry = _on_host(_with("address", address))
        assert registry.services[0].endpoints[0].address == address
