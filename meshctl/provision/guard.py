"""The dead-man switch around new redirect rules: they undo themselves unless confirmed.

New rules (and the config and registry they are made from) go in only
through ``guarded``:

1. arm: the host saves its nat and filter tables (IPv4, and IPv6 where the
   kernel has it), its VIP route, its current ``meshd.toml``/``registry.json``/
   fallback script and whether the boot fallback held the host, and a
   transient systemd timer is set to put all of that back after the deadline:
   the nat tables whole, of the filter tables only our rules (others' filter
   rules, a firewall's say, may change meanwhile and are left alone). A
   snapshot left by a join that was cut short is kept: it is the last
   confirmed state.
2. the new config files are written and ``meshd rules apply`` runs.
3. confirm: a *new* SSH connection (the one that applied the rules proves
   nothing: conntrack keeps established flows alive) stops the timer and
   drops the snapshot. If that connection fails, or the timer fired first,
   the host goes back by itself and meshctl says so.

The rollback and the confirmation take the host's rules lock (the one every
``meshd rules``/``meshd sync`` holds while it changes the rules), so they
never interleave with each other or with a registry sync. With the previous
config restored, nothing re-applies the refused rules later (boot, open-mode
restarts, registry pushes); on a first join there was no previous config and
meshd's rule units are disabled.
"""

from __future__ import annotations

import secrets
import shlex
import time
from collections.abc import Callable

from meshctl.inventory import VIP_RANGE
from meshctl.provision import layout, tables
from meshctl.transport import Transport, UnreachableError, check, failure_detail
from meshd.errors import MeshError, ProvisionError

ROLLBACK_DEADLINE = 20.0
ROLLBACK_GRACE = 15.0  # seconds past the deadline meshctl keeps trying to reach a rolled-back host
ROLLBACK_UNIT = "meshd-rules-rollback"
# what the rules are made from, in /etc/meshd, and the fallback script the last apply wrote
CONFIG_FILES = ("meshd.toml", "registry.json", "rules-fallback")
SNAPSHOT, PREV, LOCK = layout.ROLLBACK, layout.ROLLBACK_PREV, layout.RULES_LOCK
HAS_IPV6 = tables.HAS_IPV6
# tool -> (its saved filter table in the snapshot, the note that our rules made that table)
FILTERS = {
    "iptables": (f"{PREV}/filter", layout.FILTER_CREATED),
    "ip6tables": (f"{PREV}/filter6", layout.FILTER6_CREATED),
}


def _remove_ours(tool: str) -> str:
    """Our jumps and chains, taken out one by one (when there is no nat table to restore)."""
    return f"""\
{tool} -w 5 -t nat -D OUTPUT -p tcp -m comment --comment meshd:output -j MESHD_OUTPUT
{tool} -w 5 -t nat -D PREROUTING -p tcp -m comment --comment meshd:inbound -j MESHD_INBOUND
for c in MESHD_OUTPUT MESHD_REDIRECT MESHD_INBOUND; do
  {tool} -w 5 -t nat -F $c; {tool} -w 5 -t nat -X $c
done"""


def _restore(tool: str, saved: str) -> str:
    """Put the nat table saved in ``saved`` back (without one: take ours out)."""
    return f"""\
{{ if grep -q '^\\*nat' {saved}; then {tool}-restore -w 5 < {saved} || {{
{_remove_ours(tool)}
}}; else
{_remove_ours(tool)}
fi; }} 2>/dev/null"""


def _created(tool: str, family: str, marker: str) -> str:
    """Note that our first rules will create the nft ``family`` nat table: leave drops it."""
    return (
        f"if {tool} -V | grep -q nf_tables && ! nft list tables 2>/dev/null | "
        f"grep -qx 'table {family} nat'; then\n"
        f"    mkdir -p {layout.ETC}; touch {marker}\n"
        "  fi"
    )


ARM = f"""\
set -e; umask 077
systemctl stop '{ROLLBACK_UNIT}-*.timer' 2>/dev/null || true
if [ ! -f {SNAPSHOT} ]; then
  rm -rf {PREV}; mkdir -p {PREV}
  iptables-save -t nat > {PREV}/nat
  iptables-save -t filter > {PREV}/filter
  if {HAS_IPV6}; then
    ip6tables-save -t nat > {PREV}/nat6; ip6tables-save -t filter > {PREV}/filter6
  fi
  for f in {layout.FILTER_CREATED} {layout.FILTER6_CREATED}; do
    [ -f $f ] && touch {PREV}/$(basename $f) || true
  done
  ip route show {VIP_RANGE} dev lo | grep -q . && touch {PREV}/route || true
  [ -f {layout.FALLBACK_RAN} ] && touch {PREV}/fallback-ran || true
  for f in {" ".join(CONFIG_FILES)}; do
    if [ -f {layout.ETC}/$f ]; then cp -p {layout.ETC}/$f {PREV}/$f; else touch {PREV}/$f.absent; fi
  done
  {_created("iptables", "ip", layout.NAT_CREATED)}
  if {HAS_IPV6}; then
  {_created("ip6tables", "ip6", layout.NAT6_CREATED)}
  fi
  mv {PREV}/nat {SNAPSHOT}
fi
"""


def _restore_filter(tool: str) -> str:
    """Our rules in the filter table as the snapshot held them (and its note that they made
    the table); when it held none, a table the refused rules made goes with them."""
    saved, created = FILTERS[tool]
    note = f"{PREV}/{created.rsplit('/', 1)[1]}"
    return f"""\
{{ {tables.remove_ours(tool)}
{tables.restore_ours(tool, saved)}
if grep -q '^:MESHD_' {saved}; then
  if [ -f {note} ]; then touch {created}; else rm -f {created}; fi
elif [ -f {created} ]; then
{tables.drop_empty(tool, "filter")}
  rm -f {created}
fi; }} 2>/dev/null"""


ROLLBACK = f"""\
exec 9>{LOCK}; flock 9
[ -f {SNAPSHOT} ] || exit 0
{_restore("iptables", SNAPSHOT)}
{_restore_filter("iptables")}
if [ -f {PREV}/nat6 ]; then
{_restore("ip6tables", f"{PREV}/nat6")}
{_restore_filter("ip6tables")}
fi
[ -f {PREV}/route ] || ip route del {VIP_RANGE} dev lo 2>/dev/null
for f in {" ".join(CONFIG_FILES)}; do
  if [ -f {PREV}/$f ]; then cp -p {PREV}/$f {layout.ETC}/$f
  elif [ -f {PREV}/$f.absent ]; then rm -f {layout.ETC}/$f; fi
done
if [ -f {PREV}/meshd.toml.absent ]; then  # a first join: nothing of it may start at boot
  systemctl disable --now meshd-sync.path 2>/dev/null
  systemctl disable meshd-rules.service meshd.service 2>/dev/null
fi
rm -f {layout.FALLBACK_RAN}
[ ! -f {PREV}/fallback-ran ] || touch {layout.FALLBACK_RAN}  # the fallback holds the host again
rm -rf {SNAPSHOT} {PREV} {layout.RULES_RECORD} {layout.SYNCED}
true"""


def disarm_command(unit: str) -> str:
    """Stop the timer and drop the snapshot, unless the rollback already ran (exit 3)."""
    inner = (
        f"systemctl is-active --quiet {unit}.timer || exit 3; "
        f"systemctl stop {unit}.timer && rm -rf {SNAPSHOT} {PREV}"
    )
    return f"flock {LOCK} sh -c {shlex.quote(inner)}"


def arm_command(unit: str, deadline: float) -> str:
    return ARM + (
        f"systemd-run --quiet --unit={unit} --on-active={deadline:g}s "
        f"--timer-property=AccuracySec=100ms /bin/sh -c {shlex.quote(ROLLBACK)}"
    )


def guarded(
    transport: Transport,
    reconnect: Callable[[], Transport],
    command: str,
    write_config: Callable[[], None],
    deadline: float = ROLLBACK_DEADLINE,
) -> None:
    """Arm, write the config, run ``command``, confirm over a new connection (see above)."""
    host, unit = transport.name, f"{ROLLBACK_UNIT}-{secrets.token_hex(4)}"
    check(transport.run(arm_command(unit, deadline), timeout=30), "arming the rollback", host)
    armed = time.monotonic()
    try:
        write_config()
        result = transport.run(command, timeout=60)
    except MeshError as e:  # the rules cut the session that applied them (or it broke)
        raise _rolled_back(host, reconnect, armed, deadline, e.message) from e
    if not result.ok:  # the timer stays armed: the previous rules and config come back
        raise ProvisionError(
            f"{host}: applying the redirect rules failed: {failure_detail(result)}; "
            f"the previous rules and configuration come back by themselves within {deadline:g}s",
            hint="meshctl join --dry-run shows the rule set; fix the cause and join again",
        )
    try:
        confirm = reconnect()
    except MeshError as e:
        raise _rolled_back(host, reconnect, armed, deadline, e.message) from e
    try:
        _disarm(confirm, host, unit, deadline)
    finally:
        confirm.close()


def _disarm(transport: Transport, host: str, unit: str, deadline: float) -> None:
    result = transport.run(disarm_command(unit), timeout=30)
    if result.status == 3:
        raise ProvisionError(
            f"{host}: the redirect rules were rolled back before meshctl could confirm them "
            f"(deadline {deadline:g}s)",
            hint="a slow link? run meshctl join again",
        )
    check(result, "cancelling the rules rollback", host)


def _rolled_back(
    host: str, reconnect: Callable[[], Transport], armed: float, deadline: float, why: str
) -> ProvisionError:
    """Wait for the host's timer to undo the rules, and say whether it is reachable again.

    The first try comes 2 s after the deadline; a loaded host may take longer to
    run the rollback, so while the host is unreachable meshctl keeps trying, once
    a second, until ROLLBACK_GRACE past the deadline. Other errors (a changed
    host key, refused authentication) will not go away by waiting: said at once.
    """
    time.sleep(max(0.0, armed + deadline + 2 - time.monotonic()))
    give_up = armed + deadline + ROLLBACK_GRACE
    while True:
        try:
            reconnect().close()
        except UnreachableError as e:
            if time.monotonic() < give_up:
                time.sleep(1)
                continue
            waited = time.monotonic() - armed - deadline
            after = (
                "they should have been rolled back, but the host is still unreachable "
                f"{waited:.0f}s after the deadline ({e})"
            )
        except MeshError as e:
            after = f"they should have been rolled back, but reconnecting failed ({e})"
        else:
            after = "they were rolled back with the previous configuration; the host is reachable"
        break
    return ProvisionError(
        f"{host}: a new SSH connection failed after the redirect rules were applied "
        f"({why}); {after}",
        hint="check the rule set (meshctl join --dry-run shows it) and the SSH port in use",
    )
