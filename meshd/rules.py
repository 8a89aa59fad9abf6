"""meshd's iptables rules: typed values rendered into iptables-restore documents.

Pure: the host's current ``iptables-save -t nat`` text goes in, documents come
out. Everything lives in meshd-owned chains (``MESHD_*``) reached by one
jump each from OUTPUT and PREROUTING; each jump carries a ``meshd:`` comment
so removal finds exactly ours and touches nothing else. A document is applied
in one ``iptables-restore --noflush`` (after ``--test``), so a host never
runs half a rule set.

Never redirected: meshd's own user (no loops), replies from the SSH port the
operator uses (``--sport``: otherwise installing the first nat rule breaks
the session that installs it), the admin and mesh ports, loopback.
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
    remote_endpoints: tuple[tuple[str, int], ...]  # (address, port) of other hosts' services
    services: tuple[ServiceRedirect, ...]


def ruleset(config: MeshdConfig, registry: Registry) -> RuleSet:
    """This host's rules: its services inbound, every other host's endpoints outbound."""
    me = config.identity.host
    remote = tuple(
        (e.address, e.port) for s in registry.services for e in s.endpoints if e.host != me
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


def _jump(chain: str, target: str, comment: str, op: str = "-A") -> str:
    return f'{op} {chain} -p tcp -m comment --comment "{comment}" -j {target}'


def _output(rules: RuleSet) -> list[str]:
    out = [f"-A {OUTPUT_CHAIN} -m owner --uid-owner {rules.meshd_user} -j RETURN"]
    out += [f"-A {OUTPUT_CHAIN} -p tcp --sport {p} -j RETURN" for p in rules.ssh_ports]
    out.append(f"-A {OUTPUT_CHAIN} -p tcp --sport {rules.admin_port} -j RETURN")
    out.append(f"-A {OUTPUT_CHAIN} -d 127.0.0.0/8 -j RETURN")
    out.append(f"-A {OUTPUT_CHAIN} -p tcp -d {rules.vip_range} -j {REDIRECT_CHAIN}")
    out += [
        f"-A {OUTPUT_CHAIN} -p tcp -d {address}/32 --dport {port} -j {REDIRECT_CHAIN}"
        for address, port in sorted(set(rules.remote_endpoints))
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
    keep = sorted({*rules.ssh_ports, rules.mesh_port, rules.admin_port})
    out = [f"-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN" for p in keep]
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


def apply_document(rules: RuleSet, saved: str) -> str:
    """Replace whatever of ours is installed with ``rules``, in one restore.

    Declaring a chain flushes it under ``--noflush``; jumps are added only
    where missing, so applying twice changes nothing.
    """
    lines = ["*nat", *(f":{c} - [0:0]" for c in CHAINS)]
    present = {line.replace('"', "") for line in our_jumps(saved)}
    for chain, target, comment in JUMPS:
        wanted = _jump(chain, target, comment)
        if wanted.replace('"', "") not in present:
            lines.append(wanted)
    return "\n".join([*lines, *_output(rules), *_inbound(rules), "COMMIT", ""])


def fingerprint(rules: RuleSet) -> str:
    """A digest of the rule set (not of the host's table): what ``rules apply`` records."""
    return hashlib.sha256(apply_document(rules, saved="").encode()).hexdigest()


def remove_document(saved: str) -> str | None:
    """Delete our jumps and chains; None when nothing of ours is installed."""
    jumps, chains = our_jumps(saved), our_chains(saved)
    if not jumps and not chains:
        return None
    lines = ["*nat", *(f"-D{line[2:]}" for line in jumps)]
    lines += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
    return "\n".join([*lines, "COMMIT", ""])
