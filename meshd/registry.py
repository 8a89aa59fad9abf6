"""The service registry: which services exist, their virtual IPs and endpoints.

meshctl builds it (``meshctl.inventory``) and pushes it to every meshd (JSON,
versioned); meshd compiles it into the routes its admission decides with
(``meshd.policy.bundle``: an original destination to a service, or to one
endpoint); ``Registry.route`` gives the same answer, but the proxy never
calls it (only tests do). This module is the one place the shape is defined, both
ways: ``Registry.to_dict`` (and ``to_json``, the file) is its only writer,
``Registry.from_dict`` its only reader, and ``from_dict(r.to_dict()) == r``.
Pure: parsing, validation and lookups, no I/O. Every field is checked at the
door (names as DNS labels, addresses as one host's unicast address, ports, labels,
the version's range), and ``check_vip_range`` holds the VIPs to the host's
``[interception] vip_range`` (and loopback endpoints to a mesh on one machine).

    {"version": 3,
     "services": {"api": {"vip": "10.255.0.2", "port": 8080,
                          "endpoints": [{"host": "h2", "address": "10.77.0.12",
                                         "port": 8080, "mesh_port": 15443,
                                         "ipv6": ["fd00:77::12"],
                                         "labels": {"version": "v1"}}]}}}

``address`` is the IPv4 address meshd dials (links are IPv4); ``ipv6`` (optional)
lists the endpoint host's global IPv6 addresses, so that an app's IPv6
connection to one of them is intercepted and mapped to the same endpoint.

Two optional lists carry the identity lifecycle with the registry, so that one
push reaches every meshd (both are left out of the document when empty, so an
older meshd still reads a registry without them)::

     "issuers": [{"host": "h1", "address": "10.77.0.11", "port": 15000}],
     "revoked": [{"host": "h3", "ids": ["spiffe://prod.mesh/host/h3"],
                  "serials": ["1F2E..."], "until": 1767225600, "before": 1767139200}]

``issuers`` are the hosts whose meshd signs renewals (``port``: its admin
API). ``revoked`` names what no meshd may accept any more: certificates
carrying one of ``ids``, or whose serial is in ``serials`` (upper-case hex
without separators or leading zeros, ``format(n, "X")``: ``ssl``'s
``getpeercert()`` pads to whole bytes, so compare through ``serial_key``); an entry matters
until ``until`` (Unix seconds, the latest expiry of anything it names) and
meshctl prunes it afterwards. ``before`` (Unix seconds; left out when 0, so an
older meshd still reads the entry) limits what ``ids`` revoke to certificates
whose notBefore lies before it: the host name joined again at that time, and
every certificate signed for it since starts at or after it (``meshctl join``'s
signer, an issuer: ``Registry.not_before_floor``). 0 revokes every certificate
carrying one of ``ids``. Serials are revoked whatever ``before`` says.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from meshd.errors import ConfigError
from meshd.identity import SpiffeId, check_name
from meshd.netfacts import fmt
from meshd.schema import Fields, brief

ANY = "0.0.0.0"  # noqa: S104 - where a meshd serving other hosts listens for links
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._:/=+@-]{0,63}")  # no space, quote or control character


@dataclass(frozen=True)
class Endpoint:
    host: str
    address: str
    port: int
    mesh_port: int = 15443
    labels: tuple[tuple[str, str], ...] = ()
    ipv6: tuple[str, ...] = ()  # the host's other addresses: route here, never dialled

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address an app may use to reach this endpoint (the dial address first)."""
        return (self.address, *self.ipv6)

    @property
    def link_key(self) -> tuple[str, int]:
        """Where this endpoint's meshd listens for sidecar links."""
        return self.address, self.mesh_port


@dataclass(frozen=True)
class Service:
    name: str
    vip: str
    port: int
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class IssuerRef:
    """A host whose meshd signs renewals: where its admin API listens."""

    host: str
    address: str  # IPv4, dialled by renewing meshd
    port: int  # its admin port


@dataclass(frozen=True)
class Revocation:
    """What ``meshctl leave``/``revoke`` took away from a host, until it would expire anyway."""

    host: str
    ids: tuple[str, ...] = ()  # SPIFFE IDs, as text
    serials: tuple[str, ...] = ()  # upper-case hex, no separators
    until: int = 0  # Unix seconds: nothing it names is valid after this
    before: int = 0  # Unix seconds: ids revoke certificates whose notBefore is earlier; 0: all

    def names(self, ids: Iterable[str], serial: str, not_before: float) -> bool:
        """Whether a certificate with these SPIFFE IDs, serial (any spelling of the hex) and
        notBefore (Unix seconds) is revoked by this entry."""
        return self.by_serial(serial) or self.by_id(ids, not_before)

    def by_serial(self, serial: str) -> bool:
        key = serial_key(serial)
        return any(serial_key(s) == key for s in self.serials)

    def by_id(self, ids: Iterable[str], not_before: float) -> bool:
        """A certificate carrying one of ``ids`` that started before ``before`` (0: any)."""
        started_before = self.before == 0 or not_before < self.before
        return started_before and any(i in self.ids for i in ids)


def serial_key(serial: str) -> str:
    """A serial's one spelling: upper-case hex without leading zeros (``ssl`` pads to bytes)."""
    return serial.upper().lstrip("0") or "0"


@dataclass(frozen=True)
class Registry:
    version: int = 0
    services: tuple[Service, ...] = ()
    issuers: tuple[IssuerRef, ...] = ()
    revoked: tuple[Revocation, ...] = ()

    def service(self, name: str) -> Service | None:
        """The service called ``name`` (meshd looks destinations up in its compiled bundle)."""
        return next((s for s in self.services if s.name == name), None)

    @classmethod
    def of(
        cls,
        version: int,
        services: Iterable[Service],
        issuers: Iterable[IssuerRef] = (),
        revoked: Iterable[Revocation] = (),
    ) -> Registry:
        """A registry of typed values, in the order ``from_dict`` keeps (services, issuers
        and revocations by host name)."""
        return cls(
            version,
            tuple(sorted(services, key=lambda s: s.name)),
            tuple(sorted(issuers, key=lambda i: i.host)),
            tuple(sorted(revoked, key=lambda r: r.host)),
        )

    def with_version(self, version: int) -> Registry:
        return replace(self, version=version)

    def services_of(self, host: str) -> frozenset[str]:
        """The services the registry assigns to ``host`` (it is one of their endpoints)."""
        return frozenset(s.name for s in self.services if any(e.host == host for e in s.endpoints))

    def revocation(self, ids: Iterable[str], serial: str, not_before: float) -> Revocation | None:
        """The entry that revokes a certificate with these IDs, serial and notBefore (Unix
        seconds), if one does."""
        names = tuple(ids)
        return next((r for r in self.revoked if r.names(names, serial, not_before)), None)

    def not_before_floor(self, ids: Iterable[str]) -> int:
        """The earliest notBefore (Unix seconds) a certificate signed now for ``ids`` may
        have: the latest ``before`` of the revocations naming one of them (0: any)."""
        names = set(ids)
        return max((r.before for r in self.revoked if names.intersection(r.ids)), default=0)

    def checked(self, source: str) -> Registry:
        """What meshd makes of this registry once written and read back; ConfigError if it
        would refuse it (meshctl validates what it built before a host has to)."""
        return Registry.from_dict(self.to_dict(), source)

    def to_json(self) -> bytes:
        """The registry file (``/etc/meshd/registry.json``), byte for byte."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    def to_dict(self) -> dict[str, Any]:
        """The JSON document meshd reads with ``from_dict``: what meshctl pushes and writes."""
        return {
            "version": self.version,
            "services": {
                s.name: {
                    "vip": s.vip,
                    "port": s.port,
                    "endpoints": [
                        {
                            "host": e.host,
                            "address": e.address,
                            "port": e.port,
                            "mesh_port": e.mesh_port,
                            "labels": dict(e.labels),
                            **({"ipv6": list(e.ipv6)} if e.ipv6 else {}),
                        }
                        for e in s.endpoints
                    ],
                }
                for s in self.services
            },
            **({"issuers": [_issuer_dict(i) for i in self.issuers]} if self.issuers else {}),
            **({"revoked": [_revocation_dict(r) for r in self.revoked]} if self.revoked else {}),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str) -> Registry:
        top = Fields(doc, source)
        top.unknown({"version", "services", "issuers", "revoked"})
        version = top.version()
        services = top.table("services", required=False)
        parsed = tuple(_service(name, services.table(name)) for name in sorted(services.data))
        _check_unique(top, parsed)
        issuers = tuple(_issuer(f) for f in top.tables("issuers"))
        revoked = tuple(_revocation(f) for f in top.tables("revoked"))
        _check_hosts_unique(top, "issuers", [i.host for i in issuers])
        _check_hosts_unique(top, "revoked", [r.host for r in revoked])
        return cls.of(version, parsed, issuers, revoked)


def _issuer_dict(i: IssuerRef) -> dict[str, Any]:
    return {"host": i.host, "address": i.address, "port": i.port}


def _revocation_dict(r: Revocation) -> dict[str, Any]:
    doc = {"host": r.host, "ids": list(r.ids), "serials": list(r.serials), "until": r.until}
    return doc | ({"before": r.before} if r.before else {})  # 0: as an older meshd reads it


def _issuer(f: Fields) -> IssuerRef:
    f.unknown({"host", "address", "port"})
    host = f.checked("host", f.get("host", str), lambda n: check_name("host", n))
    return IssuerRef(host, _ip(f, "address"), f.port("port"))


MAX_REVOKED_NAMES = 256  # per entry: a host's identities, and the serials it was seen with
SERIAL = re.compile(r"[0-9A-F]{1,40}")  # RFC 5280: at most 20 octets


def _revocation(f: Fields) -> Revocation:
    f.unknown({"host", "ids", "serials", "until", "before"})
    host = f.checked("host", f.get("host", str), lambda n: check_name("host", n))
    ids = _strings(f, "ids", lambda text: str(SpiffeId.parse(text)))
    serials = _strings(f, "serials", _serial)
    until = f.bounded("until", int, 0, 0, 2**53 - 1)
    before = f.bounded("before", int, 0, 0, 2**53 - 1)
    return Revocation(host, ids, serials, until, before)


def _strings(f: Fields, key: str, check: Any) -> tuple[str, ...]:
    values = f.get(key, list, [])
    if len(values) > MAX_REVOKED_NAMES:
        raise f.fail(key, f"more than {MAX_REVOKED_NAMES} entries")
    if not all(isinstance(v, str) for v in values):
        raise f.fail(key, "must be a list of strings")
    return tuple(f.checked(key, v, check) for v in values)


def _serial(text: str) -> str:
    if not SERIAL.fullmatch(text):
        raise ConfigError(f"serial {brief(text)} is not upper-case hex (at most 40 digits)")
    if serial_key(text) != text:
        raise ConfigError(f"serial {brief(text)} has leading zeros: write it as {serial_key(text)}")
    return text


def _check_hosts_unique(top: Fields, key: str, hosts: list[str]) -> None:
    seen = set()
    for host in hosts:
        if host in seen:
            raise top.fail(key, f"host {host!r} is listed twice")
        seen.add(host)


def _service(name: str, f: Fields) -> Service:
    f.unknown({"vip", "port", "endpoints"})
    f.checked("name", name, lambda n: check_name("service", n))
    return Service(
        name, _ip(f, "vip"), f.port("port"), tuple(_endpoint(e) for e in f.tables("endpoints"))
    )


def _endpoint(f: Fields) -> Endpoint:
    f.unknown({"host", "address", "port", "mesh_port", "labels", "ipv6"})
    labels = f.get("labels", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise f.fail("labels", "labels must map strings to strings")
    for key, value in labels.items():
        f.checked("labels", (key, value), lambda label: check_label(*label))
    return Endpoint(
        host=f.checked("host", f.get("host", str), lambda n: check_name("host", n)),
        address=_ip(f, "address"),
        port=f.port("port"),
        mesh_port=f.port("mesh_port", 15443),
        labels=tuple(sorted(labels.items())),
        ipv6=_ipv6_list(f, "ipv6"),
    )


def check_label(key: str, value: str) -> tuple[str, str]:
    """Validate an endpoint label (canary routes select on them); return it."""
    if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
        raise ConfigError(
            f"invalid label {brief(key)}={brief(value)}",
            hint="keys: 1-63 letters, digits, '.', '-', '_', starting and ending alphanumeric; "
            "values: up to 63 letters, digits and . _ : / = + @ -",
        )
    return key, value


def check_vip_range(
    registry: Registry, vip_range: str, source: str, *, mesh_host: str = ANY
) -> Registry:
    """``registry`` if it fits this host; ConfigError if not.

    Its VIPs must lie in ``vip_range`` and no endpoint may: the range is what
    this host intercepts and routes locally, so a VIP outside it would be
    written into /etc/hosts without being served, and an endpoint inside it
    would be unreachable. A loopback endpoint is a different machine on every
    host; only a mesh on one machine, whose meshd listen for links on
    loopback (``mesh_host``: tests, demos), may list one.
    """
    network = ipaddress.ip_network(vip_range)
    hint = "meshctl assigns VIPs inside [interception] vip_range; push a registry it built"
    one_machine = ipaddress.ip_address(mesh_host).is_loopback
    for s in registry.services:
        if ipaddress.ip_address(s.vip) not in network:
            raise ConfigError(
                f"{source}: services.{s.name}.vip: {s.vip} is outside vip_range {vip_range}", hint
            )
        for i, e in enumerate(s.endpoints):
            at = f"{source}: services.{s.name}.endpoints[{i}].address: {e.address}"
            address = ipaddress.ip_address(e.address)
            if address in network:
                raise ConfigError(
                    f"{at} is inside vip_range {vip_range}, where only virtual IPs belong", hint
                )
            if address.is_loopback and not one_machine:
                raise ConfigError(
                    f"{at} is a loopback address: every host would dial itself",
                    "list each endpoint at its host's own address",
                )
    return registry


def _ip(f: Fields, key: str) -> str:
    """An IPv4 address one host can have (loopback too: see ``check_vip_range``)."""
    text = f.get(key, str)
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise f.fail(key, f"{text!r} is not an IPv4 address (the mesh is IPv4 for now)") from None
    if not is_host_ipv4(address):
        raise f.fail(
            key,
            f"{text!r} is not a host's unicast address "
            "(not this network, broadcast, multicast, reserved or link-local)",
        )
    return str(address)


THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host": connect() reaches the local one


def is_host_ipv4(address: ipaddress.IPv4Address) -> bool:
    """An address that names one host: unicast, routable beyond its link, or loopback."""
    return not (
        address in THIS_NETWORK
        or address.is_multicast
        or address.is_reserved  # 240/4, with the limited broadcast 255.255.255.255
        or address.is_link_local
    )


MAX_IPV6 = 16  # addresses per endpoint: a host has a few; the registry is pushed to every host


def _ipv6_list(f: Fields, key: str) -> tuple[str, ...]:
    """Distinct global IPv6 unicast addresses (as meshd reads them back: compressed, lowercase)."""
    texts = f.get(key, list, [])
    if len(texts) > MAX_IPV6:
        raise f.fail(key, f"{len(texts)} addresses, at most {MAX_IPV6}")
    addresses = tuple(_ipv6(f, f"{key}[{i}]", text) for i, text in enumerate(texts))
    if len(set(addresses)) != len(addresses):
        raise f.fail(key, "an address is listed twice")
    return addresses


def _ipv6(f: Fields, key: str, text: object) -> str:
    try:
        address = ipaddress.IPv6Address(text) if isinstance(text, str) else None
    except ValueError:
        address = None
    if address is None:
        raise f.fail(key, f"{text!r} is not an IPv6 address")
    if not is_host_ipv6(address):
        raise f.fail(key, f"{text!r} is not a global unicast address (a host's own address)")
    return str(address)


def is_host_ipv6(address: ipaddress.IPv6Address) -> bool:
    """An address other hosts can reach this one at (global or unique local unicast)."""
    return not (
        address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.ipv4_mapped is not None
        or address.scope_id is not None
    )


def _check_unique(top: Fields, services: tuple[Service, ...]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for s in services:
        keys = [(s.vip, s.port)] + [(a, e.port) for e in s.endpoints for a in e.addresses]
        for key in keys:
            other = seen.setdefault(key, s.name)
            if other != s.name:
                raise top.fail(f"services.{s.name}", f"{fmt(key)} is also used by {other!r}")
