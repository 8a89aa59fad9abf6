"""Table-driven tests of the testbed's pure helpers (no root needed)."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest

from meshctl.testbed import plan
from meshctl.testbed.plan import HostSpec, TestbedSpec

NET = ipaddress.IPv4Network


@pytest.mark.parametrize("seed", range(20))
def test_choose_prefix_is_short_valid_and_free(seed: int) -> None:
    taken = {plan.choose_prefix(random.Random(seed))}
    prefix = plan.choose_prefix(random.Random(seed), taken)
    assert prefix not in taken
    assert plan.valid_prefix(prefix)
    assert len(plan.bridge_name(prefix)) <= plan.MAX_IFNAME
    assert len(f"vb-{prefix}-h99") <= plan.MAX_IFNAME


@pytest.mark.parametrize(
    ("prefix", "ok"),
    [
        ("mt3f9a", True),
        ("ab", True),
        ("MT3F9A", False),
        ("mt-3f", False),
        ("a", False),
        ("toolongprefix", False),
        ("abcdef", True),
        ("abcdefg", False),
        ("3abc", False),
        ("mt3f9a;rm", False),
    ],
)
def test_valid_prefix(prefix: str, ok: bool) -> None:
    assert plan.valid_prefix(prefix) is ok


@pytest.mark.parametrize(
    "used",
    [
        [],
        [NET("10.200.0.0/16")],
        [NET(f"10.{x}.0.0/16") for x in range(200, 254)],
        [NET("0.0.0.0/32"), NET("127.0.0.0/8"), NET("10.231.5.7/32")],
    ],
)
def test_choose_subnet_avoids_used_networks(used: list[ipaddress.IPv4Network]) -> None:
    rng = random.Random(7)
    for _ in range(50):
        net = plan.choose_subnet(rng, used)
        assert net.prefixlen == 24
        assert net.subnet_of(NET("10.0.0.0/8"))
        assert 200 <= net.network_address.packed[1] <= 254
        assert not any(net.overlaps(u) for u in used)


def test_choose_subnet_fails_when_pool_is_full() -> None:
    with pytest.raises(RuntimeError, match="no free"):
        plan.choose_subnet(random.Random(1), [NET("10.0.0.0/8")])


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, [HostSpec(1, "mt01-h1", "10.213.47.11", "fd6d:6573:d52f::11")]),
        (
            3,
            [
                HostSpec(i, f"mt01-h{i}", f"10.213.47.{10 + i}", f"fd6d:6573:d52f::{10 + i}")
                for i in (1, 2, 3)
            ],
        ),
    ],
)
def test_host_specs(count: int, expected: list[HostSpec]) -> None:
    assert list(plan.host_specs("mt01", NET("10.213.47.0/24"), count)) == expected


@pytest.mark.parametrize("count", [0, -1, 201])
def test_host_specs_rejects_bad_counts(count: int) -> None:
    with pytest.raises(ValueError, match="host count"):
        plan.host_specs("mt01", NET("10.213.47.0/24"), count)


def test_gateway_is_dot_one() -> None:
    assert plan.gateway_address(NET("10.213.47.0/24")) == "10.213.47.1"
    assert plan.gateway_address(plan.ipv6_subnet(NET("10.213.47.0/24"))) == "fd6d:6573:d52f::1"


def test_the_ipv6_subnet_follows_the_ipv4_one() -> None:
    """Unique local, a /64, and as unique as the /24 (which no two testbeds share)."""
    seen = {plan.ipv6_subnet(NET(f"10.{a}.{b}.0/24")) for a in (200, 254) for b in (0, 1, 255)}
    assert len(seen) == 6 and all(n.prefixlen == 64 and n.is_private for n in seen)
    assert str(plan.ipv6_subnet(NET("10.200.1.0/24"))) == "fd6d:6573:c801::/64"


def test_render_network_file_is_static_without_gateway() -> None:
    text = plan.render_network_file("10.213.47.11", 24)
    assert text == (
        "[Match]\nName=host0\n\n[Network]\nAddress=10.213.47.11/24\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    assert "Gateway" not in text and "DHCP" not in text
    with6 = plan.render_network_file("10.213.47.11", 24, "fd6d:6573:d52f::11")
    assert with6 == text + (
        "\n[Address]\nAddress=fd6d:6573:d52f::11/64\nDuplicateAddressDetection=none\n"
    )


def test_render_hosts_file_names_every_host() -> None:
    hosts = plan.host_specs("mt01", NET("10.1.2.0/24"), 3)
    text = plan.render_hosts_file(hosts[1], hosts)
    assert "127.0.1.1\tmt01-h2\n" in text
    assert "10.1.2.11\tmt01-h1\n" in text and "10.1.2.13\tmt01-h3\n" in text
    assert "10.1.2.12" not in text
    assert text.startswith("127.0.0.1\tlocalhost\n")


def test_spec_json_round_trip() -> None:
    spec = TestbedSpec(
        prefix="mt01",
        subnet="10.1.2.0/24",
        bridge="mt01-br",
        hosts=plan.host_specs("mt01", NET("10.1.2.0/24"), 2),
        owner_pid=123,
        owner_start=456,
        persistent=True,
        subnet6="fd6d:6573:102::/64",
    )
    assert TestbedSpec.from_json(spec.to_json()) == spec


FORWARD_ACCEPT = "-P FORWARD ACCEPT\n"
FORWARD_DROP = (
    "-P FORWARD DROP\n"
    '-A FORWARD -i mt01-br -o mt01-br -m comment --comment "meshctl-testbed:mt01" -j ACCEPT\n'
    '-A FORWARD -i mt02-br -o mt02-br -m comment --comment "meshctl-testbed:mt02" -j ACCEPT\n'
    '-A FORWARD -i docker0 -m comment --comment "meshctl-testbed:mt01 lookalike" -j ACCEPT\n'
    "-A FORWARD -j DOCKER-USER\n"
)


@pytest.mark.parametrize(
    ("text", "drops"),
    [(FORWARD_ACCEPT, False), (FORWARD_DROP, True), ("", False), ("-P INPUT DROP\n", False)],
)
def test_forward_policy_drops(text: str, drops: bool) -> None:
    assert plan.forward_policy_drops(text) is drops


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("mt01", [["-D", "FORWARD", *plan.forward_rule("mt01-br", "mt01")]]),
        ("mt02", [["-D", "FORWARD", *plan.forward_rule("mt02-br", "mt02")]]),
        ("mt03", []),
    ],
)
def test_rules_to_delete_only_touches_our_prefix(prefix: str, expected: list[list[str]]) -> None:
    assert plan.rules_to_delete(FORWARD_DROP, prefix) == expected


SOURCES_DEB822 = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""
SOURCES_DISABLED = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
Enabled: no
"""
SOURCES_LIST = """\
# comment
deb [arch=amd64 signed-by=/x.gpg] https://packages.cloud.google.com/apt cloud-sdk main
deb-src http://src.example/debian bookworm main
deb http://ftp.fr.debian.org/debian/ bookworm main contrib
"""


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ([("debian.sources", SOURCES_DEB822)], "http://deb.debian.org/debian"),
        ([("sources.list", SOURCES_LIST)], "http://ftp.fr.debian.org/debian"),
        (
            [("a.sources", SOURCES_DISABLED), ("debian.sources", SOURCES_DEB822)],
            "http://deb.debian.org/debian",
        ),
        ([("x.list", "deb http://deb.debian.org/debian bullseye main\n")], None),
        ([("x.list", "deb http://deb.debian.org/debian-security bookworm-security main")], None),
        ([], None),
    ],
)
def test_parse_apt_mirror(sources: list[tuple[str, str]], expected: str | None) -> None:
    assert plan.parse_apt_mirror(sources, "bookworm") == expected


STAT = "4242 (sh (weird) name) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 987654 0 0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (STAT, ("S", 987654)),
        (STAT.replace(") S ", ") Z "), ("Z", 987654)),
    ],
)
def test_parse_stat(text: str, expected: tuple[str, int]) -> None:
    assert plan.parse_stat(text) == expected


@pytest.mark.parametrize(
    ("status", "nspid", "is_init"),
    [
        ("Name:\tsystemd\nNSpid:\t13506\t1\n", [13506, 1], True),
        ("Name:\tsshd\nNSpid:\t13600\t57\n", [13600, 57], False),
        ("Name:\tinit\nNSpid:\t1\n", [1], False),
        ("Name:\tx\n", [], False),
    ],
)
def test_parse_nspid(status: str, nspid: list[int], is_init: bool) -> None:
    assert plan.parse_nspid(status) == nspid
    assert plan.is_container_init(nspid) is is_init


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("9:name=systemd:/mt01-h1/payload/system.slice\n0::/\n", True),
        ("0::/mt01-h2\n", True),
        ("4:memory:/process_api/0bc12\n0::/\n", False),
        ("0::/mt011-h1\n", False),
        ("0::/user.slice/mt01\n", False),
    ],
)
def test_cgroup_mentions(text: str, hit: bool) -> None:
    assert plan.cgroup_mentions(text, "mt01") is hit


def test_mountinfo_hits_finds_overlay_by_its_options() -> None:
    info = (
        "22 1 254:1 / / rw - ext4 /dev/vda rw\n"
        "801 800 0:91 / / rw - overlay overlay "
        "rw,lowerdir=/img,upperdir=/run/meshctl-testbed/mt01/h1/upper,workdir=/w\n"
        "802 801 0:92 / /run/systemd rw - tmpfs tmpfs rw\n"
    )
    assert plan.mountinfo_hits(info, "/run/meshctl-testbed/mt01") == ["/"]
    assert plan.mountinfo_hits(info, "/run/meshctl-testbed/mt02") == []


def test_route_networks() -> None:
    text = (
        "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\n"
        "default via 10.0.2.2 dev eth0\n10.231.0.0/16 dev wg0 scope link\n"
    )
    nets = plan.route_networks(text)
    assert NET("10.0.2.0/24") in nets and NET("10.231.0.0/16") in nets
    assert NET("10.0.2.2/32") in nets


def test_a_spec_from_before_ipv6_still_reads() -> None:
    """testbed.json of a run that crashed under an older version: cleanup must still parse it."""
    old = json.loads(
        TestbedSpec(
            "mt01",
            "10.1.2.0/24",
            "mt01-br",
            plan.host_specs("mt01", NET("10.1.2.0/24"), 1),
            1,
            2,
            False,
        ).to_json()
    )
    del old["subnet6"], old["hosts"][0]["address6"]
    spec = TestbedSpec.from_json(json.dumps(old))
    assert spec.subnet6 == "" and spec.hosts[0].address6 == ""
