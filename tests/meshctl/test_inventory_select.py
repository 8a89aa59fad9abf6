"""Which hosts a command acts on: inventory names, [USER@]HOST[:PORT] targets, --all, overrides."""

from __future__ import annotations

import pytest

from meshctl.inventory import (
    HostOverrides,
    HostSpec,
    Inventory,
    ServiceSpec,
    parse_label,
    parse_service,
    select_hosts,
)
from meshd.errors import ConfigError

WEB1 = HostSpec(
    "web1",
    "10.0.0.11",
    user="admin",
    fail_mode="open",
    labels=(("zone", "a"),),
    services=(ServiceSpec("web", 8080),),
)
DB1 = HostSpec("db1", "10.0.0.12", services=(ServiceSpec("db", 5432),))
INVENTORY = Inventory().with_host(WEB1).with_host(DB1)
NONE = HostOverrides()


def select(*targets: str, all_hosts: bool = False, o: HostOverrides = NONE) -> list[HostSpec]:
    return select_hosts(INVENTORY, list(targets), all_hosts, o, default_fail_mode="closed")


def brief(h: HostSpec) -> tuple[str, str, str, int, str]:
    return h.name, h.address, h.user, h.port, h.fail_mode


@pytest.mark.parametrize(
    ("targets", "overrides", "expected"),
    [
        (["web1"], NONE, [("web1", "10.0.0.11", "admin", 22, "open")]),
        (
            ["db1", "web1"],
            NONE,
            [
                ("db1", "10.0.0.12", "root", 22, "closed"),
                ("web1", "10.0.0.11", "admin", 22, "open"),
            ],
        ),
        (["10.0.0.99"], NONE, [("", "10.0.0.99", "root", 22, "closed")]),
        (["bob@10.0.0.99:2222"], NONE, [("", "10.0.0.99", "bob", 2222, "closed")]),
        (["10.0.0.99"], HostOverrides(name="new1"), [("new1", "10.0.0.99", "root", 22, "closed")]),
        (["10.0.0.11"], NONE, [("web1", "10.0.0.11", "admin", 22, "open")]),  # known address
        (["root@10.0.0.11:2200"], NONE, [("web1", "10.0.0.11", "root", 2200, "open")]),
        (
            ["10.0.0.12"],
            HostOverrides(fail_mode="open"),
            [("db1", "10.0.0.12", "root", 22, "open")],
        ),
    ],
)
def test_targets(
    targets: list[str], overrides: HostOverrides, expected: list[tuple[object, ...]]
) -> None:
    assert [brief(h) for h in select(*targets, o=overrides)] == expected


def test_all_hosts_of_the_inventory() -> None:
    assert select(all_hosts=True) == [DB1, WEB1]


def test_a_known_host_keeps_its_services_and_labels() -> None:
    (web1,) = select("10.0.0.11")
    assert web1.services == WEB1.services and web1.labels == WEB1.labels


def test_overrides_replace_services_merge_labels_set_fail_mode() -> None:
    o = HostOverrides(
        services=(ServiceSpec("api", 9000),),
        labels=(("zone", "b"), ("rack", "r1")),
        fail_mode="closed",
    )
    (web1,) = select("web1", o=o)
    assert web1.services == (ServiceSpec("api", 9000),)
    assert web1.labels == (("rack", "r1"), ("zone", "b"))
    assert web1.fail_mode == "closed"


def test_empty_services_override_removes_services() -> None:
    (web1,) = select("web1", o=HostOverrides(services=()))
    assert web1.services == ()


@pytest.mark.parametrize(
    ("inventory", "targets", "all_hosts", "overrides", "message"),
    [
        (Inventory(), [], True, NONE, "the inventory (hosts.toml) has no hosts"),
        (INVENTORY, ["web1"], True, NONE, "give hosts or --all, not both"),
        (
            INVENTORY,
            ["10.0.0.98", "10.0.0.99"],
            False,
            HostOverrides(name="x"),
            "--name names one host",
        ),
        (INVENTORY, [], True, HostOverrides(name="x"), "--name names one host"),
        (INVENTORY, [], False, NONE, "no hosts given"),
        (INVENTORY, ["10.0.0.99:ssh"], False, NONE, "is neither a host of hosts.toml nor"),
        (INVENTORY, ["bob@"], False, NONE, "is neither a host of hosts.toml nor"),
        (INVENTORY, ["root@web1.example.org"], False, NONE, "the mesh needs the host's IP"),
        (INVENTORY, ["web1", "10.0.0.11"], False, NONE, "10.0.0.11 given twice"),
        (
            INVENTORY,
            ["10.0.0.9"],
            False,
            HostOverrides(services=(ServiceSpec("a", 80), ServiceSpec("b", 80))),
            "10.0.0.9: services 'a' and 'b' both use port 80",
        ),
        (
            INVENTORY,
            ["10.0.0.11"],
            False,
            HostOverrides(name="web9"),
            "10.0.0.11 is already 'web1' in hosts.toml; a host cannot be renamed",
        ),
        (INVENTORY, ["web1"], False, HostOverrides(name="web9"), "a host cannot be renamed"),
        (INVENTORY, ["10.0.0.9"], False, HostOverrides(name='Bad"x'), "invalid host name"),
        (
            INVENTORY,
            [],
            True,
            HostOverrides(services=()),
            "--service and --label with --all would give every host the same ones",
        ),
    ],
)
def test_selection_errors(
    inventory: Inventory,
    targets: list[str],
    all_hosts: bool,
    overrides: HostOverrides,
    message: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        select_hosts(inventory, targets, all_hosts, overrides, "closed")
    assert message in caught.value.message


def test_empty_inventory_hint_says_how_to_join() -> None:
    with pytest.raises(ConfigError) as caught:
        select_hosts(Inventory(), [], True, NONE, "closed")
    assert caught.value.hint == "join one: meshctl join [USER@]HOST --service NAME:PORT"


@pytest.mark.parametrize(
    ("text", "label"),
    [("zone=a", ("zone", "a")), ("k=v=w", ("k", "v=w")), ("empty=", ("empty", ""))],
)
def test_parse_label(text: str, label: tuple[str, str]) -> None:
    assert parse_label(text) == label


@pytest.mark.parametrize("text", ["zone", "=a", "", "zone:a"])
def test_parse_label_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE") as caught:
        parse_label(text)
    assert caught.value.hint == "e.g. --label zone=a"


@pytest.mark.parametrize(
    ("text", "run_as"),
    [("api:8080", None), ("api:8080:www-data", "www-data"), ("api:8080:1001", "1001")],
)
def test_parse_service_run_as(text: str, run_as: str | None) -> None:
    assert parse_service(text).run_as == run_as


@pytest.mark.parametrize("text", ["api:8080:a b", 'api:8080:a"b', "api:8080:-x", "api:8080:"])
def test_parse_service_refuses_bad_users(text: str) -> None:
    """run_as ends up in iptables rules and TOML: anything but a user name is refused."""
    with pytest.raises(ConfigError, match="invalid user"):
        parse_service(text)


def test_overrides_from_the_command_line() -> None:
    parsed = HostOverrides.parse(["api:8081:www-data"], ["zone=a"], "open", "api1")
    assert parsed == HostOverrides(
        (ServiceSpec("api", 8081, "www-data"),), (("zone", "a"),), "open", "api1"
    )
    assert HostOverrides.parse(None, None, None).services is None  # keep the host's services
    with pytest.raises(ConfigError, match="--fail-mode 'shut': expected open or closed"):
        HostOverrides.parse(None, None, "shut")
