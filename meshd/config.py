"""meshd's configuration file (TOML), parsed once into frozen dataclasses.

Each field is checked where it is read; what needs the whole file (service
names, ports and addresses that must not clash) is checked in meshd.configcheck.

Example (every table but ``[identity]`` is optional)::

    [identity]
    host = "web1"
    trust_domain = "prod.mesh"
    cert = "/etc/meshd/cert.pem"      # leaf first, then the issuing CA
    key = "/etc/meshd/key.pem"
    bundle = "/etc/meshd/bundle.pem"  # trusted root CA(s)

    [listen]
    outbound = "127.0.0.1:15001"      # where nat OUTPUT redirects the host's connections
    inbound = "0.0.0.0:15006"         # where nat PREROUTING redirects outside plaintext
    mesh = "0.0.0.0:15443"            # sidecar links (mTLS)
    admin = "0.0.0.0:15000"           # admin API (mTLS, operators only)
    admin_socket = "/run/meshd/admin.sock"
    ipv6 = true                       # IPv6 twins of the redirect targets: [::1]:15001
                                      # (and each service's), [::]:15006; false: IPv6 that
                                      # the rules catch is refused

    [mesh]
    mtls = "strict"                   # or "permissive"
    registry = "/etc/meshd/registry.json"
    state_dir = "/var/lib/meshd"      # pushed documents survive restarts here

    [[services]]                      # the local services this meshd fronts
    name = "api"
    port = 8080
    outbound = "127.0.0.1:15101"      # optional: connections of this service's user

    [[upstreams]]                     # optional: explicit local entry points to a service,
    listen = "127.0.0.1:16001"        # for apps or hosts without iptables interception
    service = "db"

    [limits]                          # and [timeouts], in seconds; see the dataclasses

    [access_log]                      # one JSON line per request or connection, to the log
    sample = 0.0                      # 0: off (the default), 1.0: all, 0.1: one in ten
    [access_log.services]             # per service (destination, else source), over sample
    api = 1.0
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd import paths
from meshd.configcheck import check_across_tables
from meshd.errors import ConfigError
from meshd.identity import SpiffeId, check_name, check_user, make_id, trust_domain_problem
from meshd.proxy.frames import MAX_PAYLOAD
from meshd.schema import Fields, brief, read_toml

MTLS_MODES = ("strict", "permissive")
LOG_LEVELS = ("debug", "info", "warning", "error")
Address = tuple[str, int]
ANY = "0.0.0.0"  # noqa: S104 - meshd's mesh, inbound and admin ports serve other hosts by design


@dataclass(frozen=True)
class IdentityConfig:
    host: str
    trust_domain: str
    cert: Path
    key: Path
    bundle: Path

    @property
    def host_id(self) -> SpiffeId:
        return make_id(self.trust_domain, "host", self.host)


@dataclass(frozen=True)
class ListenConfig:
    outbound: Address = ("127.0.0.1", 15001)
    inbound: Address = (ANY, 15006)
    mesh: Address = (ANY, 15443)
    admin: Address = (ANY, 15000)
    admin_socket: Path | None = Path(paths.ADMIN_SOCKET)
    # IPv6 twins of the listeners the rules redirect to (ip6tables redirects there)
    ipv6: bool = True


@dataclass(frozen=True)
class ServiceConfig:
    """A local service: its name, the port the app listens on, its own outbound listener."""

    name: str
    port: int
    outbound: Address | None = None
    run_as: str | None = (
        None  # the user whose connections go to ``outbound`` (iptables owner match)
    )


@dataclass(frozen=True)
class InterceptionConfig:
    """What the redirect rules (``meshd rules apply``) need besides ports and services."""

    vip_range: str = "10.255.0.0/16"
    meshd_user: str = paths.USER
    ssh_ports: tuple[int, ...] = (22,)  # never intercepted: the operator must keep SSH
    # which rule set is installed; in /run so that it goes at reboot, like the rules
    rules_record: Path = Path(paths.RULES_RECORD)
    # where ``rules apply`` writes the rules it applied as a script needing no meshd (the
    # boot-time fallback of closed fail mode, see meshd.rules.fallback_script); None: nowhere
    fallback_rules: Path | None = None


@dataclass(frozen=True)
class UpstreamConfig:
    """A plain local listener whose connections all go to one mesh service."""

    listen: Address
    service: str


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds on what connections and peers may make meshd hold.

    The two windows are a contract between the ends of a link: each side sends
    within its own values and cuts off a peer that exceeds them, so they must
    be the same on every meshd of a mesh (meshctl renders them alike). A peer
    may make this meshd hold at most about ``max_links_per_peer`` times
    ``link_window`` of what it sends, and relay ``max_streams_per_peer``
    connections at once.
    """

    max_connections: int = 20000
    max_streams_per_link: int = 10000
    max_header_bytes: int = 65536
    stream_window: int = 1024 * 1024  # per stream and direction: bounds what a slow reader costs
    # per link, over all its streams, from the side that opens them to the side that takes
    # them: what one peer's link may make meshd hold (the peer chooses how many streams).
    # The other way, each stream's own window bounds what a dialler's apps hold.
    link_window: int = 8 * 1024 * 1024
    max_links_per_peer: int = 4  # links one mesh host may hold to this meshd at once
    # streams one mesh host may have relayed here at once: no peer takes every connection
    max_streams_per_peer: int = 5000
    max_frame: int = 256 * 1024  # one frame per app read (uvloop reads up to 256 KiB)
    # the mesh port's peers not yet authenticated, in all and per source address (see
    # meshd.tls.gate; when full, the oldest in the way is dropped): accepted sockets that have
    # sent nothing yet (a descriptor each), and TLS handshakes in flight (~300 KiB each)
    max_silent: int = 256
    max_silent_per_source: int = 16
    max_handshakes: int = 64
    max_handshakes_per_source: int = 8


@dataclass(frozen=True)
class TimeoutsConfig:
    handshake: float = 5.0
    connect: float = 5.0
    header_read: float = 15.0
    idle: float = 300.0
    drain: float = 10.0
    ping_interval: float = 15.0


@dataclass(frozen=True)
class AccessLogConfig:
    """The access log's sample ratio for this host, and per service."""

    sample: float = 0.0
    services: tuple[tuple[str, float], ...] = ()

    @functools.cached_property
    def per_service(self) -> dict[str, float]:
        return dict(self.services)

    def ratio(self, source: str, destination: str) -> float:
        """The ratio for a request or connection between these services (names)."""
        per = self.per_service
        return per.get(destination, per.get(source, self.sample))

    @property
    def on(self) -> bool:
        """Does anything get logged at all?"""
        return self.sample > 0 or any(r > 0 for _, r in self.services)


@dataclass(frozen=True)
class MeshdConfig:
    identity: IdentityConfig
    listen: ListenConfig = field(default_factory=ListenConfig)
    mtls: str = "strict"
    registry: Path | None = None
    state_dir: Path | None = None  # where pushed documents are kept across restarts
    services: tuple[ServiceConfig, ...] = ()
    upstreams: tuple[UpstreamConfig, ...] = ()
    interception: InterceptionConfig = field(default_factory=InterceptionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    log_level: str = "info"
    http: bool = True
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)

    @functools.cached_property
    def local_services(self) -> dict[str, ServiceConfig]:
        """This host's services by name (derived once; the config is frozen)."""
        return {s.name: s for s in self.services}

    @functools.cached_property
    def source_id(self) -> SpiffeId:
        """The identity this host's connections claim when no ``run_as`` listener caught them:
        the general outbound listener's and the upstream listeners' (POLICY.md, identity on
        hosts). A service with ``run_as`` claims its own on its own listener.

        A host running exactly one service claims that service: every connection it makes is
        taken to be that app's. Not so when that one service has a ``run_as`` user: its
        connections are then told apart by user, and another user's are not the service's.
        Otherwise the host. The leaf a host is issued holds its services' IDs too, so the
        peer's check that the certificate holds the claimed source passes.
        """
        if len(self.services) == 1 and self.services[0].run_as is None:
            return make_id(self.identity.trust_domain, "svc", self.services[0].name)
        return self.identity.host_id

    @classmethod
    def load(cls, path: Path) -> MeshdConfig:
        try:
            text = path.read_text()
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: no such file") from e
        return cls.from_dict(read_toml(text, str(path)), str(path), path.parent)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str, base: Path = Path("/")) -> MeshdConfig:
        top = Fields(doc, source)
        top.unknown(
            {
                "identity",
                "listen",
                "mesh",
                "services",
                "upstreams",
                "interception",
                "limits",
                "timeouts",
                "log",
                "access_log",
            }
        )
        mesh = top.table("mesh", required=False)
        mesh.unknown({"mtls", "registry", "http", "state_dir"})
        registry = mesh.optional("registry", str)
        state_dir = mesh.optional("state_dir", str)
        log = top.table("log", required=False)
        log.unknown({"level"})
        config = cls(
            identity=_identity(top.table("identity"), base),
            listen=_listen(top.table("listen", required=False)),
            mtls=mesh.choice("mtls", MTLS_MODES, "strict"),
            registry=base / registry if registry else None,
            state_dir=base / state_dir if state_dir else None,
            services=tuple(_service(f) for f in top.tables("services")),
            upstreams=tuple(_upstream(f) for f in top.tables("upstreams")),
            interception=_interception(top.table("interception", required=False)),
            limits=_limits(top.table("limits", required=False)),
            timeouts=_timeouts(top.table("timeouts", required=False)),
            log_level=log.choice("level", LOG_LEVELS, "info"),
            http=mesh.get("http", bool, True),
            access_log=_access_log(top.table("access_log", required=False)),
        )
        check_across_tables(top.source, config)
        return config


def _access_log(f: Fields) -> AccessLogConfig:
    f.unknown({"sample", "services"})
    services = f.table("services", required=False)
    for name in services.data:
        services.checked(name, name, lambda n: check_name("service", n))
    return AccessLogConfig(
        sample=f.bounded("sample", float, 0.0, 0.0, 1.0),
        services=tuple(
            (name, services.bounded(name, float, 0.0, 0.0, 1.0)) for name in sorted(services.data)
        ),
    )


def _identity(f: Fields, base: Path) -> IdentityConfig:
    f.unknown({"host", "trust_domain", "cert", "key", "bundle"})
    domain = f.get("trust_domain", str)
    problem = trust_domain_problem(domain)
    if problem:
        raise f.fail("trust_domain", problem)
    host = f.checked("host", f.get("host", str), lambda n: check_name("host", n))
    return IdentityConfig(
        host=host,
        trust_domain=domain,
        cert=base / f.get("cert", str),
        key=base / f.get("key", str),
        bundle=base / f.get("bundle", str),
    )


def _listen(f: Fields) -> ListenConfig:
    d = ListenConfig()
    f.unknown({"outbound", "inbound", "mesh", "admin", "admin_socket", "ipv6"})
    socket = f.get("admin_socket", str, str(d.admin_socket))
    return ListenConfig(
        outbound=f.address("outbound", _fmt(d.outbound)),
        inbound=f.address("inbound", _fmt(d.inbound)),
        mesh=f.address("mesh", _fmt(d.mesh)),
        admin=f.address("admin", _fmt(d.admin)),
        admin_socket=Path(socket) if socket else None,
        ipv6=f.get("ipv6", bool, d.ipv6),
    )


def _fmt(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _service(f: Fields) -> ServiceConfig:
    f.unknown({"name", "port", "outbound", "run_as"})
    name = f.checked("name", f.get("name", str), lambda n: check_name("service", n))
    outbound = f.address("outbound") if "outbound" in f.data else None
    run_as = f.optional("run_as", str)
    if run_as is not None:
        f.checked("run_as", run_as, check_user)
    if run_as is not None and outbound is None:
        raise f.fail("run_as", "needs an outbound listener for that user's connections")
    return ServiceConfig(name=name, port=f.port("port"), outbound=outbound, run_as=run_as)


def _interception(f: Fields) -> InterceptionConfig:
    d = InterceptionConfig()
    f.unknown({"vip_range", "meshd_user", "ssh_ports", "rules_record", "fallback_rules"})
    vip_range = f.get("vip_range", str, d.vip_range)
    try:
        ipaddress.ip_network(vip_range)
    except ValueError:
        raise f.fail("vip_range", f"{vip_range!r} is not a network like 10.255.0.0/16") from None
    ports = _ssh_ports(f, d.ssh_ports)
    record = Path(f.get("rules_record", str, str(d.rules_record)))
    fallback = f.optional("fallback_rules", str)
    if fallback is not None and not Path(fallback).is_absolute():
        raise f.fail("fallback_rules", f"{fallback!r} is not an absolute path")
    return InterceptionConfig(
        vip_range,
        f.get("meshd_user", str, d.meshd_user),
        ports,
        record,
        Path(fallback) if fallback is not None else None,
    )


def _ssh_ports(f: Fields, default: tuple[int, ...]) -> tuple[int, ...]:
    ports = f.get("ssh_ports", list, list(default))
    if not ports:
        raise f.fail("ssh_ports", "expected a non-empty list of port numbers")
    for i, port in enumerate(ports):  # bool is an int: `true` must not pass as port 1
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise f.fail(f"ssh_ports[{i}]", f"{brief(port)} is not a port number (1-65535)")
        if port in ports[:i]:
            raise f.fail(f"ssh_ports[{i}]", f"port {port} is listed twice")
    return tuple(ports)


def _upstream(f: Fields) -> UpstreamConfig:
    f.unknown({"listen", "service"})
    return UpstreamConfig(listen=f.address("listen"), service=f.get("service", str))


# Every limit and timeout has a range: a value out of it (NaN, inf, 2^33) is a typo or an
# attack through a pushed config, and would break links long after the push was taken.
WINDOW_MAX = 2**31 - 1  # windows are granted in u32 WINDOW frames; kept clear of the top bit
LIMIT_BOUNDS: dict[str, tuple[int, int]] = {
    "max_connections": (1, 1_000_000),  # two descriptors each
    "max_streams_per_link": (1, 100_000),
    "max_header_bytes": (1024, 1024 * 1024),
    "stream_window": (16 * 1024, WINDOW_MAX),
    "link_window": (16 * 1024, WINDOW_MAX),  # and at least stream_window
    "max_links_per_peer": (1, 64),
    "max_streams_per_peer": (1, 1_000_000),
    "max_frame": (1024, MAX_PAYLOAD),  # a peer's larger frame is refused as broken
    "max_silent": (1, 65536),  # a descriptor each
    "max_silent_per_source": (1, 65536),
    "max_handshakes": (1, 4096),  # ~300 KiB each
    "max_handshakes_per_source": (1, 4096),
}
TIMEOUT_BOUNDS: dict[str, tuple[float, float]] = {  # seconds
    "handshake": (0.1, 300.0),
    "connect": (0.1, 300.0),
    "header_read": (0.1, 3600.0),
    "idle": (1.0, 7 * 24 * 3600.0),
    "drain": (0.1, 3600.0),
    "ping_interval": (0.1, 3600.0),
}
# for a field added without its own range (tests/meshd/test_config.py asks for one)
ANY_LIMIT, ANY_TIMEOUT = (1, WINDOW_MAX), (0.1, 3600.0)


def _limits(f: Fields) -> LimitsConfig:
    names = LimitsConfig.__dataclass_fields__
    f.unknown(set(names))
    d = LimitsConfig()
    values = {k: f.bounded(k, int, getattr(d, k), *LIMIT_BOUNDS.get(k, ANY_LIMIT)) for k in names}
    if values["link_window"] < values["stream_window"]:  # one stream could not use its window
        raise f.fail(
            "link_window",
            f"must be at least {f.path}.stream_window ({values['stream_window']}),"
            f" got {values['link_window']}",
        )
    return LimitsConfig(**values)


def _timeouts(f: Fields) -> TimeoutsConfig:
    names = TimeoutsConfig.__dataclass_fields__
    f.unknown(set(names))
    d = TimeoutsConfig()
    return TimeoutsConfig(
        **{
            k: f.bounded(k, float, getattr(d, k), *TIMEOUT_BOUNDS.get(k, ANY_TIMEOUT))
            for k in names
        }
    )
