"""Join, leave and survey many hosts at once: facts -> plan -> apply per host, in parallel.

Each host's work ends in an ``Outcome`` (never an exception): the commands
render one table and exit non-zero on partial failure. After hosts join or
leave, every joined host gets the new registry over its admin API.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from meshctl import bundle as bundles
from meshctl import state
from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.ca import sign_csr
from meshctl.inventory import VIP_RANGE, HostSpec, Inventory
from meshctl.provision import facts as facts_mod
from meshctl.provision.apply import Applier
from meshctl.provision.desired import DesiredHost, desired_host
from meshctl.provision.facts import HostFacts
from meshctl.provision.guard import ROLLBACK_DEADLINE
from meshctl.provision.plan import Enroll, Plan, plan_join, plan_leave
from meshctl.transport import SshTransport, Target, Transport, UnreachableError
from meshctl.workspace import Workspace
from meshd.errors import MeshError, ProvisionError
from meshd.identity import SpiffeId, check_name
from meshd.pki import cert_pem, load_certs
from meshd.registry import Registry
from meshd.stats import UNREPORTED, Stats

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[str, str], None]  # host, what is happening
MAX_PARALLEL = 16

VIP = str(VIP_RANGE)


@dataclass(frozen=True)
class SshOptions:
    key_file: Path | None = None
    sudo: bool = False
    accept_new_host_key: bool = False
    timeout: float = 10.0
    remember_new_host_keys: bool = True  # False for --dry-run: it changes nothing


Connector = Callable[[Workspace, HostSpec, SshOptions], Transport]


def ssh_connect(ws: Workspace, host: HostSpec, options: SshOptions) -> Transport:
    default_key = ws.config.defaults.ssh_key
    return SshTransport(
        Target(host.address, host.user, host.port),
        ws.root / "known_hosts",
        key_file=options.key_file or (Path(default_key) if default_key else None),
        accept_new=options.accept_new_host_key,
        use_sudo=options.sudo,
        timeout=options.timeout,
        remember_new=options.remember_new_host_keys,
    )


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
class Rollout:
    """Everything a multi-host command needs from the outside world."""

    ws: Workspace
    ssh: SshOptions
    connect: Connector = ssh_connect
    progress: Progress = lambda host, what: None
    passphrase: Callable[[], str | None] = lambda: None
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    bundle_cache: Path = bundles.DEFAULT_CACHE
    rollback_deadline: float = ROLLBACK_DEADLINE
    admin_timeout: float = 5.0
    sync_wait: float = 15.0  # seconds a pushed registry may take to reach a host's rules and names
    _bundles: dict[bundles.Target, bundles.Bundle] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- helpers
    def bundle_for(self, facts: HostFacts, offline: bool = False) -> bundles.Bundle:
        """The meshd bundle for the host's Python and machine (``offline``: only if cached)."""
        target = bundles.Target(facts.python or "", facts.machine)
        with self._lock:  # one build per Python/machine, shared by every host like it
            if target not in self._bundles:
                self._bundles[target] = bundles.build(target, self.bundle_cache, offline)
            return self._bundles[target]

    def signer(self) -> Callable[[bytes, tuple[SpiffeId, ...], int], bytes]:
        issuer = self.ws.issuer(self.passphrase())

        def sign(csr_pem: bytes, ids: tuple[SpiffeId, ...], hours: int) -> bytes:
            csr = x509.load_pem_x509_csr(csr_pem)
            cert = sign_csr(csr, list(ids), issuer, self.now(), dt.timedelta(hours=hours))
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

    def admin(self) -> AdminClient:
        return AdminClient.for_workspace(self.ws, timeout=self.admin_timeout)

    def endpoint(self, host: HostSpec) -> AdminEndpoint:
        return AdminEndpoint(host.name, host.address, self.ws.config.defaults.admin_port)


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` in threads (SSH is I/O bound), results in input order."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(fn, items))


def _contained(outcome: Outcome, fn: Callable[[], None]) -> Outcome:
    """Run ``fn``; any error ends up on the outcome, never escapes (one host fails alone)."""
    try:
        fn()
    except MeshError as e:
        outcome.status, outcome.error = "failed", e
    except Exception as e:  # a bug or an unexpected answer: still one host's failure
        outcome.status = "failed"
        outcome.error = ProvisionError(f"{outcome.host}: {type(e).__name__}: {e}")
    return outcome


# -- join
@dataclass
class _Session:
    host: HostSpec
    outcome: Outcome
    transport: Transport | None = None


def registry_for(
    ro: Rollout,
    inventory: Inventory,
    names: Iterable[str],
    ipv6: dict[str, tuple[str, ...]] | None = None,
) -> Registry:
    """The versioned registry of the hosts ``names`` (the joined ones) of ``inventory``.

    Each endpoint carries its host's IPv6 addresses, so that the other hosts'
    ip6tables rules catch an app's IPv6 connection to it: from ``ipv6`` (the
    facts of hosts joining now) or else the host's join record.
    """
    wanted = set(names)
    subset = Inventory(tuple(h for h in inventory.hosts if h.name in wanted), inventory.vips)
    known = {name: tuple(r.get("ipv6", ())) for name, r in state.joined(ro.ws).items()}
    known |= ipv6 or {}
    services = subset.services(ro.ws.config.defaults.mesh_port, known)
    return state.versioned_registry(ro.ws, services)


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
        registry = registry_for(ro, inventory, members, _ipv6_of(ready))
        parallel(lambda s: _contained(s.outcome, lambda: _plan(ro, s, registry)), ready)
        if dry_run:
            for s in ready:
                s.outcome.status = "planned" if s.outcome.ok else s.outcome.status
            return [s.outcome for s in sessions]
        needs_ca = any(s.outcome.plan and s.outcome.plan.has(Enroll) for s in ready)
        sign = ro.signer() if needs_ca else None  # a wrong passphrase stops here: nothing changed
        state.save_inventory(ro.ws, inventory)
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
    s.transport = ro.connect(ro.ws, s.host, ro.ssh)
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
        reconnect=lambda: ro.connect(ro.ws, s.host, ro.ssh),
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
    }


# -- registry push
def push_registry(ro: Rollout, names: Iterable[str]) -> list[Outcome]:
    """Send the current registry (of the joined hosts) to each of ``names``."""
    inventory = state.load_inventory(ro.ws)
    members = set(state.joined(ro.ws))
    registry = registry_for(ro, inventory, members)
    state.record_registry(ro.ws, registry)
    client = ro.admin()

    def push(host: HostSpec) -> Outcome:
        outcome = Outcome(host.name, host.address, "registry")

        def send() -> None:
            endpoint = ro.endpoint(host)
            ro.progress(host.name, f"pushing registry version {registry.version}")
            result = client.put_document(endpoint, "registry", registry.to_dict())
            version = result.get("version")
            if result.get("status") != "applied":
                # meshd had it already: nothing new to wait for, but an earlier push whose
                # rules and names never followed must not pass unnoticed on a second run
                _check_not_behind(client.stats(endpoint), host.name, version)
                return
            ro.progress(host.name, "waiting for its rules and names to follow")
            if _wait_synced(ro, client, endpoint, host.name, version):
                outcome.done.append(f"registry version {version} applied, rules and names follow")
            else:  # a meshd from before ``meshd sync`` does not say
                outcome.done.append(f"registry version {version} applied")

        return _contained(outcome, send)

    targets = [h for h in inventory.hosts if h.name in set(names) and h.name in members]
    return parallel(push, targets)


def _wait_synced(
    ro: Rollout, client: AdminClient, endpoint: AdminEndpoint, host: str, version: object
) -> bool:
    """Wait until meshd-sync.service has put ``version``'s rules and names in place.

    meshd takes a pushed registry at once, but the redirect rules and the
    /etc/hosts names follow through a root unit a moment later: until then a
    new service's name does not resolve on the host. False when the host's
    meshd does not report it (a version from before ``meshd sync``).
    """
    deadline = time.monotonic() + ro.sync_wait
    while True:
        seen = client.stats(endpoint).synced_registry_version
        if seen is UNREPORTED:
            return False
        if isinstance(seen, int) and isinstance(version, int) and seen >= version:
            return True
        if time.monotonic() >= deadline:
            raise _not_followed(host, version, seen, f"within {ro.sync_wait:g}s")
        time.sleep(0.2)


def _check_not_behind(stats: Stats, host: str, version: object) -> None:
    """For a push meshd already had: fail if its sync is known to lag behind it.

    No note at all (none since boot, or a meshd from before ``meshd sync``) is
    not a failure here: the boot-time rules come from the same registry.
    """
    seen = stats.synced_registry_version
    if isinstance(seen, int) and isinstance(version, int) and seen < version:
        raise _not_followed(host, version, seen, "since it was pushed")


def _not_followed(host: str, version: object, seen: object, when: str) -> ProvisionError:
    state = (
        f"they follow version {seen}"
        if seen is not None
        else "no meshd sync has run since the host booted or meshd was installed"
    )
    return ProvisionError(
        f"{host}: meshd took registry version {version}, but the host's redirect rules "
        f"and /etc/hosts names did not follow {when} ({state})",
        hint=f"on {host}, systemctl status meshd-sync.path meshd-sync.service and "
        "journalctl -u meshd-sync say why; once fixed, systemctl start meshd-sync.service "
        "there puts them in place",
    )


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
    transport = ro.connect(ro.ws, host, ro.ssh)
    try:
        ro.progress(host.name, "reading facts")
        outcome.facts = facts_mod.gather(transport, VIP)
        outcome.plan = replace(plan_leave(outcome.facts), host=host.name)
        if dry_run:
            outcome.status = "planned"
            return
        applier = Applier(
            transport,
            reconnect=lambda: ro.connect(ro.ws, host, ro.ssh),
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
