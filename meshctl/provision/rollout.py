"""Join and leave many hosts at once: facts -> plan -> apply per host, in parallel.

Each host's work ends in an ``Outcome`` (never an exception): the commands
render one table and exit non-zero on partial failure. ``join_and_push`` and
``leave_and_push`` then send every joined host the new registry over its
admin API (``meshctl.control``) and charge a failed push to the host it
failed on. The session and the fan-out are ``meshctl.fleet``'s.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from meshctl import bundle as bundles
from meshctl import state
from meshctl.ca import sign_csr
from meshctl.control import Pushed, push_registry, registry_for
from meshctl.fleet import Fleet, HostResults, attempt, parallel
from meshctl.inventory import VIP_RANGE, HostSpec, Inventory
from meshctl.provision import facts as facts_mod
from meshctl.provision.apply import Applier
from meshctl.provision.desired import DesiredHost, desired_host
from meshctl.provision.facts import HostFacts
from meshctl.provision.guard import ROLLBACK_DEADLINE
from meshctl.provision.plan import Enroll, Plan, plan_join, plan_leave
from meshctl.revocation import leaf_lifetime, readmitted, serial_of
from meshctl.transport import Transport, UnreachableError
from meshd.errors import MeshError, ProvisionError
from meshd.identity import SpiffeId, check_name
from meshd.pki import cert_pem, load_certs
from meshd.registry import Registry

VIP = str(VIP_RANGE)
BundleBuilder = Callable[[bundles.Target, Path, bool], bundles.Bundle]  # target, cache, offline


def build_bundle(target: bundles.Target, cache: Path, offline: bool = False) -> bundles.Bundle:
    """``bundles.build``, looked up at each call (a test may replace it)."""
    return bundles.build(target, cache, offline)


@dataclass
class Outcome:
    host: str
    address: str
    status: str = "pending"  # joined | converged | planned | left | forgotten | registry | failed
    plan: Plan | None = None
    done: list[str] = field(default_factory=list)
    error: MeshError | None = None
    facts: HostFacts | None = None
    desired: DesiredHost | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Rollout(Fleet):
    """A fleet session that changes hosts: meshd bundles, the CA's signer, desired state, plans."""

    passphrase: Callable[[], str | None] = lambda: None
    bundle_cache: Path = bundles.DEFAULT_CACHE
    build_bundle: BundleBuilder = build_bundle
    rollback_deadline: float = ROLLBACK_DEADLINE
    _bundles: dict[bundles.Target, bundles.Bundle] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def bundle_for(self, facts: HostFacts, offline: bool = False) -> bundles.Bundle:
        """The meshd bundle for the host's Python and machine (``offline``: only if cached)."""
        target = bundles.Target(facts.python or "", facts.machine)
        with self._lock:  # one build per Python/machine, shared by every host like it
            if target not in self._bundles:
                self._bundles[target] = self.build_bundle(target, self.bundle_cache, offline)
            return self._bundles[target]

    def signer(self, registry: Registry) -> Callable[[bytes, tuple[SpiffeId, ...], int], bytes]:
        """Signs leaves with the issuing CA, each starting no earlier than ``registry``'s
        revocations allow (a revoked host name that joins again)."""
        issuer = self.ws.issuer(self.passphrase())

        def sign(csr_pem: bytes, ids: tuple[SpiffeId, ...], seconds: int) -> bytes:
            csr = x509.load_pem_x509_csr(csr_pem)
            floor = registry.not_before_floor(str(i) for i in ids)
            start = dt.datetime.fromtimestamp(floor, dt.UTC) if floor else None
            lifetime = dt.timedelta(seconds=seconds)
            cert = sign_csr(csr, list(ids), issuer, self.now(), lifetime, not_before=start)
            return cert_pem(cert, issuer.cert)

        return sign

    @functools.cached_property
    def issuing_ca(self) -> x509.Certificate:
        return load_certs(self.ws.issuing_ca_cert)[0]

    def desired(self, host: HostSpec, registry: Registry, version: str) -> DesiredHost:
        """What ``host`` should look like with this registry and meshd bundle version."""
        trust = self.ws.trust_bundle.read_bytes()
        return desired_host(self.ws.config, host, registry, version, trust, host.port)

    def plan(self, facts: HostFacts, desired: DesiredHost) -> Plan:
        return plan_join(facts, desired, self.issuing_ca, self.now())


def _contained(outcome: Outcome, fn: Callable[[], None]) -> Outcome:
    """Run ``fn``; any error ends up on the outcome, never escapes (one host fails alone)."""
    error = attempt(outcome.host, fn)
    if error is not None:
        outcome.status, outcome.error = "failed", error
    return outcome


# -- join and leave, then the registry to every joined host
def join_and_push(ro: Rollout, hosts: list[HostSpec], dry_run: bool) -> list[Outcome]:
    """``join``, then the new registry to every joined host: one row per host it touched."""
    outcomes = join(ro, hosts, dry_run)
    if dry_run:
        return outcomes
    return with_pushes(outcomes, push_registry(ro, state.joined(ro.ws)))


def leave_and_push(
    ro: Rollout, hosts: list[HostSpec], dry_run: bool, forget: bool
) -> list[Outcome]:
    """``leave``, then the registry without them to every host still joined."""
    outcomes = leave(ro, hosts, dry_run, forget)
    if dry_run:
        return outcomes
    return with_pushes(outcomes, push_registry(ro, state.joined(ro.ws)))


def with_pushes(outcomes: list[Outcome], pushes: HostResults[Pushed]) -> list[Outcome]:
    """``outcomes``, a push to one of their hosts merged into its row (a failed push to a host
    that just joined is that host's failure), then a row per other host the push changed."""
    by_host = {o.host: o for o in outcomes}
    others = []
    for push in push_outcomes(pushes):
        mine = by_host.get(push.host)
        if mine is None:
            others += [push] if push.done or push.error else []
        elif mine.ok:
            mine.done += push.done
            if push.error is not None:
                mine.status, mine.error = "failed", push.error
    return outcomes + others


def push_outcomes(pushes: HostResults[Pushed]) -> list[Outcome]:
    """Registry pushes as result rows: status "registry", or "failed" with the error."""
    rows = []
    for host, result in pushes.items():
        if isinstance(result, MeshError):
            rows.append(Outcome(host.name, host.address, "failed", error=result))
        else:
            rows.append(Outcome(host.name, host.address, "registry", done=list(result.done)))
    return rows


# -- join
@dataclass
class _Session:
    host: HostSpec
    outcome: Outcome
    transport: Transport | None = None


def _ipv6_of(sessions: Iterable[_Session]) -> dict[str, tuple[str, ...]]:
    return {s.host.name: s.outcome.facts.ipv6_addresses for s in sessions if s.outcome.facts}


def join(ro: Rollout, hosts: list[HostSpec], dry_run: bool) -> list[Outcome]:
    """Join ``hosts`` (inventory entries, new or updated); returns one outcome per host."""
    sessions = [_Session(h, Outcome(h.name or h.address, h.address)) for h in hosts]
    try:
        parallel(lambda s: _contained(s.outcome, lambda: _survey(ro, s)), sessions)
        inventory = _name_hosts(ro, sessions)
        ready = [s for s in sessions if s.outcome.ok]
        members = set(state.joined(ro.ws)) | {s.host.name for s in ready}
        # a revoked name joining again: its ID revokes only certificates signed before now
        lifetime, joining = leaf_lifetime(ro.ws.config), (s.host.name for s in ready)
        kept = readmitted(state.revocations(ro.ws), joining, ro.now(), lifetime)
        registry = registry_for(ro, inventory, members, _ipv6_of(ready), kept)
        parallel(lambda s: _contained(s.outcome, lambda: _plan(ro, s, registry)), ready)
        if dry_run:
            for s in ready:
                s.outcome.status = "planned" if s.outcome.ok else s.outcome.status
            return [s.outcome for s in sessions]
        needs_ca = any(s.outcome.plan and s.outcome.plan.has(Enroll) for s in ready)
        sign = ro.signer(registry) if needs_ca else None  # a wrong passphrase: nothing changed
        state.save_inventory(ro.ws, inventory)
        state.save_revocations(ro.ws, kept.values())
        state.record_registry(ro.ws, registry)
        try:
            parallel(lambda s: _contained(s.outcome, lambda: _apply(ro, s, sign)), ready)
        finally:  # also on Ctrl-C: the hosts that finished are joined, and recorded as such
            for s in ready:
                if s.outcome.status in {"joined", "converged"}:
                    record = _record(s, registry.version, ro.now())
                    state.record_join(ro.ws, s.host.name, record)
        return [s.outcome for s in sessions]
    finally:
        for s in sessions:
            if s.transport is not None:
                s.transport.close()


def _survey(ro: Rollout, s: _Session) -> None:
    ro.progress(s.outcome.host, "connecting")
    s.transport = ro.transport(s.host)
    ro.progress(s.outcome.host, "reading facts")
    users = tuple(sorted({svc.run_as for svc in s.host.services if svc.run_as}))
    s.outcome.facts = facts_mod.gather(s.transport, VIP, users)
    facts_mod.check_supported(s.outcome.host, s.outcome.facts)
    missing = [u for u in users if u not in s.outcome.facts.run_as_users]
    if missing:
        raise ProvisionError(
            f"{s.outcome.host}: no user {', '.join(missing)} on the host, "
            "though services run as it (--service NAME:PORT:RUNAS)",
            hint="create the user first, or fix the service's run-as user",
        )


def _name_hosts(ro: Rollout, sessions: list[_Session]) -> Inventory:
    """Give unnamed hosts their hostname and put every reachable host into the inventory."""
    inventory = state.load_inventory(ro.ws)
    for s in sessions:
        if not s.outcome.ok:
            continue
        if not s.host.name:
            assert s.outcome.facts is not None
            name = s.outcome.facts.hostname.split(".")[0].lower()
            try:
                check_name("host", name)
            except MeshError:
                s.outcome.status = "failed"
                s.outcome.error = ProvisionError(
                    f"{s.host.address}: its hostname {name!r} is not a valid host name",
                    hint="pass --name NAME",
                )
                continue
            s.host = replace(s.host, name=name)
            s.outcome.host = name
        taken = inventory.host(s.host.name)
        if taken is not None and taken.address != s.host.address:
            s.outcome.status = "failed"
            s.outcome.error = ProvisionError(
                f"host name {s.host.name!r} is already used by {taken.address}",
                hint="pass --name with another name, or meshctl leave the other host first",
            )
            continue
        inventory = inventory.with_host(s.host)
    return inventory


def _plan(ro: Rollout, s: _Session, registry: Registry) -> None:
    facts = s.outcome.facts
    assert facts is not None and s.transport is not None
    ro.progress(s.outcome.host, "preparing meshd for its Python")
    s.outcome.desired = ro.desired(s.host, registry, ro.bundle_for(facts).version)
    seen = facts.registry.get("version", 0) if facts.registry else 0
    if isinstance(seen, int) and seen > registry.version:
        raise ProvisionError(
            f"{s.outcome.host} has registry version {seen}, newer than this workspace's "
            f"{registry.version}: another copy of the workspace changed the mesh",
            hint="bring this workspace up to date (git pull) and run the command again",
        )
    s.outcome.plan = ro.plan(facts, s.outcome.desired)


def _apply(ro: Rollout, s: _Session, sign: Callable[..., bytes] | None) -> None:
    plan, facts, desired = s.outcome.plan, s.outcome.facts, s.outcome.desired
    assert plan is not None and facts is not None and desired is not None
    assert s.transport is not None
    if plan.empty:
        s.outcome.status = "converged"
        return
    applier = Applier(
        s.transport,
        reconnect=lambda: ro.transport(s.host),
        bundle=ro.bundle_for(facts).path,
        sign=sign,
        report=lambda what: ro.progress(s.outcome.host, what),
        rollback_deadline=ro.rollback_deadline,
    )
    s.outcome.done = applier.apply(plan)
    ro.progress(s.outcome.host, "checking the result")
    after = facts_mod.gather(s.transport, VIP)
    left = ro.plan(after, desired)
    if not left.empty:
        raise ProvisionError(
            f"{s.outcome.host}: still differs after the join: "
            + "; ".join(step.title for step in left.steps),
            hint="run meshctl join again; if it persists, see journalctl -u meshd on the host",
        )
    s.outcome.facts, s.outcome.status = after, "joined"


def _record(s: _Session, registry_version: int, now: dt.datetime) -> dict[str, Any]:
    desired, facts = s.outcome.desired, s.outcome.facts
    assert desired is not None and facts is not None
    return {
        "address": s.host.address,
        "ipv6": list(facts.ipv6_addresses),  # what the registry lists for it (registry_for)
        "bundle_version": desired.bundle_version,
        "registry_version": registry_version,
        "fail_mode": s.host.fail_mode,
        "joined_at": now.isoformat(timespec="seconds"),
        "certificate_serial": serial_of(facts.cert_pem),  # what a revocation names
    }


# -- leave
def leave(ro: Rollout, hosts: list[HostSpec], dry_run: bool, forget: bool) -> list[Outcome]:
    """Take everything of ours off ``hosts``; drop them from the inventory when done."""
    outcomes = parallel(lambda host: _leave_one(ro, host, dry_run, forget), hosts)
    if not dry_run:
        inventory = state.load_inventory(ro.ws)
        for outcome in outcomes:
            if outcome.ok:
                inventory = inventory.without_host(outcome.host)
                state.forget_host(ro.ws, outcome.host)
        state.save_inventory(ro.ws, inventory)
    return outcomes


def _leave_one(ro: Rollout, host: HostSpec, dry_run: bool, forget: bool) -> Outcome:
    outcome = Outcome(host.name, host.address)
    _contained(outcome, lambda: _clean(ro, host, outcome, dry_run))
    if forget and isinstance(outcome.error, UnreachableError) and not dry_run:
        why = outcome.error.message
        outcome.status, outcome.error = "forgotten", None
        outcome.done.append(f"{why}: dropped from the inventory, nothing removed on it")
    return outcome


def _clean(ro: Rollout, host: HostSpec, outcome: Outcome, dry_run: bool) -> None:
    """Facts, the leave plan, apply it, and check that nothing of ours is left."""
    ro.progress(host.name, "connecting")
    transport = ro.transport(host)
    try:
        ro.progress(host.name, "reading facts")
        outcome.facts = facts_mod.gather(transport, VIP)
        outcome.plan = replace(plan_leave(outcome.facts), host=host.name)
        if dry_run:
            outcome.status = "planned"
            return
        applier = Applier(
            transport,
            reconnect=lambda: ro.transport(host),
            report=lambda what: ro.progress(host.name, what),
        )
        outcome.done = applier.apply(outcome.plan)
        left = plan_leave(facts_mod.gather(transport, VIP))
        if not left.empty:
            steps = "; ".join(step.title for step in left.steps)
            raise ProvisionError(f"{host.name}: still has meshd's {steps}")
        outcome.status = "left"
    finally:
        transport.close()
