"""The daemon's shared, swappable state: config, TLS material, registry, events, counters.

Components read the current values on every new connection, so a reload
(SIGHUP or admin PUT) swaps a reference and connections made before keep
what they started with. ``load_files`` reads what the files in /etc say (the
base pushed documents go on top of); ``certificate`` (a
``meshd.stats.CertificateSource``) says whose certificate meshd runs and why,
``ReloadOutcome`` how the last reload went, both as /stats reports them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from anyio.abc import TaskGroup

from meshd import __version__
from meshd.config import MeshdConfig
from meshd.errors import CertificateError, ConfigError, MeshError
from meshd.host.registryfiles import load_registry
from meshd.identity import SpiffeId, make_id
from meshd.policy.bundle import NO_POLICY, AppliedPolicy, Bundle
from meshd.policy.lang.model import RateLimit
from meshd.policy.lang.ratelimit import Buckets
from meshd.proxy.http.observe import Listening
from meshd.proxy.http.plan import HttpRules
from meshd.registry import Registry
from meshd.stats import CertificateSource, ReloadReport
from meshd.telemetry.events import EventBus
from meshd.tls.context import TlsMaterial

log = logging.getLogger("meshd")


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

    def under(self, bundle: bytes | None) -> Files:
        """The files with their certificate verified under ``bundle`` (a trust document's)."""
        if bundle is None or self.tls is None:
            return self
        try:
            return replace(self, tls=self.tls.under(bundle))
        except MeshError as e:
            message = f"{self.config.identity.cert} does not verify under the trust document"
            return replace(self, tls=None, tls_error=CertificateError(f"{message}: {e.message}"))

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
class ReloadOutcome:
    """How the last reload went (generation 0: the start); /stats reports it (``report``)."""

    generation: int
    ok: bool
    message: str
    at: float = field(default_factory=time.time)

    def report(self) -> ReloadReport:
        when = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat(timespec="milliseconds")
        return ReloadReport(self.generation, self.ok, self.message, when)


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
    policy: AppliedPolicy = NO_POLICY
    last_reload: ReloadOutcome = field(default_factory=lambda: ReloadOutcome(0, True, "started"))
    files: Files | None = None  # as last read: a pushed certificate must outlast theirs
    certificate: CertificateSource = field(
        default_factory=lambda: CertificateSource("files", None, NO_PUSH)
    )
    trust: bytes | None = None  # a trust document's bundle: every context is built with it
    # which connections need L7 beyond [mesh] http's observation (until policy compiles them)
    http_rules: HttpRules = field(default_factory=HttpRules)
    # config, registry and policy compiled for meshd.policy.decide: ``recompile`` after a swap
    bundle: Bundle = field(init=False)
    # the policy's token buckets: kept across swaps while the rate limits stay as they were
    buckets: Buckets = field(default_factory=Buckets)
    limits: dict[str, RateLimit] = field(default_factory=dict)  # what ``buckets`` count for
    # called after every recompile: the proxy tears down revoked links, follows a new certificate
    swapped: list[Callable[[], None]] = field(default_factory=list)
    # the daemon's event loop (``Daemon.run``): swap hooks touch links and timers, so they run
    # there even when a push is applied in the document store's worker thread
    loop: asyncio.AbstractEventLoop | None = None
    # on while a tap client or the access log wants requests' paths (meshd.telemetry.tap)
    listening: Listening = field(default_factory=Listening)

    def __post_init__(self) -> None:
        self.recompile()

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

    def recompile(self) -> None:
        """Compile the bundle admissions decide on from the state now in place (after a swap),
        then run the swap hooks on the event loop (soon, if called from another thread)."""
        self.bundle = Bundle.compile(self.config, self.registry, self.policy, self.http_rules)
        limits = _rate_limits(self.policy)
        if any(_changed(self.limits[i], limits[i]) for i in self.limits.keys() & limits.keys()):
            self.buckets = Buckets()  # a limit changed under its id: count afresh
        elif self.limits.keys() - limits.keys():  # removed rules: their buckets go
            self._on_loop(lambda: self.buckets.retain(limits.keys()))  # requests take there
        self.limits = limits
        if self.swapped:
            self._on_loop(self._run_hooks)

    def _on_loop(self, work: Callable[[], object]) -> None:
        """Run ``work`` on the event loop: now if this is its thread, else soon."""
        loop = self.loop
        if loop is None or _running(loop):
            work()
        else:
            loop.call_soon_threadsafe(work)

    def _run_hooks(self) -> None:
        for hook in self.swapped:
            hook()

    def release(self) -> None:
        """An admitted app connection ended (admitting counts it in ``active``)."""
        self.active -= 1


def _rate_limits(policy: AppliedPolicy) -> dict[str, RateLimit]:
    return {r.id: r for d in policy.documents for r in d.rate_limits}


def _changed(old: RateLimit, new: RateLimit) -> bool:
    """Whether a rate limit counts differently (where it sits in its file does not matter)."""
    return replace(old, line=0) != replace(new, line=0)


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is running ``loop``."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


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
