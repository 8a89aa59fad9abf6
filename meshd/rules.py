"""meshd's iptables rules: typed values rendered into iptables-restore documents.

Pure: the host's current ``iptables-save`` text (its nat and filter tables) goes
in, documents come out, one per address family (``iptables`` and
``ip6tables``: the same chains, the same comment prefix). Everything lives in
meshd-owned chains (``MESHD_*``) reached by one jump each from two built-in
chains; each jump carries a ``meshd:`` comment so removal finds exactly ours
and touches nothing else. A document is applied in one ``iptables-restore
--noflush`` (after ``--test``), so a host never runs half a rule set.

What a family's rules catch is either redirected to meshd (nat table) or,
where meshd will not take it, rejected with a TCP reset (filter table, our
jumps first in INPUT and OUTPUT, original direction only, as nat sees only a
connection's first packet): IPv6 where meshd does not serve it (``[listen]
ipv6 = false``), and everything in closed fail mode's boot fallback, when
meshd is down. A redirect to a port meshd does not hold would hand the
plaintext to whoever binds it (meshd's ports are >= 1024: any local user).

Never caught: meshd's own user (no loops; meshd's admin API and mesh links
are its sockets), replies of sshd (root) from the SSH ports the operator uses
(``--sport``: otherwise installing the first nat rule breaks the session that
installs it; root only, so that an app binding that source port is still
caught), connections to the SSH, admin and mesh ports (a registry endpoint on
one of them is left out, and the document says so in a note), loopback.
Virtual IPs are IPv4 only; endpoints are caught at every address the
registry lists.

``fallback_script`` renders the rejecting rules into a shell script that
needs neither meshd nor its config: closed fail mode runs it at boot when
``meshd rules apply`` fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from meshd.config import MeshdConfig
from meshd.registry import Registry

OUTPUT_CHAIN, INBOUND_CHAIN = "MESHD_OUTPUT", "MESHD_INBOUND"
REDIRECT_CHAIN, REJECT_CHAIN = "MESHD_REDIRECT", "MESHD_REJECT"
COMMENT = "meshd"
ROOT_UID = 0  # sshd's sockets: the only ones whose SSH source port is let through
REDIRECT, REJECT = "redirect", "reject"  # what a family's rules do with what they catch
NOTE = f"# {COMMENT} rules: "  # a line of a document that says what was left out


@dataclass(frozen=True)
class Table:
    """One iptables table as we use it: our chains and the built-in chains that jump to them."""

    name: str
    chains: tuple[str, ...]
    jumps: tuple[tuple[str, str, str], ...]  # (built-in chain, our chain, comment)
    first: bool  # our jumps go first: a reject must come before others' ACCEPT rules
    match: str  # what the jumps match besides TCP


NAT = Table(
    "nat",
    (OUTPUT_CHAIN, REDIRECT_CHAIN, INBOUND_CHAIN),
    (
        ("OUTPUT", OUTPUT_CHAIN, f"{COMMENT}:output"),
        ("PREROUTING", INBOUND_CHAIN, f"{COMMENT}:inbound"),
    ),
    first=False,
    match="",
)
FILTER = Table(
    "filter",
    (OUTPUT_CHAIN, REJECT_CHAIN, INBOUND_CHAIN),
    (
        ("OUTPUT", OUTPUT_CHAIN, f"{COMMENT}:output"),
        ("INPUT", INBOUND_CHAIN, f"{COMMENT}:inbound"),
    ),
    first=True,
    match="-m conntrack --ctdir ORIGINAL",  # not the replies of what was let through
)
TABLES = (NAT, FILTER)
ACTION_TABLE = {REDIRECT: NAT, REJECT: FILTER}


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
    ipv6_served: bool = True  # meshd binds its IPv6 twins ([listen] ipv6)

    def action(self, family: Family) -> str:
        """REDIRECT where meshd takes what the family's rules catch, REJECT where it does not."""
        return REJECT if family is V6 and not self.ipv6_served else REDIRECT

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
        ipv6_served=listen.ipv6,
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


def _output(rules: RuleSet, family: Family, target: str) -> list[str]:
    out = [f"-A {OUTPUT_CHAIN} -m owner --uid-owner {rules.meshd_user} -j RETURN"]
    out += [
        f"-A {OUTPUT_CHAIN} -p tcp --sport {p} -m owner --uid-owner {ROOT_UID} -j RETURN"
        for p in rules.ssh_ports
    ]
    out.append(f"-A {OUTPUT_CHAIN} -d {family.loopback} -j RETURN")
    out += [f"-A {OUTPUT_CHAIN} -p tcp --dport {p} -j RETURN" for p in rules.kept_ports]
    if family.holds(rules.vip_range.split("/")[0]):
        out.append(f"-A {OUTPUT_CHAIN} -p tcp -d {rules.vip_range} -j {target}")
    out += [
        f"-A {OUTPUT_CHAIN} -p tcp -d {address}/{family.host_bits} --dport {port} -j {target}"
        for address, port in _endpoints(rules, family)[0]
    ]
    return out


def _inbound(rules: RuleSet, action: str) -> list[str]:
    out = [f"-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN" for p in rules.kept_ports]
    out += [
        f"-A {INBOUND_CHAIN} -p tcp --dport {s.port} {action}"
        for s in sorted(rules.services, key=lambda s: s.port)
    ]
    return out


def _redirects(rules: RuleSet, family: Family) -> list[str]:
    """The nat table's rules: what is caught goes to meshd's listeners."""
    out = _output(rules, family, REDIRECT_CHAIN)
    out += [
        f"-A {REDIRECT_CHAIN} -p tcp -m owner --uid-owner {s.run_as} "
        f"-j REDIRECT --to-ports {s.outbound_port}"
        for s in rules.services
        if s.run_as and s.outbound_port
    ]
    out.append(f"-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {rules.outbound_port}")
    return out + _inbound(rules, f"-j REDIRECT --to-ports {rules.inbound_port}")


def _rejects(rules: RuleSet, family: Family) -> list[str]:
    """The filter table's rules: what is caught is refused with a TCP reset."""
    out = _output(rules, family, REJECT_CHAIN)
    out.append(f"-A {REJECT_CHAIN} -p tcp -j REJECT --reject-with tcp-reset")
    # INPUT sees this host's own connections too (over lo); nat's PREROUTING never did
    out.append(f"-A {INBOUND_CHAIN} -i lo -j RETURN")
    return out + _inbound(rules, f"-j {REJECT_CHAIN}")


def _jump(table: Table, chain: str, target: str, comment: str, op: str = "-A") -> str:
    match = f"{table.match} " if table.match else ""
    return f'{op} {chain} -p tcp {match}-m comment --comment "{comment}" -j {target}'


def table_of(saved: str, name: str) -> str:
    """The rules of table ``name`` in an ``iptables-save`` text ("" when it has none)."""
    lines: list[str] = []
    inside = False
    for line in saved.splitlines():
        if line.startswith("*"):
            inside = line[1:].strip() == name
        elif line.strip() == "COMMIT":
            inside = False
        elif inside:
            lines.append(line)
    return "\n".join(lines)


def our_jumps(saved: str, table: Table | None = None) -> list[str]:
    """The jump rules of ours in an ``iptables-save`` text (of one table, or all), as saved."""
    texts = [table_of(saved, t.name) for t in ([table] if table else TABLES)]
    return [
        line
        for text in texts
        for line in text.splitlines()
        if line.startswith("-A ") and f'--comment "{COMMENT}:' in line
    ]


def our_chains(saved: str, table: Table) -> list[str]:
    text = table_of(saved, table.name)
    return [c for c in table.chains if f"\n:{c} " in f"\n{text}"]


def _removal(table: Table, saved: str) -> list[str]:
    """Lines that take our jumps and chains out of ``table`` ([] when none are there)."""
    jumps, chains = our_jumps(saved, table), our_chains(saved, table)
    if not jumps and not chains:
        return []
    lines = [f"*{table.name}", *(f"-D{line[2:]}" for line in jumps)]
    return [*lines, *(f"-F {c}" for c in chains), *(f"-X {c}" for c in chains), "COMMIT"]


def _install(table: Table, saved: str, rules: list[str]) -> list[str]:
    """Lines that make ``table`` hold exactly ``rules`` in our chains.

    Declaring a chain flushes it under ``--noflush``; a jump is added where it
    is missing and replaced where it differs, so applying twice changes nothing.
    """
    lines = [f"*{table.name}", *(f":{c} - [0:0]" for c in table.chains)]
    present = our_jumps(saved, table)
    for chain, target, comment in table.jumps:
        wanted = _jump(table, chain, target, comment)
        mine = [j for j in present if f'"{comment}"' in j and j.split()[1] == chain]
        if any(j.replace('"', "") == wanted.replace('"', "") for j in mine):
            continue
        lines += [f"-D{j[2:]}" for j in mine]
        lines.append(_jump(table, chain, target, comment, "-I" if table.first else "-A"))
    return [*lines, *rules, "COMMIT"]


def document(rules: RuleSet, saved: str, family: Family, action: str) -> str:
    """The restore document that makes ``family`` ``action`` what ``rules`` catch.

    ``saved``: the family's nat and filter tables now. The table in use gets
    our chains first; the other one loses whatever of ours it holds.
    """
    table = ACTION_TABLE[action]
    body = _redirects(rules, family) if action == REDIRECT else _rejects(rules, family)
    lines = [*_endpoints(rules, family)[1], *_install(table, saved, body)]
    for other in TABLES:
        if other is not table:
            lines += _removal(other, saved)
    return "\n".join([*lines, ""])


def apply_document(rules: RuleSet, saved: str, family: Family = V4) -> str:
    """Replace whatever of ours is installed with ``rules``, in one restore."""
    return document(rules, saved, family, rules.action(family))


def notes(text: str) -> list[str]:
    """What a document says it left out, one line each (without the comment sign)."""
    return [line[2:] for line in text.splitlines() if line.startswith(NOTE)]


def fingerprint(rules: RuleSet) -> str:
    """A digest of the rule set, both families (not of the host's tables): what ``rules apply``
    records."""
    documents = "".join(apply_document(rules, "", family) for family in FAMILIES)
    return hashlib.sha256(documents.encode()).hexdigest()


def remove_document(saved: str, tables: tuple[Table, ...] = TABLES) -> str | None:
    """Delete our jumps and chains (one family, in ``tables``); None when nothing of ours is
    installed there."""
    lines = [line for table in tables for line in _removal(table, saved)]
    return "\n".join([*lines, ""]) if lines else None


def empty_table(saved: str, name: str) -> bool:
    """Table ``name`` is in ``saved`` and holds nothing: no rules, no chains but built-in ones
    that accept (what the nft backend made for a first rule, once that rule is gone)."""
    if f"*{name}" not in saved.splitlines():
        return False
    lines = table_of(saved, name).splitlines()
    chains = [line.split() for line in lines if line.startswith(":")]
    return not any(line.startswith("-A ") for line in lines) and all(
        len(c) > 1 and c[1] == "ACCEPT" for c in chains
    )


FALLBACK_END = "MESHD_RULES_END"
NFT_FAMILIES = {V4: "ip", V6: "ip6"}  # nft's name of each family


def fallback_document(rules: RuleSet, family: Family) -> str:
    """Closed mode with meshd down: what the rules catch is rejected, and our nat chains are
    emptied (declaring them flushes them), so no redirect to meshd's ports remains."""
    rejecting = document(rules, "", family, REJECT)
    emptied = [f"*{NAT.name}", *(f":{c} - [0:0]" for c in NAT.chains), "COMMIT", ""]
    return rejecting + "\n".join(emptied)


def _created(family: Family, marker: str) -> str:
    """Note that these rules create the nft filter table, so that removing ours drops it."""
    tool, nft = family.tool, NFT_FAMILIES[family]
    return (
        f"if {tool} -V 2>/dev/null | grep -q nf_tables && command -v nft >/dev/null && "
        f"! nft list tables {nft} 2>/dev/null | grep -qx 'table {nft} filter'; then "
        f"touch {marker}; fi"
    )


def fallback_script(rules: RuleSet, marker: str, created: dict[Family, str]) -> str:
    """A shell script that rejects what ``rules`` catch (at boot) without meshd or its config.

    It touches ``marker`` first, so that ``meshctl status`` can tell that the
    fallback is what holds the host closed, notes in ``created`` (per family)
    that it made the nft filter table, and fails if any part fails.
    """
    lines = [
        "#!/bin/sh",
        "# Written by `meshd rules apply`. meshd-rules.service runs it at boot when `meshd",
        "# rules apply` fails (closed fail mode): meshd is down, so every connection the",
        "# rules catch is refused (TCP reset) without meshd or its config, and nothing is",
        "# redirected to meshd's ports, which any local user could bind meanwhile.",
        f"touch {marker}",
        "status=0",
    ]
    for family in FAMILIES:
        restore = f"{family.tool}-restore -w 5 --noflush <<'{FALLBACK_END}' || status=1"
        document = [_created(family, created[family]), restore]
        document += [fallback_document(rules, family).rstrip("\n"), FALLBACK_END]
        if family is V6:  # a kernel without IPv6 has no IPv6 to leak
            document = ["if [ -e /proc/net/if_inet6 ]; then", *document, "fi"]
        lines += document
    lines += [f"ip route replace {rules.vip_range} dev lo || status=1", "exit $status", ""]
    return "\n".join(lines)
