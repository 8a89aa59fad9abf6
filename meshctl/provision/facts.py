"""What a host is like now, read in one SSH round trip.

``SCRIPT`` prints sections (``@@name`` lines followed by their text); the
pure ``parse`` turns that output into ``HostFacts``. The planner compares
facts with the desired state; nothing here changes the host.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from meshctl.provision import layout
from meshctl.transport import Transport
from meshd.errors import ProvisionError
from meshd.registry import MAX_IPV6, is_host_ipv6
from meshd.rules import V4, Family

# our lines of a saved filter table (meshd's rejecting rules), not the rest: a host's firewall
# may be large, and only ours is read
OURS = r"""grep -E '^(\*|COMMIT|:MESHD_|-A MESHD_|-A [A-Z]+ .*"meshd:)'"""

SUPPORTED_OS = {"debian": ("12", "13"), "ubuntu": ("24.04",)}
MIN_PYTHON = (3, 11)  # meshd uses tomllib and datetime.UTC


def script(vip_range: str, users: tuple[str, ...] = ()) -> str:
    """The shell script that prints every fact (read-only, runs as root).

    ``users``: the services' run-as users, whose existence is checked (they are
    validated names, see meshd.identity.check_user, so they are safe unquoted).
    """
    files = " ".join(shlex.quote(p) for p in layout.MANAGED_FILES)
    units = " ".join(layout.UNITS)
    return f"""
s() {{ printf '\\n@@%s\\n' "$1"; }}
s os; cat /etc/os-release 2>/dev/null
s machine; uname -m
s hostname; hostname
s python; python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
s systemd; [ -d /run/systemd/system ] && echo yes
s iptables; iptables -V 2>/dev/null
s user; id -u {layout.USER} 2>/dev/null
s run_as; for u in {" ".join(users)}; do id -u "$u" >/dev/null 2>&1 && echo "$u"; done
s sha256; for f in {files}; do [ -f "$f" ] && sha256sum "$f"; done
s key; stat -c '%a %U' {layout.KEY} 2>/dev/null
s cert; cat {layout.CERT} 2>/dev/null
s enabled; for u in {units}; do
  printf '%s %s\\n' "$u" "$(systemctl is-enabled "$u" 2>/dev/null)"; done
s meshd; systemctl show meshd.service -p ActiveState -p NRestarts \
  -p ActiveEnterTimestampMonotonic -p MainPID 2>/dev/null
printf 'Now=%s\\n' "$(cut -d' ' -f1 /proc/uptime)"
s registry_etc; cat {layout.REGISTRY} 2>/dev/null
s registry_state; cat {layout.PUSHED_REGISTRY} 2>/dev/null
s rules; cat {layout.RULES_RECORD} 2>/dev/null
s pending; [ -f {layout.ROLLBACK} ] && echo yes
s nat_created; [ -f {layout.NAT_CREATED} ] && echo yes
s user_created; [ -f {layout.USER_CREATED} ] && echo yes
s iproute; command -v ip
s nat; iptables-save -t nat 2>/dev/null
s filter; iptables-save -t filter 2>/dev/null | {OURS}
s ipv6; [ -e /proc/net/if_inet6 ] && echo yes
s nat6; [ -e /proc/net/if_inet6 ] && ip6tables-save -t nat 2>/dev/null
s filter6; [ -e /proc/net/if_inet6 ] && ip6tables-save -t filter 2>/dev/null | {OURS}
s nat6_created; [ -f {layout.NAT6_CREATED} ] && echo yes
s addr6; ip -6 -o addr show scope global 2>/dev/null
s fallback; [ -f {layout.FALLBACK_RAN} ] && echo yes
s route; ip route show {vip_range} dev lo 2>/dev/null
s hosts; base64 -w0 /etc/hosts 2>/dev/null  # exact bytes: leave must restore them
s versions; ls {layout.OPT} 2>/dev/null
s end
"""


@dataclass(frozen=True)
class MeshdState:
    """``systemctl show meshd``: state, restarts and uptime in seconds."""

    active: str = "inactive"
    restarts: int = 0
    uptime: float | None = None
    pid: int = 0


@dataclass(frozen=True)
class HostFacts:
    os_id: str
    os_version: str
    os_name: str
    machine: str
    hostname: str
    python: str | None
    systemd: bool
    iptables: str  # "nft", "legacy" or "" when iptables is missing
    user_exists: bool
    run_as_users: tuple[str, ...] = ()  # of the users asked about, those that exist
    hashes: dict[str, str] = field(default_factory=dict)  # managed path -> sha256
    key_mode: str | None = None  # "600 meshd"
    cert_pem: str = ""
    enabled: dict[str, str] = field(default_factory=dict)  # unit -> is-enabled
    meshd: MeshdState = field(default_factory=MeshdState)
    registry: dict[str, Any] | None = None  # the newer of /etc's and the pushed one
    rules_record: str = ""  # sha256 of the rule set meshd last applied (in /run)
    rollback_pending: bool = False  # a join's rules are waiting for their confirmation
    nat_created: bool = False  # our first rules created the nat table
    user_created: bool = False  # join created the meshd user (one that was there stays)
    iproute: bool = True
    nat: str = ""
    ipv6: bool = False  # the kernel has IPv6: ip6tables rules are due
    nat6: str = ""  # ip6tables-save -t nat
    nat6_created: bool = False  # our first rules created the ip6 nat table
    filter: str = ""  # our part of iptables-save -t filter (rules that reject)
    filter6: str = ""  # ... and of ip6tables-save -t filter
    ipv6_addresses: tuple[str, ...] = ()  # global, not temporary: what the registry lists
    fallback: bool = False  # closed mode's boot fallback put the rules in (meshd rules failed)
    route: bool = False
    hosts: str = ""
    versions: tuple[str, ...] = ()  # entries under /opt/meshd

    def tables(self, family: Family) -> str:
        """The family's tables our rules use (nat, and our part of filter), as saved."""
        return self.nat + self.filter if family is V4 else self.nat6 + self.filter6

    @property
    def installed(self) -> bool:
        """Anything of ours on the host."""
        return bool(
            self.hashes
            or self.user_exists
            or self.versions
            or any(v not in ("", "not-found") for v in self.enabled.values())
        )


def split_sections(text: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@@"):
            current = sections.setdefault(line[2:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}


def _keyvalues(text: str, sep: str = "=") -> dict[str, str]:
    pairs = (line.split(sep, 1) for line in text.splitlines() if sep in line)
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def _meshd(text: str) -> MeshdState:
    kv = _keyvalues(text)
    started = int(kv.get("ActiveEnterTimestampMonotonic", "0") or 0)
    now = float(kv.get("Now", "0") or 0)
    active = kv.get("ActiveState", "inactive")
    uptime = now - started / 1e6 if active == "active" and started and now else None
    return MeshdState(
        active, int(kv.get("NRestarts", "0") or 0), uptime, int(kv.get("MainPID", "0"))
    )


def _newest_registry(etc: str, pushed: str) -> dict[str, Any] | None:
    """What meshd and its rules use: the higher version (a tie goes to the pushed one)."""
    docs = []
    for text in (pushed, etc):
        try:
            doc = json.loads(text) if text else None
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("version"), int):
            docs.append(doc)
    return max(docs, key=lambda d: int(d["version"])) if docs else None


UNLISTED_FLAGS = {"temporary", "deprecated", "dadfailed"}  # addresses apps may not reach us at


def _ipv6_addresses(text: str) -> tuple[str, ...]:
    """The global IPv6 addresses in ``ip -6 -o addr show scope global`` output."""
    found: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if "inet6" not in words[:-1] or UNLISTED_FLAGS & set(words):
            continue
        try:
            address = ipaddress.IPv6Interface(words[words.index("inet6") + 1]).ip
        except ValueError:
            continue
        if is_host_ipv6(address):
            found.add(str(address))
    return tuple(sorted(found))[:MAX_IPV6]


def _table(text: str) -> str:
    return text + "\n" if text else ""


def _exact(b64: str) -> str:
    """A file's text from base64, byte for byte (undecodable bytes survive the round trip)."""
    try:
        return base64.b64decode(b64.strip(), validate=True).decode("utf-8", "surrogateescape")
    except ValueError as e:
        raise ProvisionError(f"reading the host's facts: a file came back garbled ({e})") from e


def parse(text: str) -> HostFacts:
    """Facts from the output of ``script``."""
    s = split_sections(text)
    if "end" not in s:
        raise ProvisionError("reading the host's facts stopped early (incomplete output)")
    os_release = _keyvalues(s.get("os", ""))
    hashes = {}
    for line in s.get("sha256", "").splitlines():
        digest, _, path = line.partition("  ")
        hashes[path.strip()] = digest
    backend = s.get("iptables", "")
    enabled = dict(line.split(" ", 1) for line in s.get("enabled", "").splitlines() if " " in line)
    return HostFacts(
        os_id=os_release.get("ID", ""),
        os_version=os_release.get("VERSION_ID", ""),
        os_name=os_release.get("PRETTY_NAME", "unknown OS"),
        machine=s.get("machine", ""),
        hostname=s.get("hostname", ""),
        python=s.get("python") or None,
        systemd=s.get("systemd") == "yes",
        iptables="nft" if "nf_tables" in backend else "legacy" if backend else "",
        user_exists=bool(s.get("user")),
        run_as_users=tuple(s.get("run_as", "").split()),
        hashes=hashes,
        key_mode=s.get("key") or None,
        cert_pem=s.get("cert", ""),
        enabled={k: v.strip() for k, v in enabled.items()},
        meshd=_meshd(s.get("meshd", "")),
        registry=_newest_registry(s.get("registry_etc", ""), s.get("registry_state", "")),
        rules_record=s.get("rules", "").strip(),
        rollback_pending=s.get("pending") == "yes",
        nat_created=s.get("nat_created") == "yes",
        user_created=s.get("user_created") == "yes",
        iproute=bool(s.get("iproute")),
        nat=_table(s.get("nat", "")),
        ipv6=s.get("ipv6") == "yes",
        nat6=_table(s.get("nat6", "")),
        nat6_created=s.get("nat6_created") == "yes",
        filter=_table(s.get("filter", "")),
        filter6=_table(s.get("filter6", "")),
        ipv6_addresses=_ipv6_addresses(s.get("addr6", "")),
        fallback=s.get("fallback") == "yes",
        route=bool(s.get("route")),
        hosts=_exact(s.get("hosts", "")),
        versions=tuple(s.get("versions", "").split()),
    )


def check_supported(host: str, facts: HostFacts) -> None:
    """Refuse hosts meshd cannot run on, saying what is missing."""
    if not facts.python:
        raise ProvisionError(
            f"{host}: python3 is missing", hint="install it first (apt-get install python3)"
        )
    if tuple(int(p) for p in facts.python.split(".")) < MIN_PYTHON:
        raise ProvisionError(f"{host}: python3 is {facts.python}; meshd needs 3.11 or newer")
    versions = SUPPORTED_OS.get(facts.os_id)
    if versions is None or facts.os_version not in versions:
        names = ", ".join(f"{os} {'/'.join(v)}" for os, v in SUPPORTED_OS.items())
        raise ProvisionError(
            f"{host}: {facts.os_name} is not supported", hint=f"supported: {names}"
        )
    if not facts.systemd:
        raise ProvisionError(f"{host}: systemd is not running; meshd needs it as PID 1")
    if not facts.iptables:
        raise ProvisionError(f"{host}: iptables is missing", hint="apt-get install iptables")
    if not facts.iproute:
        raise ProvisionError(f"{host}: ip (iproute2) is missing", hint="apt-get install iproute2")


def gather(transport: Transport, vip_range: str, users: tuple[str, ...] = ()) -> HostFacts:
    """Read the host's facts over ``transport`` (and whether ``users`` exist there)."""
    result = transport.run(script(vip_range, users), timeout=60)
    if result.status != 0 and "@@end" not in result.stdout:
        detail = (result.stderr.strip().splitlines() or [f"exit {result.status}"])[-1]
        raise ProvisionError(f"{transport.name}: cannot read the host's facts: {detail}")
    return parse(result.stdout)
