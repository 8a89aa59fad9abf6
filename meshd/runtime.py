"""The daemon's shared, swappable state: config, TLS material, registry, events, counters.

Components read the current values on every new connection, so a reload
(SIGHUP or admin PUT) swaps a reference and connections made before keep
what they started with. ``load_files`` reads what the files in /etc say (the
base pushed documents go on top of); ``CertificateSource`` says whose
certificate meshd runs and why, ``ReloadOutcome`` how the last reload went,
both as /stats reports them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anyio.abc import TaskGroup

from meshd import __version__
from meshd.config import MeshdConfig
from meshd.errors import ConfigError, MeshError
from meshd.files import write_atomic
from meshd.identity import SpiffeId, make_id
from meshd.proxy.http.plan import HttpRules
from meshd.registry import ANY, Registry, check_vip_range
from meshd.telemetry.events import EventBus
from meshd.tls.context import TlsMaterial

log = logging.getLogger("meshd")


def load_registry(path: Path | None, vip_range: str, mesh_host: str = ANY) -> Registry:
    """A registry file (an empty registry when there is none), checked against ``vip_range``
    and where meshd listens for links (``check_vip_range``)."""
    if path is None or not path.exists():
        return Registry()
    try:
        doc = json.loads(path.read_text(), parse_constant=_not_json)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}: {e.msg}") from e
    except (ValueError, RecursionError) as e:  # NaN, or an integer past 4300 digits
        raise ConfigError(f"{path}: not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    registry = Registry.from_dict(doc, str(path))
    return check_vip_range(registry, vip_range, str(path), mesh_host=mesh_host)


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True)
class Files:
    """What the files in /etc say: the base every pushed document is put on top of.

    Config and registry must be valid. The certificate may not be: ``tls`` is
    None then, and ``tls_error`` says why; a valid pushed certificate can
    stand in for it (``meshd.documents.choose_tls``).
    """

    config: MeshdConfig
    tls: TlsMaterial | None
    registry: Registry
    tls_error: MeshError | None = None

    @property
    def tls_problem(self) -> str:
        """Why the files' certificate does not validate ("" when it does)."""
        return self.tls_error.message if self.tls_error is not None else ""

    def required_tls(self) -> TlsMaterial:
        """The files' TLS material; their error if it does not validate."""
        if self.tls is None:
            assert self.tls_error is not None
            raise self.tls_error
        return self.tls


def load_files(config: MeshdConfig) -> Files:
    """The registry named by ``config`` (MeshError if bad) and its TLS files, valid or why not."""
    registry = load_registry(config.registry, config.interception.vip_range, config.listen.mesh[0])
    try:
        return Files(config, load_tls(config), registry)
    except MeshError as e:
        return Files(config, None, registry, e)


def load_tls(config: MeshdConfig) -> TlsMaterial:
    """Certificate, key and bundle named by ``config``: current, verified, this host's."""
    ident = config.identity
    tls = TlsMaterial.load(ident.cert, ident.key, ident.bundle)
    check_identity(config, tls)
    return tls


NO_PUSH = "no certificate pushed"


@dataclass(frozen=True)
class CertificateSource:
    """Which certificate meshd runs, the files' or a pushed one, and why (as /stats says)."""

    layer: Literal["files", "pushed"]
    version: int | None  # of the pushed certs document, when that is the one
    reason: str

    def describe(self) -> str:
        where = "the files" if self.layer == "files" else f"pushed certs version {self.version}"
        return f"certificate from {where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "version": self.version, "reason": self.reason}


@dataclass(frozen=True)
class ReloadOutcome:
    """How the last reload went (generation 0: the start), as /stats reports it."""

    generation: int
    ok: bool
    message: str
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        when = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat(timespec="milliseconds")
        return {"generation": self.generation, "ok": self.ok, "message": self.message, "at": when}


def pushed_registry_path(config: MeshdConfig) -> Path | None:
    """Where meshd's DocumentStore keeps the pushed registry: ``<state_dir>/registry.json``."""
    return None if config.state_dir is None else config.state_dir / "registry.json"


def synced_path(config: MeshdConfig) -> Path:
    """Where ``meshd sync`` notes the registry version it applied: next to the rules record.

    In /run like that record (gone at reboot, as the rules are until
    meshd-rules.service puts them back), and not in the state directory:
    meshd-sync.path watches that directory until the first registry is pushed,
    so a note written there would start the sync again.
    """
    return config.interception.rules_record.with_name("meshd-synced.json")


def mark_synced(config: MeshdConfig, version: int) -> None:
    """Note that the rules and /etc/hosts names of registry ``version`` are in place.

    Written by root (meshd-sync.service), 0644 so that meshd can report it on
    /stats, where meshctl waits for it after a push.
    """
    path = synced_path(config)
    doc = {"registry_version": version, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    try:
        write_atomic(path, (json.dumps(doc) + "\n").encode(), 0o644)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}", hint="run this as root") from e


def synced_version(config: MeshdConfig) -> int | None:
    """The registry version ``meshd sync`` last applied; None when it never ran (or unreadable)."""
    try:
        doc = json.loads(synced_path(config).read_text())
    except (OSError, ValueError):
        return None
    version = doc.get("registry_version") if isinstance(doc, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def effective_registry(config: MeshdConfig) -> Registry:
    """The newer (by version) of the config's registry file and the pushed one meshd persisted.

    For root-run helpers (``meshd rules``, ``meshd hosts``) that must follow
    pushes without a running daemon to ask. On a tie the pushed document wins:
    it is the one meshd loads at start.
    """
    bootstrap = _readable_registry(config.registry, config)
    pushed = _readable_registry(pushed_registry_path(config), config)
    return pushed if pushed.version >= bootstrap.version else bootstrap


def _readable_registry(path: Path | None, config: MeshdConfig) -> Registry:
    try:
        return load_registry(path, config.interception.vip_range, config.listen.mesh[0])
    except OSError as e:  # the state dir is meshd's own (0700): other users cannot look inside
        raise ConfigError(
            f"{path}: cannot read: {e.strerror}", hint="run this as root (or as meshd)"
        ) from e


@dataclass
class Runtime:
    """Everything the components share. Mutable on purpose: reloads swap fields."""

    config: MeshdConfig
    tls: TlsMaterial
    registry: Registry
    bus: EventBus = field(default_factory=EventBus)
    tg: TaskGroup | None = None
    started: float = field(default_factory=time.time)
    active: int = 0  # app connections being relayed, both directions
    ready: bool = False
    draining: bool = False
    bound: dict[str, tuple[str, int]] = field(default_factory=dict)
    version: str = __version__
    policy: dict[str, Any] = field(default_factory=dict)
    last_reload: ReloadOutcome = field(default_factory=lambda: ReloadOutcome(0, True, "started"))
    files: Files | None = None  # as last read: a pushed certificate must outlast theirs
    certificate: CertificateSource = field(
        default_factory=lambda: CertificateSource("files", None, NO_PUSH)
    )
    http_rules: HttpRules = field(default_factory=HttpRules)  # which connections need L7

    @classmethod
    def load(cls, config: MeshdConfig) -> Runtime:
        """The files alone (``meshd check-config``): their certificate must validate."""
        files = load_files(config)
        return cls(config=config, tls=files.required_tls(), registry=files.registry, files=files)

    @property
    def trust_domain(self) -> str:
        return self.config.identity.trust_domain

    def service_id(self, name: str) -> SpiffeId:
        return make_id(self.trust_domain, "svc", name)

    def host_id(self, host: str) -> SpiffeId:
        return make_id(self.trust_domain, "host", host)

    def admit(self) -> bool:
        """Count a new app connection in, unless the limit is reached."""
        if self.active >= self.config.limits.max_connections:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


def restart_needed(old: MeshdConfig, new: MeshdConfig) -> str | None:
    """What in ``new`` cannot be applied to a running meshd (its sockets are bound), if anything."""
    if new.identity.host != old.identity.host:
        return "the host name changed"
    if new.state_dir != old.state_dir:
        return "the state directory changed"
    if new.listen != old.listen or new.upstreams != old.upstreams:
        return "listen addresses or upstream listeners changed"
    if _outbounds(new) != _outbounds(old):
        return "a service's outbound listener changed"
    return None


def _outbounds(config: MeshdConfig) -> dict[str, Any]:
    return {s.name: s.outbound for s in config.services}


def check_identity(config: MeshdConfig, tls: TlsMaterial) -> None:
    """The certificate must carry this host's identity."""
    host = config.identity.host_id
    if host not in tls.ids:
        have = ", ".join(sorted(str(i) for i in tls.ids)) or "none"
        raise ConfigError(
            f"{config.identity.cert} does not carry {host} (it has: {have})",
            hint="issue the host certificate for this host's name and trust domain",
        )
