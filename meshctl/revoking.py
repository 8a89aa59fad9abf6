"""``meshctl leave`` and ``meshctl revoke``: take hosts' identities away from the mesh at once.

A host that leaves, or is revoked (compromised or gone: no SSH needed), gets
a revocation in the workspace (``meshctl.revocation``: its host ID and the
serials meshctl knows: the one ``join`` signed, the one its meshd reports on
/stats when it still answers, the one its files hold when ``leave`` read
them), is dropped from the joined hosts and the inventory, and every
remaining joined host gets the registry carrying the revocation, reported
per host: a copy of the host's key and certificate opens no link after that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from meshctl import state
from meshctl.control import push_registry
from meshctl.fleet import Fleet, fan_out
from meshctl.inventory import HostSpec
from meshctl.provision import rollout
from meshctl.provision.rollout import Outcome, Rollout
from meshctl.revocation import leaf_lifetime, revoke_host, serial_of
from meshd.errors import ConfigError
from meshd.identity import check_name
from meshd.registry import Revocation

# a revocation names leaves; an issuer CA's key signs new ones until the CA expires
ISSUER_NOTE = (
    "it was an issuer: out of the registry, but leaves its issuer CA signs still verify "
    "until that CA expires; if its key may be compromised, meshctl ca rotate begin"
)


def leave_and_revoke(
    ro: Rollout, hosts: list[HostSpec], dry_run: bool, forget: bool
) -> list[Outcome]:
    """``leave``, a revocation of each joined host that left, then the registry to the rest."""
    members = state.joined(ro.ws)
    leaving = [h for h in hosts if h.name in members]
    seen = {} if dry_run else serials_served(ro, leaving)  # before meshd stops
    outcomes = rollout.leave(ro, hosts, dry_run, forget)
    if dry_run:
        return outcomes
    for o in outcomes:
        if o.ok and o.host in members:
            files = serial_of(o.facts.cert_pem) if o.facts else ""
            joined = members[o.host].get("certificate_serial", "")
            o.done.append(describe(record(ro, o.host, (joined, seen.get(o.host, ""), files))))
    return rollout.with_pushes(outcomes, push_registry(ro, state.joined(ro.ws)))


def revoke_and_push(fleet: Fleet, names: Iterable[str]) -> list[Outcome]:
    """Revoke the hosts ``names`` without touching them, then push the registry to the rest."""
    specs = _known(fleet, list(dict.fromkeys(names)))
    members = state.joined(fleet.ws)
    seen = serials_served(fleet, [s for s in specs if s.name in members])
    outcomes = [_revoke(fleet, spec, members, seen) for spec in specs]
    inventory = state.load_inventory(fleet.ws)
    for spec in specs:
        state.forget_host(fleet.ws, spec.name)
        inventory = inventory.without_host(spec.name)
    state.save_inventory(fleet.ws, inventory)
    return rollout.with_pushes(outcomes, push_registry(fleet, state.joined(fleet.ws)))


def _revoke(
    fleet: Fleet, spec: HostSpec, members: dict[str, dict[str, Any]], seen: dict[str, str]
) -> Outcome:
    joined = members.get(spec.name, {}).get("certificate_serial", "")
    done = [describe(record(fleet, spec.name, (joined, seen.get(spec.name, ""))))]
    if spec.name in members and spec.name not in seen:
        done.append("its meshd did not answer: the serial it runs may be unknown")
    if spec.issuer:
        done.append(ISSUER_NOTE)
    return Outcome(spec.name, spec.address, "revoked", done=done)


def _known(fleet: Fleet, names: list[str]) -> list[HostSpec]:
    """The hosts ``names`` (in hosts.toml, joined, or revoked before); refuse any other."""
    inventory = state.load_inventory(fleet.ws)
    members, kept = state.joined(fleet.ws), state.revocations(fleet.ws)
    for name in names:
        check_name("host", name)
    unknown = [n for n in names if inventory.host(n) is None and n not in members | kept]
    if unknown:
        raise ConfigError(
            f"no host {', '.join(unknown)} in {state.inventory_path(fleet.ws)}, "
            "among the joined hosts or the revoked ones",
            hint="meshctl revoke takes host names: meshctl status lists them",
        )
    return [inventory.host(n) or HostSpec(n, members.get(n, {}).get("address", "")) for n in names]


def serials_served(fleet: Fleet, hosts: list[HostSpec]) -> dict[str, str]:
    """The serial of the certificate each of ``hosts`` runs (/stats), for those that answer."""
    client = fleet.admin()

    def serial(host: HostSpec) -> str:
        fleet.progress(host.name, "reading the serial of its certificate")
        return client.stats(fleet.endpoint(host)).certificate_serial

    answers = fan_out(serial, hosts)
    return {h.name: s for h, s in answers.items() if isinstance(s, str) and s}


def record(fleet: Fleet, host: str, serials: Iterable[str]) -> Revocation:
    """Revoke ``host`` in the workspace; the entry now kept for it."""
    config = fleet.ws.config
    entry = revoke_host(host, config.trust_domain, serials, fleet.now(), leaf_lifetime(config))
    return state.record_revocation(fleet.ws, entry)


def describe(entry: Revocation) -> str:
    until = dt.datetime.fromtimestamp(entry.until, dt.UTC).isoformat(timespec="seconds")
    names = [*entry.ids, *(f"serial {s}" for s in entry.serials)]
    return f"revoked {', '.join(names)} until {until}"
