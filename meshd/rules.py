"""meshd's iptables rules: typed values rendered into iptables-restore documents.

Pure: the host's current ``iptables-save -t nat`` text goes in, documents come
out, one per address family (``iptables`` and ``ip6tables``: the same chains,
the same comment prefix). Everything lives in meshd-owned chains (``MESHD_*``)
reached by one jump each from OUTPUT and PREROUTING; each jump carries a
``meshd:`` comment so removal finds exactly ours and touches nothing else. A
document is applied in one ``iptables-restore --noflush`` (after ``--test``),
so a host never runs half a rule set.

Never redirected: meshd's own user (no loops; meshd's admin API and mesh
links are its sockets), replies of sshd (root) from the SSH ports the operator
uses (``--sport``: otherwise installing the first nat rule breaks the session
that installs it; root only, so that an app binding that source port is still
caught), connections to the SSH, admin and mesh ports (a registry endpoint on
one of them is left out, and the document says so in a note), loopback.
Virtual IPs are IPv4 only; endpoints are caught at every address the
registry lists.

``fallback_script`` renders the rules as last applied into a shell script that
needs neither meshd nor its config: closed fail mode runs it at boot when
``meshd rules apply`` fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from meshd.config import MeshdConfig
from meshd.registry import Registry

OUTPUT_CHAIN, REDIRECT_CHAIN, INBOUND_CHAIN = "MESHD_OUTPUT", "MESHD_REDIRECT", "MESHD_INBOUND"
CHAINS = (OUTPUT_CHAIN, REDIRECT_CHAIN, INBOUND_CHAIN)
COMMENT = "meshd"
JUMPS = (
    ("OUTPUT", OUTPUT_CHAIN, f"{COMMENT}:output"),
    ("PREROUTING", INBOUND_CHAIN, f"{COMMENT}:inbound"),
)
ROOT_UID = 0  # sshd's sockets: the only ones whose SSH source port is let through
NOTE = f"# {COMMENT} rules: "  # a line of a document that says what was left out


@dataclass(frozen=True)
class Family:
    """An address family as iptables sees it: its tools, loopback and host prefix."""

    version: int
    tool: str  # iptables | ip6tables (then -save, -restore)
    loopback: str
    host_bits: int

    def holds(self, address: str) -> bool:
        return (":" in address) == (self.version == 6)


V4 = Family(4, "iptables", "127.0.0.0/8", 32)
V6 = Family(6, "ip6tables", "::1/128", 128)
FAMILIES = (V4, V6)


@dataclass(frozen=True)
class ServiceRedirect:
    """A local service: its port (inbound) and, if it has one, its user's own outbound port."""

    port: int
    run_as: str | None = None
    outbound_port: int | None = None


@dataclass(frozen=True)
class RuleSet:
    """Everything the rules of one host depend on."""

    meshd_user: str
    outbound_port: int
    inbound_port: int
    mesh_port: int
    admin_port: int
    ssh_ports: tuple[int, ...]
    vip_range: str
    # (address, port) of other hosts' services, at every address (IPv4 and IPv6) they have
    remote_endpoints: tuple[tuple[str, int], ...]
    services: tuple[ServiceRedirect, ...]

    @property
    def kept_ports(self) -> tuple[int, ...]:
        """Destination ports never caught: the operator's SSH and meshd's own."""
        return tuple(sorted({*self.ssh_ports, self.admin_port, self.mesh_port}))

    def why_kept(self, port: int) -> str | None:
        """Why connections to ``port`` are never caught (None: they may be)."""
        if port in self.ssh_ports:
            return "an SSH port of this host"
        if port == self.admin_port:
            return "meshd's admin port on this host"
        return "meshd's mesh port on this host" if port == self.mesh_port else None


def ruleset(config: MeshdConfig, registry: Registry) -> RuleSet:
    """This host's rules: its services inbound, every other host's endpoints outbound."""
    me = config.identity.host
    remote = tuple(
        (address, e.port)
        for s in registry.services
        for e in s.endpoints
        if e.host != me
        for address in e.addresses
    )
    services = tuple(
        ServiceRedirect(s.port, s.run_as, s.outbound[1] if s.outbound else None)
        for s in config.services
    )
    listen, interception = config.listen, config.interception
    return RuleSet(
        meshd_user=interception.meshd_user,
        outbound_port=listen.outbound[1],
        inbound_port=listen.inbound[1],
        mesh_port=listen.mesh[1],
        admin_port=listen.admin[1],
        ssh_ports=interception.ssh_ports,
        vip_range=interception.vip_range,
        remote_endpoints=remote,
        services=services,
    )


def _shown(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _endpoints(rules: RuleSet, family: Family) -> tuple[list[tuple[str, int]], list[str]]:
    """The family's endpoints that are caught, and notes on those left out."""
    caught, notes = [], []
    for address, port in sorted(set(rules.remote_endpoints)):
        why = rules.why_kept(port)
        if not family.holds(address):
            continue
        if why is None:
            caught.append((address, port))
        else:
            notes.append(f"{NOTE}left out endpoint {_shown(address, port)}: {why}")
    return caught, notes


def _jump(chain: str, target: str, comment: str, op: str = "-A") -> str:
    return f'{op} {chain} -p tcp -m comment --comment "{comment}" -j {target}'


def _output(rules: RuleSet, family: Family) -> list[str]:
    out = [f"-A {OUTPUT_CHAIN} -m owner --uid-owner {rules.meshd_user} -j RETURN"]
    out += [
        f"-A {OUTPUT_CHAIN} -p tcp --sport {p} -m owner --uid-owner {ROOT_UID} -j RETURN"
        for p in rules.ssh_ports
    ]
    out.append(f"-A {OUTPUT_CHAIN} -d {family.loopback} -j RETURN")
    out += [f"-A {OUTPUT_CHAIN} -p tcp --dport {p} -j RETURN" for p in rules.kept_ports]
    if family.holds(rules.vip_range.split("/")[0]):
        out.append(f"-A {OUTPUT_CHAIN} -p tcp -d {rules.vip_range} -j {REDIRECT_CHAIN}")
    out += [
        f"-A {OUTPUT_CHAIN} -p tcp -d {address}/{family.host_bits} --dport {port} "
        f"-j {REDIRECT_CHAIN}"
        for address, port in _endpoints(rules, family)[0]
    ]
    out += [
        f"-A {REDIRECT_CHAIN} -p tcp -m owner --uid-owner {s.run_as} "
        f"-j REDIRECT --to-ports {s.outbound_port}"
        for s in rules.services
        if s.run_as and s.outbound_port
    ]
    out.append(f"-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {rules.outbound_port}")
    return out


def _inbound(rules: RuleSet) -> list[str]:
    out = [f"-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN" for p in rules.kept_ports]
    to_meshd = f"-j REDIRECT --to-ports {rules.inbound_port}"
    out += [
        f"-A {INBOUND_CHAIN} -p tcp --dport {s.port} {to_meshd}"
        for s in sorted(rules.services, key=lambda s: s.port)
    ]
    return out


def our_jumps(saved: str) -> list[str]:
    """The jump rules of ours present in an ``iptables-save -t nat`` text, as saved."""
    return [
        line
        for line in saved.splitlines()
        if line.startswith("-A ") and f'--comment "{COMMENT}:' in line
    ]


def our_chains(saved: str) -> list[str]:
    return [c for c in CHAINS if f":{c} " in saved]


def apply_document(rules: RuleSet, saved: str, family: Family = V4) -> str:
    """Replace whatever of ours is installed with ``rules``, in one restore.

    ``saved``: the family's nat table now. Declaring a chain flushes it under
    ``--noflush``; jumps are added only where missing, so applying twice
    changes nothing.
    """
    lines = [*_endpoints(rules, family)[1], "*nat", *(f":{c} - [0:0]" for c in CHAINS)]
    present = {line.replace('"', "") for line in our_jumps(saved)}
    for chain, target, comment in JUMPS:
        wanted = _jump(chain, target, comment)
        if wanted.replace('"', "") not in present:
            lines.append(wanted)
    return "\n".join([*lines, *_output(rules, family), *_inbound(rules), "COMMIT", ""])


def notes(text: str) -> list[str]:
    """What a document says it left out, one line each (without the comment sign)."""
    return [line[2:] for line in text.splitlines() if line.startswith(NOTE)]


def fingerprint(rules: RuleSet) -> str:
    """A digest of the rule set, both families (not of the host's tables): what ``rules apply``
    records."""
    documents = "".join(apply_document(rules, "", family) for family in FAMILIES)
    return hashlib.sha256(documents.encode()).hexdigest()


def remove_document(saved: str) -> str | None:
    """Delete our jumps and chains (either family); None when nothing of ours is installed."""
    jumps, chains = our_jumps(saved), our_chains(saved)
    if not jumps and not chains:
        return None
    lines = ["*nat", *(f"-D{line[2:]}" for line in jumps)]
    lines += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
    return "\n".join([*lines, "COMMIT", ""])


FALLBACK_END = "MESHD_RULES_END"


def fallback_script(rules: RuleSet, marker: str) -> str:
    """A shell script that puts ``rules`` into empty nat tables (at boot) without meshd.

    It touches ``marker`` first, so that ``meshctl status`` can tell that the
    fallback is what holds the host closed, and fails if any part fails.
    """
    lines = [
        "#!/bin/sh",
        "# Written by `meshd rules apply` with the rules it applied. meshd-rules.service runs",
        "# it at boot when `meshd rules apply` fails (closed fail mode): the last rule set that",
        "# went in goes in again without meshd or its config, so intercepted connections fail",
        "# (or reach a running meshd) and nothing leaves in plaintext.",
        f"touch {marker}",
        "status=0",
    ]
    for family in FAMILIES:
        restore = f"{family.tool}-restore -w 5 --noflush <<'{FALLBACK_END}' || status=1"
        document = [restore, apply_document(rules, "", family).rstrip("\n"), FALLBACK_END]
        if family is V6:  # a kernel without IPv6 has no IPv6 to leak
            document = ["if [ -e /proc/net/if_inet6 ]; then", *document, "fi"]
        lines += document
    lines += [f"ip route replace {rules.vip_range} dev lo || status=1", "exit $status", ""]
    return "\n".join(lines)
