"""``hosts.toml``: the inventory of meshed hosts and the services they run.

    [hosts.web1]
    address = "10.0.0.11"
    user = "root"            # SSH user (non-root users go through sudo)
    port = 22                # SSH port
    fail_mode = "closed"     # or "open"
    labels = { zone = "a" }
    issuer = true            # its meshd signs renewals (meshctl issuer add)

    [[hosts.web1.services]]
    name = "web"
    port = 8080
    run_as = "www-data"      # optional: its connections carry the service's identity

    [vips]                   # allocated once per service, never reused for another
    web = "10.255.0.1"

Pure parsing, validation (with the field path in every message) and the
derived documents meshctl pushes: the registry and each host's identities.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshd.errors import ConfigError
from meshd.identity import SpiffeId, check_name, check_user, make_id
from meshd.registry import Endpoint, IssuerRef, Registry, Service, check_label
from meshd.schema import Fields

VIP_RANGE = ipaddress.ip_network("10.255.0.0/16")
FAIL_MODES = ("open", "closed")


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int
    run_as: str | None = None


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    user: str = "root"
    port: int = 22
    fail_mode: str = "closed"
    labels: tuple[tuple[str, str], ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    issuer: bool = False  # its meshd holds an issuer CA and signs renewals

    def identities(self, trust_domain: str) -> list[SpiffeId]:
        """What this host's certificate must name: the host, then its services."""
        ids = [make_id(trust_domain, "host", self.name)]
        return ids + [make_id(trust_domain, "svc", s.name) for s in self.services]


@dataclass(frozen=True)
class Inventory:
    hosts: tuple[HostSpec, ...] = ()
    vips: tuple[tuple[str, str], ...] = ()  # service -> virtual IP, sorted by service

    def host(self, name: str) -> HostSpec | None:
        return next((h for h in self.hosts if h.name == name), None)

    def with_host(self, host: HostSpec) -> Inventory:
        """The inventory with ``host`` added or replaced, VIPs allocated for new services."""
        hosts = (*(h for h in self.hosts if h.name != host.name), host)
        updated = replace(self, hosts=tuple(sorted(hosts, key=lambda h: h.name)))
        return updated.allocate_vips()

    def without_host(self, name: str) -> Inventory:
        """The inventory without ``name``; VIPs stay allocated (a service may come back)."""
        return replace(self, hosts=tuple(h for h in self.hosts if h.name != name))

    def allocate_vips(self) -> Inventory:
        taken = dict(self.vips)
        used = set(taken.values())
        free = (str(ip) for ip in VIP_RANGE.hosts() if str(ip) not in used)
        for service in sorted({s.name for h in self.hosts for s in h.services}):
            if service not in taken:
                taken[service] = next(free)
        return replace(self, vips=tuple(sorted(taken.items())))

    def registry(
        self, version: int, mesh_port: int, ipv6: Mapping[str, tuple[str, ...]] | None = None
    ) -> Registry:
        """The registry every meshd gets (the shape is meshd.registry's)."""
        return Registry.of(version, self.services(mesh_port, ipv6 or {}))

    def services(self, mesh_port: int, ipv6: Mapping[str, tuple[str, ...]]) -> list[Service]:
        """Each service with an endpoint per host running it; ``ipv6``: host -> its addresses."""
        vips, ports = dict(self.vips), dict[str, int]()
        endpoints: dict[str, list[Endpoint]] = {}
        for host in self.hosts:
            addresses6 = ipv6.get(host.name, ())
            for s in host.services:
                ports.setdefault(s.name, s.port)  # one port per service (``_check``)
                endpoint = Endpoint(
                    host.name, host.address, s.port, mesh_port, host.labels, addresses6
                )
                endpoints.setdefault(s.name, []).append(endpoint)
        return [Service(n, vips[n], ports[n], tuple(e)) for n, e in endpoints.items()]

    def issuers(self, admin_port: int, names: Iterable[str]) -> list[IssuerRef]:
        """The issuers among the hosts ``names``, where renewing meshds reach them."""
        wanted = set(names)
        return [
            IssuerRef(h.name, h.address, admin_port)
            for h in self.hosts
            if h.issuer and h.name in wanted
        ]

    def with_issuer(self, name: str, issuer: bool) -> Inventory:
        """The inventory with host ``name`` made an issuer, or no longer one."""
        host = self.host(name)
        return self if host is None else self.with_host(replace(host, issuer=issuer))

    def to_toml_dict(self) -> dict[str, Any]:
        hosts: dict[str, Any] = {}
        for h in self.hosts:
            entry: dict[str, Any] = {
                "address": h.address,
                "user": h.user,
                "port": h.port,
                "fail_mode": h.fail_mode,
                "labels": dict(h.labels),
                **({"issuer": True} if h.issuer else {}),
            }
            entry["services"] = [
                {"name": s.name, "port": s.port, **({"run_as": s.run_as} if s.run_as else {})}
                for s in h.services
            ]
            hosts[h.name] = entry
        return {"hosts": hosts, "vips": dict(self.vips)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str) -> Inventory:
        top = Fields(doc, source)
        top.unknown({"hosts", "vips"})
        hosts_table = top.table("hosts", required=False)
        hosts = tuple(_host(name, hosts_table.table(name)) for name in sorted(hosts_table.data))
        vips_table = top.table("vips", required=False)
        vips = tuple(sorted((name, _vip(vips_table, name)) for name in vips_table.data))
        inventory = cls(hosts, vips)
        _check(top, inventory)
        return inventory


def _host(name: str, f: Fields) -> HostSpec:
    f.unknown({"address", "user", "port", "fail_mode", "labels", "services", "issuer"})
    f.checked("name", name, lambda n: check_name("host", n))
    labels = f.get("labels", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise f.fail("labels", "labels map strings to strings")
    for key, value in labels.items():  # meshd refuses a registry with any other label
        f.checked("labels", (key, value), lambda label: check_label(*label))
    address = f.get("address", str)
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise f.fail("address", f"{address!r} is not an IPv4 address") from None
    if ip in VIP_RANGE:  # meshd refuses an endpoint there: the range is routed locally
        raise f.fail("address", f"{address} is inside the virtual IP range {VIP_RANGE}")
    return HostSpec(
        name=name,
        address=address,
        user=f.get("user", str, "root"),
        port=f.port("port", 22),
        fail_mode=f.choice("fail_mode", FAIL_MODES, "closed"),
        labels=tuple(sorted(labels.items())),
        services=tuple(_service(s) for s in f.tables("services")),
        issuer=f.get("issuer", bool, False),
    )


def _service(f: Fields) -> ServiceSpec:
    f.unknown({"name", "port", "run_as"})
    name = f.checked("name", f.get("name", str), lambda n: check_name("service", n))
    run_as = f.optional("run_as", str)
    if run_as is not None:
        f.checked("run_as", run_as, check_user)
    return ServiceSpec(name, f.port("port"), run_as)


def _vip(f: Fields, name: str) -> str:
    text = f.get(name, str)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise f.fail(name, f"{text!r} is not an IP address") from None
    if ip not in VIP_RANGE:
        raise f.fail(name, f"{text} is outside the virtual IP range {VIP_RANGE}")
    return text


def _check(top: Fields, inventory: Inventory) -> None:
    seen_vips: dict[str, str] = {}
    for service, vip in inventory.vips:
        if vip in seen_vips:
            raise top.fail(f"vips.{service}", f"{vip} is also the VIP of {seen_vips[vip]!r}")
        seen_vips[vip] = service
    ports: dict[str, int] = {}
    for host in inventory.hosts:
        top.checked(f"hosts.{host.name}.services", host, _check_ports)
        for i, s in enumerate(host.services):
            if ports.setdefault(s.name, s.port) != s.port:
                raise top.fail(
                    f"hosts.{host.name}.services[{i}].port",
                    f"service {s.name!r} uses port {ports[s.name]} on other hosts",
                )


def parse_service(text: str) -> ServiceSpec:
    """``NAME:PORT[:RUNAS]`` from the command line."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise ConfigError(
            f"--service {text!r}: expected NAME:PORT or NAME:PORT:RUNAS",
            hint="for example --service api:8080:www-data",
        )
    port = int(parts[1])
    if not 1 <= port <= 65535:
        raise ConfigError(f"--service {text!r}: {port} is not a port number")
    run_as = check_user(parts[2]) if len(parts) == 3 else None
    return ServiceSpec(check_name("service", parts[0]), port, run_as)


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` from ``--label``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--label {text!r}: expected KEY=VALUE", hint="e.g. --label zone=a")
    try:
        return check_label(key, value)
    except ConfigError as e:
        raise ConfigError(f"--label {text!r}: {e.message}", hint=e.hint) from None


@dataclass(frozen=True)
class HostOverrides:
    """What ``meshctl join`` options say about the hosts it names (None: keep what is there)."""

    services: tuple[ServiceSpec, ...] | None = None
    labels: tuple[tuple[str, str], ...] = ()
    fail_mode: str | None = None
    name: str | None = None

    @classmethod
    def parse(
        cls,
        services: list[str] | None,
        labels: list[str] | None,
        fail_mode: str | None,
        name: str | None = None,
    ) -> HostOverrides:
        """From the command line's ``--service``, ``--label``, ``--fail-mode``, ``--name``."""
        if fail_mode not in (None, *FAIL_MODES):
            raise ConfigError(f"--fail-mode {fail_mode!r}: expected open or closed")
        return cls(
            services=tuple(parse_service(s) for s in services) if services else None,
            labels=tuple(parse_label(label) for label in labels or ()),
            fail_mode=fail_mode,
            name=name,
        )


def select_hosts(
    inventory: Inventory,
    targets: list[str],
    all_hosts: bool,
    overrides: HostOverrides,
    default_fail_mode: str,
) -> list[HostSpec]:
    """The hosts a command acts on: inventory names, [USER@]HOST[:PORT] targets, or --all.

    A target that is neither an inventory name nor a known address is a new
    host; its name is ``--name`` or, if empty here, its hostname (read later).
    """
    if all_hosts and targets:
        raise ConfigError("give hosts or --all, not both")
    if overrides.name and len(targets) != 1:
        raise ConfigError("--name names one host; give exactly one target with it")
    if overrides.name:
        check_name("host", overrides.name)
    if all_hosts and (overrides.services is not None or overrides.labels):
        raise ConfigError(
            "--service and --label with --all would give every host the same ones",
            hint="name the hosts to change, or edit hosts.toml",
        )
    if all_hosts:
        if not inventory.hosts:
            raise ConfigError(
                "the inventory (hosts.toml) has no hosts",
                hint="join one: meshctl join [USER@]HOST --service NAME:PORT",
            )
        return [_override(h, overrides) for h in inventory.hosts]
    if not targets:
        raise ConfigError("no hosts given", hint="name hosts ([USER@]HOST[:PORT]) or pass --all")
    hosts = [_target(inventory, t, overrides, default_fail_mode) for t in targets]
    addresses = [h.address for h in hosts]
    twice = sorted({a for a in addresses if addresses.count(a) > 1})
    if twice:
        raise ConfigError(f"{', '.join(twice)} given twice (by name and by address?)")
    for host in hosts:
        _check_ports(host)
    return hosts


def _check_ports(host: HostSpec) -> None:
    """Two services of one host cannot share a port (meshd routes by address and port)."""
    seen: dict[int, str] = {}
    for service in host.services:
        if seen.setdefault(service.port, service.name) != service.name:
            raise ConfigError(
                f"{host.name or host.address}: services {seen[service.port]!r} and "
                f"{service.name!r} both use port {service.port}",
                hint="give each service of a host its own port",
            )


def _target(inventory: Inventory, text: str, o: HostOverrides, fail_mode: str) -> HostSpec:
    known = inventory.host(text)
    if known is not None:
        if o.name and o.name != known.name:
            raise ConfigError(
                f"{text!r} is a host of hosts.toml; a host cannot be renamed",
                hint=f"meshctl leave {text} first, then join its address as {o.name}",
            )
        return _override(known, o)
    user, _, rest = text.rpartition("@")
    address, _, port_text = rest.partition(":")
    if not address or (port_text and not port_text.isdigit()):
        raise ConfigError(f"{text!r} is neither a host of hosts.toml nor [USER@]HOST[:PORT]")
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise ConfigError(
            f"{text!r}: the mesh needs the host's IPv4 address (its rules and registry use it)",
            hint=f"give the address instead, e.g. meshctl join root@10.0.0.11; {address} "
            "is no host of hosts.toml either",
        ) from None
    known = next((h for h in inventory.hosts if h.address == address), None)
    if known is not None and o.name and o.name != known.name:
        raise ConfigError(
            f"{address} is already {known.name!r} in hosts.toml; a host cannot be renamed",
            hint=f"meshctl leave {known.name} first, then join it as {o.name}",
        )
    base = known or HostSpec(name=o.name or "", address=address, fail_mode=fail_mode)
    base = replace(
        base,
        user=user or base.user,
        port=int(port_text) if port_text else base.port,
    )
    return _override(base, o)


def _override(host: HostSpec, o: HostOverrides) -> HostSpec:
    labels = dict(host.labels) | dict(o.labels)
    return replace(
        host,
        name=o.name or host.name,
        services=o.services if o.services is not None else host.services,
        labels=tuple(sorted(labels.items())),
        fail_mode=o.fail_mode or host.fail_mode,
    )
