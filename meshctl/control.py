"""Day-2 control: the documents meshctl pushes to joined hosts over meshd's admin API.

SSH is for bootstrap and repair (``meshctl.provision``); once a host has
joined, what it runs with travels over the mTLS admin API
(docs/architecture.md). Today that is the registry, after every join or leave:
each joined host gets it, and meshctl waits until the host's redirect rules
and /etc/hosts names follow it (``meshd sync`` notes the version it put in
place, and meshd reports it on /stats). Pushes of policy and config belong
here too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshctl import state
from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.fleet import Fleet, HostResults, fan_out
from meshctl.inventory import HostSpec, Inventory
from meshctl.revocation import in_force
from meshd.errors import ProvisionError
from meshd.registry import Registry, Revocation
from meshd.stats import UNREPORTED, Stats


@dataclass(frozen=True)
class Pushed:
    """What one host did with a pushed document: its version, and what changed on the host."""

    version: object
    done: tuple[str, ...] = ()  # empty: meshd had it already


def registry_for(
    fleet: Fleet,
    inventory: Inventory,
    names: Iterable[str],
    ipv6: dict[str, tuple[str, ...]] | None = None,
    revocations: Mapping[str, Revocation] | None = None,
) -> Registry:
    """The versioned registry of the hosts ``names`` (the joined ones) of ``inventory``.

    Each endpoint carries its host's IPv6 addresses, so that the other hosts'
    ip6tables rules catch an app's IPv6 connection to it: from ``ipv6`` (the
    facts of hosts joining now) or else the host's join record. The
    revocations the workspace keeps (or ``revocations``: those of a join, not
    yet kept) go with it while in force.
    """
    wanted = set(names)
    subset = Inventory(tuple(h for h in inventory.hosts if h.name in wanted), inventory.vips)
    known = {name: tuple(r.get("ipv6", ())) for name, r in state.joined(fleet.ws).items()}
    known |= ipv6 or {}
    defaults = fleet.ws.config.defaults
    services = subset.services(defaults.mesh_port, known)
    issuers = inventory.issuers(defaults.admin_port, wanted)  # where renewals are signed
    kept = state.revocations(fleet.ws) if revocations is None else revocations
    revoked = in_force(kept.values(), fleet.now())
    return state.versioned_registry(fleet.ws, services, issuers, revoked)


def current_registry(fleet: Fleet) -> Registry:
    """The registry of the workspace's joined hosts, as it stands now."""
    return registry_for(fleet, state.load_inventory(fleet.ws), state.joined(fleet.ws))


def push_registry(fleet: Fleet, names: Iterable[str]) -> HostResults[Pushed]:
    """Send the current registry (of the joined hosts) to each joined host of ``names``."""
    inventory = state.load_inventory(fleet.ws)
    members = set(state.joined(fleet.ws))
    registry = registry_for(fleet, inventory, members)
    state.record_registry(fleet.ws, registry)
    client = fleet.admin()
    wanted = set(names) & members
    targets = [h for h in inventory.hosts if h.name in wanted]
    return fan_out(lambda host: _push(fleet, client, host, registry), targets)


def _push(fleet: Fleet, client: AdminClient, host: HostSpec, registry: Registry) -> Pushed:
    """One host takes ``registry``; then its rules and names must follow it."""
    endpoint = fleet.endpoint(host)
    fleet.progress(host.name, f"pushing registry version {registry.version}")
    result = client.put_document(endpoint, "registry", registry.to_dict())
    version = result.get("version")
    if result.get("status") != "applied":
        # meshd had it already: nothing new to wait for, but an earlier push whose
        # rules and names never followed must not pass unnoticed on a second run
        _check_not_behind(client.stats(endpoint), host.name, version)
        return Pushed(version)
    fleet.progress(host.name, "waiting for its rules and names to follow")
    if _wait_synced(fleet, client, endpoint, host.name, version):
        return Pushed(version, (f"registry version {version} applied, rules and names follow",))
    return Pushed(version, (f"registry version {version} applied",))  # a meshd before ``sync``


def _wait_synced(
    fleet: Fleet, client: AdminClient, endpoint: AdminEndpoint, host: str, version: object
) -> bool:
    """Wait until meshd-sync.service has put ``version``'s rules and names in place.

    meshd takes a pushed registry at once, but the redirect rules and the
    /etc/hosts names follow through a root unit a moment later: until then a
    new service's name does not resolve on the host. False when the host's
    meshd does not report it (a version from before ``meshd sync``).
    """
    deadline = time.monotonic() + fleet.sync_wait
    while True:
        seen = client.stats(endpoint).synced_registry_version
        if seen is UNREPORTED:
            return False
        if isinstance(seen, int) and isinstance(version, int) and seen >= version:
            return True
        if time.monotonic() >= deadline:
            raise _not_followed(host, version, seen, f"within {fleet.sync_wait:g}s")
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
    follows = (
        f"they follow version {seen}"
        if seen is not None
        else "no meshd sync has run since the host booted or meshd was installed"
    )
    return ProvisionError(
        f"{host}: meshd took registry version {version}, but the host's redirect rules "
        f"and /etc/hosts names did not follow {when} ({follows})",
        hint=f"on {host}, systemctl status meshd-sync.path meshd-sync.service and "
        "journalctl -u meshd-sync say why; once fixed, systemctl start meshd-sync.service "
        "there puts them in place",
    )
