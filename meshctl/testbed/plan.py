"""Pure helpers of the testbed: names, addresses, rendered files, parsers.

Nothing here touches the machine: every function takes what it needs (file
contents, a random generator, a list of networks in use) as arguments, so it
can be tested without root.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

BRIDGE_SUFFIX = "-br"
RULE_COMMENT_PREFIX = "meshctl-testbed:"
FIRST_HOST_OCTET = 10
MAX_IFNAME = 15
ULA_PREFIX = "fd6d:6573"  # "me", "s": the testbeds' unique local IPv6 addresses


@dataclass(frozen=True)
class HostSpec:
    """What identifies one test host: its number, name and address."""

    index: int
    name: str
    address: str
    address6: str = ""  # "" in the state of a testbed made before hosts had IPv6


@dataclass(frozen=True)
class TestbedSpec:
    """What `testbed.json` holds about one testbed."""

    __test__ = False  # not a pytest test class, despite the name

    prefix: str
    subnet: str
    bridge: str
    hosts: tuple[HostSpec, ...]
    owner_pid: int
    owner_start: int
    persistent: bool
    subnet6: str = ""  # the IPv6 /64 beside the IPv4 /24

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TestbedSpec:
        raw = json.loads(text)
        hosts = tuple(HostSpec(**h) for h in raw.pop("hosts"))
        return cls(hosts=hosts, **raw)


def choose_prefix(rng: random.Random, taken: Iterable[str] = ()) -> str:
    """A short random prefix (``mt`` + 4 hex digits) not among `taken`."""
    used = set(taken)
    for _ in range(1000):
        prefix = f"mt{rng.getrandbits(16):04x}"
        if prefix not in used:
            return prefix
    raise RuntimeError("no free testbed prefix")


def valid_prefix(prefix: str) -> bool:
    """A prefix safe in paths and shells, short enough for ``vb-PREFIX-h200`` (15 chars)."""
    return re.fullmatch(r"[a-z][a-z0-9]{1,5}", prefix) is not None


def choose_subnet(
    rng: random.Random,
    used: Iterable[ipaddress.IPv4Network],
    pool_first_octet: tuple[int, int] = (200, 254),
) -> ipaddress.IPv4Network:
    """A random 10.X.Y.0/24 (X in the pool's range) overlapping nothing in `used`."""
    taken = list(used)
    low, high = pool_first_octet
    for _ in range(10000):
        net = ipaddress.IPv4Network(f"10.{rng.randint(low, high)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in taken):
            return net
    raise RuntimeError("no free /24 under 10.200.0.0-10.254.255.0")


def ipv6_subnet(subnet: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The /64 beside 10.A.B.0/24: ``fd6d:6573:AABB::/64`` (A and B in hex), as unique as it."""
    _, a, b, _ = subnet.network_address.packed
    return ipaddress.IPv6Network(f"{ULA_PREFIX}:{a:02x}{b:02x}::/64")


def host_specs(prefix: str, subnet: ipaddress.IPv4Network, count: int) -> tuple[HostSpec, ...]:
    """Host i (1-based) is ``PREFIX-hI`` at ``.(10+i)`` of the subnet, ``::(10+i)`` of its /64.

    (The IPv6 host part reads as the IPv4 one: ``::11`` beside ``.11``.)
    """
    if not 1 <= count <= 200:
        raise ValueError(f"host count must be between 1 and 200, not {count}")
    base, base6 = subnet.network_address, ipv6_subnet(subnet).network_address
    return tuple(
        HostSpec(
            index=i,
            name=f"{prefix}-h{i}",
            address=str(base + FIRST_HOST_OCTET + i),
            address6=str(ipaddress.IPv6Address(f"{base6}{FIRST_HOST_OCTET + i}")),
        )
        for i in range(1, count + 1)
    )


def bridge_name(prefix: str) -> str:
    return prefix + BRIDGE_SUFFIX


def gateway_address(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The controller's (bridge's) address: ``.1`` (``::1``)."""
    return str(subnet.network_address + 1)


def render_network_file(address: str, prefixlen: int, address6: str = "") -> str:
    """systemd-networkd config for the host's ``host0`` veth: static, no gateway.

    The IPv6 address skips duplicate address detection: the testbed hands out
    unique addresses, and a tentative address cannot be used for a second or so.
    """
    ipv6 = f"\n[Address]\nAddress={address6}/64\nDuplicateAddressDetection=none\n"
    return (
        "[Match]\n"
        "Name=host0\n"
        "\n"
        "[Network]\n"
        f"Address={address}/{prefixlen}\n"
        "LinkLocalAddressing=no\n"
        "IPv6AcceptRA=no\n"
    ) + (ipv6 if address6 else "")


def render_hosts_file(me: HostSpec, hosts: Sequence[HostSpec]) -> str:
    """``/etc/hosts`` naming every host of the testbed, so hosts can use names."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append(f"127.0.1.1\t{me.name}")
    lines += [f"{h.address}\t{h.name}" for h in hosts if h != me]
    return "\n".join(lines) + "\n"


def rule_comment(prefix: str) -> str:
    return RULE_COMMENT_PREFIX + prefix


def forward_rule(bridge: str, prefix: str) -> list[str]:
    """The FORWARD rule (without -I/-A) that lets bridged hosts reach each other."""
    comment = rule_comment(prefix)
    return ["-i", bridge, "-o", bridge, "-m", "comment", "--comment", comment, "-j", "ACCEPT"]


def forward_policy_drops(iptables_s: str) -> bool:
    """Whether `iptables -S FORWARD` output shows a DROP (or REJECT-like) policy."""
    for line in iptables_s.splitlines():
        parts = line.split()
        if parts[:2] == ["-P", "FORWARD"]:
            return parts[2:3] == ["DROP"]
    return False


def rules_to_delete(iptables_s: str, prefix: str) -> list[list[str]]:
    """The `-D CHAIN ...` argument lists removing every rule commented with our prefix."""
    comment = rule_comment(prefix)
    out: list[list[str]] = []
    for line in iptables_s.splitlines():
        args = shlex.split(line)
        if args[:1] == ["-A"] and _has_comment(args, comment):
            out.append(["-D", *args[1:]])
    return out


def _has_comment(args: list[str], comment: str) -> bool:
    return any(a == "--comment" and b == comment for a, b in itertools.pairwise(args))


def parse_apt_mirror(sources: Iterable[tuple[str, str]], suite: str = "bookworm") -> str | None:
    """The Debian mirror URI whose suites include `suite`, from (filename, content) pairs.

    Handles one-line ``.list`` files and deb822 ``.sources`` files; skips
    disabled entries and non-Debian archives (security, third parties).
    """
    for name, text in sources:
        entries = _deb822_entries(text) if name.endswith(".sources") else _list_entries(text)
        for uris, suites in entries:
            for uri in uris:
                if suite in suites and _is_debian_archive(uri):
                    return uri.rstrip("/")
    return None


def _is_debian_archive(uri: str) -> bool:
    return uri.startswith(("http://", "https://")) and re.search(r"/debian/?$", uri) is not None


def _list_entries(text: str) -> list[tuple[list[str], list[str]]]:
    entries = []
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            entries.append(([words[1]], [words[2]]))
    return entries


def _deb822_entries(text: str) -> list[tuple[list[str], list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = _deb822_fields(stanza)
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split():
            entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    return entries


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key is not None:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def parse_stat(stat: str) -> tuple[str, int]:
    """(state, start time in clock ticks) from the text of ``/proc/PID/stat``."""
    rest = stat[stat.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def parse_nspid(status: str) -> list[int]:
    """The ``NSpid:`` line of ``/proc/PID/status``: the pid in each nested pid namespace."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def is_container_init(nspid: Sequence[int]) -> bool:
    """PID 1 of a nested pid namespace (a host's systemd), not the machine's own init."""
    return len(nspid) > 1 and nspid[-1] == 1


def cgroup_mentions(cgroup_text: str, prefix: str) -> bool:
    """Whether a ``/proc/PID/cgroup`` text places the process under a ``PREFIX-*`` cgroup."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        if any(part.startswith(f"{prefix}-") for part in path.split("/")):
            return True
    return False


def mountinfo_hits(mountinfo: str, needle: str) -> list[str]:
    """Mount points of ``/proc/PID/mountinfo`` lines that mention `needle` anywhere.

    The overlay's options name its upper dir, so a host's root shows up even
    from inside the host, where its mount point is just ``/``.
    """
    return [line.split()[4] for line in mountinfo.splitlines() if needle in line]


def route_networks(ip_output: str) -> list[ipaddress.IPv4Network]:
    """IPv4 networks named in `ip -o -4 addr` / `ip -4 route` output."""
    nets = []
    for token in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", ip_output):
        try:
            nets.append(ipaddress.IPv4Network(token, strict=False))
        except ValueError:
            continue
    return nets
