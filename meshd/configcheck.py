"""meshd.toml's checks across tables: what one table may not repeat or take from another.

``meshd.config`` checks each field where it reads it; what is checked here
needs the whole config: two services of one name; two services, or a service
and one of meshd's listeners, on one address and port (one of them could not
bind, and meshd tells a host's services apart by their port); a service on a
port the rules never intercept (SSH, meshd's admin and mesh ports), where it
would take plaintext from anyone. A pushed config is parsed the same way, so
each of these is also a 400 at the admin API.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshd.errors import ConfigError
from meshd.netfacts import fmt

if TYPE_CHECKING:
    from meshd.config import MeshdConfig, ServiceConfig

LOOPBACK = "127.0.0.1"  # where meshd delivers to a local service's app
LOOPBACK6, ANY6 = "::1", "::"  # where meshd.daemon binds the IPv6 twins of its redirect targets
NAME_HINT = "give each [[services]] table its own name, or merge the two"
PORT_HINT = "give each service and each of meshd's listeners its own port"
KEPT_HINT = (
    "give the service a port of its own (an SSH port that sshd does not listen on"
    " can leave interception.ssh_ports)"
)


def check_across_tables(source: str, config: MeshdConfig) -> None:
    """ConfigError naming ``source`` and the second field of the first clash found."""
    _check_names(source, config.services)
    _check_kept_ports(source, config)
    _check_sockets(source, config)


def _check_names(source: str, services: tuple[ServiceConfig, ...]) -> None:
    seen: set[str] = set()
    for i, s in enumerate(services):
        if s.name in seen:
            message = f"{source}: services[{i}].name: duplicate service {s.name!r}"
            raise ConfigError(message, NAME_HINT)
        seen.add(s.name)


def _check_kept_ports(source: str, config: MeshdConfig) -> None:
    kept = _kept_ports(config)
    for i, s in enumerate(config.services):
        if s.port in kept:
            raise ConfigError(
                f"{source}: services[{i}].port: {s.port} is {kept[s.port]}, which the rules"
                f" never intercept: {_app(s, i)} would take connections without mTLS",
                hint=KEPT_HINT,
            )


def _kept_ports(config: MeshdConfig) -> dict[int, str]:
    """The ports the rules never intercept (``meshd.rules.RuleSet.kept_ports``), and whose."""
    kept = {p: "an SSH port (interception.ssh_ports)" for p in config.interception.ssh_ports}
    kept[config.listen.admin[1]] = "meshd's admin port (listen.admin)"
    kept[config.listen.mesh[1]] = "meshd's mesh port (listen.mesh)"
    return kept


@dataclass(frozen=True)
class _Socket:
    """An address and port one field of the config takes."""

    path: str  # the field, as messages name it
    what: str  # who listens there, as messages say it
    host: str
    port: int
    twin: str | None = None  # where a redirect target's IPv6 twin listens (meshd.daemon)
    is_twin: bool = False

    @property
    def shown(self) -> str:
        address = fmt((self.host, self.port))
        return f"its IPv6 twin {address}" if self.is_twin else address

    def ipv6_twin(self) -> _Socket:
        assert self.twin is not None
        what = f"the IPv6 twin of {self.what}"
        return _Socket(self.path, what, self.twin, self.port, is_twin=True)

    def clashes(self, other: _Socket) -> bool:
        """Both cannot be bound: one port, and one address or a wildcard of its family."""
        if self.port != other.port or self.port == 0:  # 0: a free port, chosen at bind time
            return False
        mine, theirs = ipaddress.ip_address(self.host), ipaddress.ip_address(other.host)
        if mine == theirs:
            return True
        return mine.version == theirs.version and (mine.is_unspecified or theirs.is_unspecified)


def _check_sockets(source: str, config: MeshdConfig) -> None:
    taken = _sockets(config)
    for i, late in enumerate(taken):
        early = next((t for t in taken[:i] if t.clashes(late)), None)
        if early is not None:
            message = f"{source}: {late.path}: {late.shown} is already {early.what}"
            raise ConfigError(message, PORT_HINT)


def _sockets(config: MeshdConfig) -> list[_Socket]:
    """meshd's listeners and the apps it delivers to on loopback, in the file's order; where
    [listen] ipv6 is on, each redirect target followed by the IPv6 twin meshd binds beside it."""
    listen = config.listen
    taken = [
        _Socket("listen.outbound", "meshd's listen.outbound", *listen.outbound, LOOPBACK6),
        _Socket("listen.inbound", "meshd's listen.inbound", *listen.inbound, ANY6),
        _Socket("listen.mesh", "meshd's listen.mesh", *listen.mesh),
        _Socket("listen.admin", "meshd's listen.admin", *listen.admin),
    ]
    for i, s in enumerate(config.services):
        taken.append(_Socket(f"services[{i}].port", _app(s, i), LOOPBACK, s.port))
        if s.outbound is not None:
            what = f"the outbound listener of service {s.name!r} (services[{i}].outbound)"
            taken.append(_Socket(f"services[{i}].outbound", what, *s.outbound, LOOPBACK6))
    for i, u in enumerate(config.upstreams):
        path = f"upstreams[{i}].listen"
        taken.append(_Socket(path, f"meshd's {path}", *u.listen))
    return list(_with_twins(taken)) if listen.ipv6 else taken


def _with_twins(taken: list[_Socket]) -> Iterator[_Socket]:
    for socket in taken:
        yield socket
        if socket.twin is not None:
            yield socket.ipv6_twin()


def _app(service: ServiceConfig, i: int) -> str:
    return f"the app of service {service.name!r} (services[{i}].port)"
