"""The fan-out: every host's result or error, in input order, one failure never the others'."""

from __future__ import annotations

import threading

import pytest

from meshctl.fleet import fan_out
from meshctl.inventory import HostSpec
from meshd.errors import ConnectError, MeshError

WEB1, API1 = HostSpec("web1", "10.0.0.11"), HostSpec("api1", "10.0.0.12")
NEW = HostSpec("", "10.0.0.13")  # not named yet: its address names it


def answer(host: HostSpec) -> str:
    """web1 answers, api1 cannot be reached, the unnamed host hits a bug."""
    if host is API1:
        raise ConnectError("api1: connection refused")
    if host is NEW:
        raise KeyError("version")
    return f"{host.name} ok"


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        ([], {}),
        ([WEB1], {WEB1: "web1 ok"}),
        ([API1, WEB1], {API1: "ConnectError: api1: connection refused", WEB1: "web1 ok"}),
        (
            [NEW, WEB1, API1],
            {
                NEW: "ProvisionError: 10.0.0.13: KeyError: 'version'",
                WEB1: "web1 ok",
                API1: "ConnectError: api1: connection refused",
            },
        ),
    ],
    ids=["none", "one", "one-fails", "a-bug-is-one-hosts-failure"],
)
def test_fan_out_maps_each_host_to_its_result_or_error(
    hosts: list[HostSpec], expected: dict[HostSpec, str]
) -> None:
    results = fan_out(answer, hosts)
    assert list(results) == hosts  # input order
    shown = {
        h: f"{type(r).__name__}: {r.message}" if isinstance(r, MeshError) else r
        for h, r in results.items()
    }
    assert shown == expected


def test_fan_out_runs_hosts_at_the_same_time() -> None:
    """SSH waits on the network: a slow host does not hold up the others."""
    hosts = [HostSpec(f"h{i}", f"10.0.1.{i}") for i in range(1, 5)]
    barrier = threading.Barrier(len(hosts), timeout=10)
    results = fan_out(lambda host: barrier.wait(), hosts)
    assert sorted(r for r in results.values() if isinstance(r, int)) == [0, 1, 2, 3]
