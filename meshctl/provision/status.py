"""``meshctl status``: what every host of the inventory is like now.

Two looks per host, in parallel: SSH facts (meshd's unit state, rules,
certificate, drift from the workspace, computed by the same planner as
``join``) and meshd's admin API over mTLS (readiness, versions, uptime).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from meshctl import policies, state
from meshctl.control import registry_for
from meshctl.fleet import parallel
from meshctl.inventory import VIP_RANGE, HostSpec
from meshctl.provision import facts as facts_mod
from meshctl.provision.plan import rules_present
from meshctl.provision.rollout import Rollout
from meshd.errors import MeshError, ProvisionError
from meshd.registry import Registry
from meshd.rules import FILTER, NAT, REDIRECT, REJECT, V6, our_jumps
from meshd.stats import RenewalReport, Stats

WARN_LIFE_LEFT = 1 / 3  # warn when less than a third of the certificate's life is left

VIP = str(VIP_RANGE)


@dataclass
class HostStatus:
    host: str
    address: str
    joined: bool
    fail_mode: str = "closed"
    reachable: bool = False
    error: str | None = None
    meshd: str = "unknown"  # systemd ActiveState
    restarts: int = 0
    ready: bool = False
    version: str | None = None  # meshd's own version
    bundle: str | None = None  # installed bundle version
    uptime_seconds: float | None = None
    registry_version: int | None = None
    expected_registry: int | None = None  # the workspace's current registry version
    config_version: int | None = None  # a pushed config document, None: the file
    policy_version: int | None = None  # the policy document meshd runs (None: none)
    expected_policy: int | None = None  # the workspace's policy version (None: never pushed)
    cert_not_after: dt.datetime | None = None
    cert_life_left: float | None = None  # share of the certificate's life still ahead
    rules: bool = False
    # closed mode's boot fallback holds the host: meshd-rules.service could not make the
    # rules from the config (the last applied ones are in; meshd, likely, is down)
    rules_fallback: bool = False
    ipv6: str | None = None  # meshd's word (/stats): "served", or why not
    ipv6_rules: str = ""  # what the host's ip6tables rules do: REDIRECT, REJECT, "" (none)
    drift: list[str] = field(default_factory=list)
    admin_error: str | None = None
    renewal: RenewalReport | None = None  # how meshd renews its own certificate (/stats)
    issuer_not_after: str = ""  # its issuer CA's end, when it is one (/stats)

    @property
    def cert_warning(self) -> bool:
        return self.cert_life_left is not None and self.cert_life_left < WARN_LIFE_LEFT

    @property
    def healthy(self) -> bool:
        return (
            self.joined
            and self.reachable
            and self.meshd == "active"
            and self.ready
            and self.rules
            and not self.rules_fallback
            and not self.ipv6_exposed
            and not self.drift
            and not self.cert_warning
            and self.admin_error is None
            and self.registry_version == self.expected_registry
            and not self.policy_behind
        )

    @property
    def policy_behind(self) -> bool:
        """meshd answered, and does not run the workspace's policy version (it was down at
        the last push, say)."""
        known = self.expected_policy is not None and self.version is not None
        return known and self.policy_version != self.expected_policy

    @property
    def ipv6_exposed(self) -> bool:
        """meshd does not listen for IPv6, yet the rules redirect it to meshd's ports: whoever
        binds them (>= 1024: any local user) gets what the rules catch."""
        ipv6 = self.ipv6 or "served"
        served = ipv6 == "served" or ipv6.startswith("absent")
        return not served and self.ipv6_rules == REDIRECT

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("cert_not_after", "renewal")}
        data["renewal"] = self.renewal.to_json() if self.renewal else None
        data["cert_not_after"] = self.cert_not_after.isoformat() if self.cert_not_after else None
        data["cert_warning"] = self.cert_warning
        data["healthy"] = self.healthy
        data["ipv6_exposed"] = self.ipv6_exposed
        data["policy_behind"] = self.policy_behind
        return data


def survey(ro: Rollout) -> list[HostStatus]:
    """The status of every host in the inventory."""
    inventory = state.load_inventory(ro.ws)
    members = state.joined(ro.ws)
    registry = registry_for(ro, inventory, members)
    client = ro.admin()
    policy = policies.recorded_version(ro.ws)

    def one(host: HostSpec) -> HostStatus:
        status = HostStatus(host.name, host.address, host.name in members, host.fail_mode)
        status.expected_registry = registry.version
        status.expected_policy = policy if host.name in members else None
        try:
            _ssh_look(ro, host, status, registry)
        except MeshError as e:
            status.error = e.message
        if status.meshd == "active" or not status.reachable:
            try:
                _admin_look(client.stats(ro.endpoint(host)), status)
            except MeshError as e:
                status.admin_error = e.message
        return status

    return parallel(one, inventory.hosts)


def _ssh_look(ro: Rollout, host: HostSpec, status: HostStatus, registry: Registry) -> None:
    transport = ro.connect(ro.ws, host, ro.ssh)
    try:
        facts = facts_mod.gather(transport, VIP)
    finally:
        transport.close()
    status.reachable = True
    status.meshd, status.restarts = facts.meshd.active, facts.meshd.restarts
    status.bundle = next((v for v in facts.versions if v != "bin"), None)
    status.rules = bool(facts.rules_record) and rules_present(facts)
    status.rules_fallback = facts.fallback
    status.ipv6_rules = ipv6_rules(facts)
    _cert_look(facts.cert_pem, ro.now(), status)
    if not status.joined or not facts.python:
        return
    listed = tuple(state.joined(ro.ws).get(host.name, {}).get("ipv6", ()))
    if listed != facts.ipv6_addresses:  # the other hosts' rules catch the listed ones only
        status.drift.append(
            f"its IPv6 addresses changed (the mesh lists {', '.join(listed) or 'none'}): join it"
        )
    try:  # status never downloads: without cached wheels the installed version counts
        version = ro.bundle_for(facts, offline=True).version
    except ProvisionError:
        version = status.bundle or ""
    desired = ro.desired(host, registry, version)
    status.drift = [step.title for step in ro.plan(facts, desired).steps]


def ipv6_rules(facts: facts_mod.HostFacts) -> str:
    """What the host's ip6tables rules do with what they catch ("" without any)."""
    saved = facts.tables(V6) if facts.ipv6 else ""
    return REJECT if our_jumps(saved, FILTER) else REDIRECT if our_jumps(saved, NAT) else ""


def _cert_look(pem: str, now: dt.datetime, status: HostStatus) -> None:
    if not pem:
        return
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    status.cert_not_after = cert.not_valid_after_utc
    status.cert_life_left = max(0.0, (cert.not_valid_after_utc - now) / life)


def _admin_look(stats: Stats, status: HostStatus) -> None:
    status.ready = stats.ready and not stats.draining
    status.version = stats.version
    status.uptime_seconds = stats.uptime_seconds
    status.registry_version = stats.registry_version
    status.config_version = stats.documents.get("config")
    status.policy_version = stats.documents.get("policy")
    status.ipv6 = stats.ipv6
    status.renewal = stats.renewal
    status.issuer_not_after = stats.issuer.not_after if stats.issuer else ""
