"""``meshd run``: the daemon's components in one task group, signals, reload and drain.

Components (mesh port, outbound listeners, inbound listener, admin API,
renewal, sweeper, watchdog) are started with ``await tg.start(...)`` and report ready
after binding; READY=1 goes to systemd only then. The relay itself runs on
asyncio protocols over uvloop; anyio structures everything around it.
SIGHUP reloads certificates, trust bundle, registry and the live parts of
the config, all or nothing, and keeps the outcome (a generation, ok or the
error) for /stats, where ``meshd reload`` reads it; SIGTERM stops
accepting, tells peers to go away, drains with a deadline and exits.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from meshd.admin.server import AdminServer
from meshd.config import MeshdConfig
from meshd.documents import Documents, Layered, layer
from meshd.errors import MeshError
from meshd.host import allocator
from meshd.host.registryfiles import synced_version
from meshd.host.systemd import Notifier, watchdog
from meshd.issuer.service import Issuer
from meshd.netfacts import fmt, ipv6_absent
from meshd.proxy.connect import Connector
from meshd.proxy.frames import RST_CANCEL
from meshd.proxy.inbound import MeshPort, PlainInbound
from meshd.proxy.link import Link
from meshd.proxy.outbound import OutboundConn
from meshd.proxy.pool import LinkPool
from meshd.renewal.renewer import Renewer
from meshd.runtime import (
    NO_PUSH,
    Files,
    ReloadOutcome,
    Runtime,
    load_files,
    restart_needed,
)
from meshd.stats import EventCounts, HandshakeCounts, HeapCounts, LinkIn, LinkOut, Stats
from meshd.store import DocumentStore
from meshd.telemetry.accesslog import AccessLog
from meshd.telemetry.authzlog import AuthzLog
from meshd.telemetry.events import (
    AuthzDecided,
    CertificateRenewed,
    ConnectionClosed,
    IssuerAnswered,
    RateLimited,
    RequestObserved,
)
from meshd.telemetry.logs import peer_lines
from meshd.telemetry.metrics import Metrics
from meshd.telemetry.tap import TapHub
from meshd.tls.context import TlsMaterial
from meshd.tls.gate import HANDSHAKE_GRACE, HandshakeGate
from meshd.tls.handshake import TlsListener
from meshd.traffic import Traffic

log = logging.getLogger("meshd")

LOOPBACK6, ANY6 = "::1", "::"
SERVED = "served"
# what `meshd rules apply` renders for a config with [listen] ipv6 = false (meshd.rules)
IPV6_REJECTED = "the rules reject IPv6 connections to the mesh instead of redirecting them"
# binding an IPv6 twin fails this way where the kernel has IPv6 but the address is not usable
NO_IPV6_ERRNOS = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)
TAKEN_HINT = "is another meshd running, or the port taken?"
NO_IPV6_HINT = (
    "give the host a usable IPv6 loopback (::1), or set [listen] ipv6 = false and run "
    "meshd rules apply (the rules then reject IPv6)"
)


def _verdict(what: str, path: Path, layered: Layered) -> str:
    """One line on what a start or reload runs, and what it had to set aside."""
    parts = [f"{what} {path} (registry version {layered.registry.version})"]
    if layered.certificate.reason != NO_PUSH and "certs" not in layered.set_aside:
        parts.append(layered.certificate.describe())  # whose, when both were candidates
    parts += [f"pushed {kind} set aside: {why}" for kind, why in layered.set_aside.items()]
    if layered.renewed_aside is not None:
        parts.append(f"renewed certificate set aside: {layered.renewed_aside}")
    return "; ".join(parts)


class Daemon:
    """One meshd: the runtime plus the components serving it."""

    def __init__(self, config_path: Path, config: MeshdConfig) -> None:
        self.config_path = config_path
        self.store = DocumentStore(config.state_dir)
        self.issuer = Issuer(config, lambda: self.rt.registry, self._publish)
        self.documents = Documents(lambda: self.rt, config_path, self.store, self.issuer)
        self.rt = self._start(config)
        self.documents.restore_issuer()  # on the trust bundle the start chose
        self.renewer = Renewer(lambda: self.rt, self.store)
        self.pool = LinkPool(self.rt)
        self.connector = Connector(config.timeouts.connect)
        self.mesh = MeshPort(self.rt, self.connector)
        limits = config.limits
        self.mesh_gate = HandshakeGate(
            limits.max_handshakes, limits.max_handshakes_per_source, grace=HANDSHAKE_GRACE
        )
        self.mesh_silent = HandshakeGate(limits.max_silent, limits.max_silent_per_source)
        self.mesh_listener = TlsListener(
            "mesh",
            lambda: self.rt.tls.server,
            config.timeouts.handshake,
            self.mesh.make_link,
            self.rt.bus.publish,
            self.mesh_gate,
            self.mesh_silent,
        )
        self.heap = allocator.Heap()
        self.servers: list[asyncio.AbstractServer] = []
        self.notifier = Notifier.from_env(os.environ)
        self.metrics = Metrics(self.rt.bus)
        self.authz_log = AuthzLog()  # its lines are written as the metrics count the events
        self.metrics.tap(AuthzDecided, self.authz_log.decided)
        self.metrics.tap(RateLimited, self.authz_log.limited)
        # the live tap and the access log: fed by the metrics consumer, like the authz log
        self.tap = TapHub(self.rt.listening)
        self.access_log = AccessLog(config.access_log, config.identity.trust_domain)
        self.metrics.tap(RequestObserved, self.tap.request)
        self.metrics.tap(ConnectionClosed, self.access_log.closed)
        self._access_changed()
        self.rt.swapped.append(self._access_changed)
        self.admin = AdminServer(_Backend(self), events=self.rt.bus)
        self.ipv6 = SERVED  # or why IPv6 is not served (see _start_listeners)
        self._stop: anyio.Event | None = None

    def _access_changed(self) -> None:
        """Follow ``[access_log]`` of the config now in place (at start, after a reload)."""
        config = self.rt.config
        self.access_log.configure(config.access_log, config.identity.trust_domain)
        self.tap.sink = self.access_log.request if config.access_log.on else None
        self.tap.want_requests(config.access_log.on)

    def _publish(self, event: IssuerAnswered) -> None:
        self.rt.bus.publish(event)  # the bus of the runtime made after the issuer

    async def run(self) -> None:
        self._stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            self.rt.tg, self.rt.loop = tg, asyncio.get_running_loop()
            await tg.start(self.connector.serve)
            await self._start_listeners(tg)
            self.rt.bound["admin"] = await tg.start(
                self.admin.serve, self.rt.config.listen.admin, self.rt.config.listen.admin_socket
            )
            await tg.start(self.renewer.run)
            tg.start_soon(self.metrics.run)
            tg.start_soon(self._signals)
            tg.start_soon(self._sweep)
            tg.start_soon(self._housekeeping)
            await tg.start(watchdog, self.notifier)
            allocator.settle_gc()
            self.rt.ready = True
            self.notifier.notify("READY=1")
            log.info(
                "meshd ready: %s", ", ".join(f"{k}={fmt(v)}" for k, v in self.rt.bound.items())
            )
            await self._stop.wait()
            await self._drain()
            tg.cancel_scope.cancel()

    def _start(self, config: MeshdConfig) -> Runtime:
        """The files with the stored documents on top; MeshError when that cannot run.

        The certificate may come from either layer (``choose_tls``): only when
        neither holds a valid one does meshd refuse to start, setting nothing aside.
        """
        self.store.load_persisted()
        layered = self._layer_stored(load_files(config))
        rt = Runtime(layered.config, layered.tls, layered.registry)
        self._swap(layered, rt)
        verdict = _verdict("started on", self.config_path, layered)
        log.info("%s", verdict)
        rt.last_reload = ReloadOutcome(0, True, verdict)
        return rt

    async def _start_listeners(self, tg: Any) -> None:
        cfg, rt = self.rt.config, self.rt
        self.rt.bound["mesh"] = await tg.start(self.mesh_listener.serve, cfg.listen.mesh)
        self.ipv6 = self._ipv6_plan()
        outbound = self._outbound(rt.config.source_id, None)  # see MeshdConfig.source_id
        await self._redirect_target(tg, "outbound", cfg.listen.outbound, outbound, LOOPBACK6)
        for svc in cfg.services:
            if svc.outbound is not None:
                factory = self._outbound(rt.service_id(svc.name), None)
                await self._redirect_target(
                    tg, f"outbound:{svc.name}", svc.outbound, factory, LOOPBACK6
                )
        for up in cfg.upstreams:
            await tg.start(
                self._listen,
                f"upstream:{up.service}",
                up.listen,
                self._outbound(rt.config.source_id, up.service),
            )
        inbound = lambda: PlainInbound(rt, self.connector, self.mesh.plain)  # noqa: E731
        await self._redirect_target(tg, "inbound", cfg.listen.inbound, inbound, ANY6)
        if self.ipv6 != SERVED:
            log.warning("IPv6 is not served: %s", self.ipv6)

    def _ipv6_plan(self) -> str:
        """Whether the IPv6 twins are to be bound: SERVED, or why not (and then what the rules
        do with IPv6: ``meshd rules apply`` decides it from the same facts)."""
        absent = ipv6_absent()
        if absent:
            return f"absent: {absent}; there are no ip6tables rules"
        if not self.rt.config.listen.ipv6:
            return "off (listen.ipv6 = false): " + IPV6_REJECTED
        return SERVED

    async def _redirect_target(
        self,
        tg: Any,
        name: str,
        address: tuple[str, int],
        factory: Callable[[], asyncio.Protocol],
        twin_host: str,
    ) -> None:
        """A listener the rules redirect to, and its IPv6 twin (where ip6tables redirects).

        ip6tables REDIRECT sends locally made connections to ::1 and arriving
        ones to the address they came in on, so the twin of an outbound
        listener is [::1]:PORT and that of the inbound one [::]:PORT. Where the
        kernel has IPv6 and the config does not turn it off, the rules redirect
        there: a twin that cannot be bound (its port taken, no ::1) stops the
        start, as an IPv4 listener does, since whoever holds that port would
        get what the rules catch.
        """
        await tg.start(self._listen, name, address, factory)
        if self.ipv6 == SERVED:
            twin = (twin_host, address[1])  # the rules name the configured port (0: tests)
            await tg.start(self._listen, f"{name}/v6", twin, factory)

    def _outbound(self, source: Any, fixed: str | None) -> Callable[[], asyncio.Protocol]:
        name = str(source)
        return lambda: OutboundConn(self.rt, self.pool, name, fixed)

    async def _listen(
        self,
        name: str,
        address: tuple[str, int],
        factory: Callable[[], asyncio.Protocol],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(  # IPv6: IPV6_V6ONLY, beside its IPv4 listener
                factory,
                address[0],
                address[1],
                reuse_address=True,
                backlog=4096,
            )
        except OSError as e:
            raise _cannot_listen(name, address, e) from e
        sock: socket.socket = server.sockets[0]
        self.rt.bound[name] = sock.getsockname()[:2]
        self.servers.append(server)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            server.close()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    log.info("received %s: draining", signal.Signals(signum).name)
                    assert self._stop is not None
                    self._stop.set()

    async def reload(self) -> None:
        """Re-read config, certificates, trust bundle and registry: all of it, or nothing."""
        self.notifier.reloading()
        try:
            self.rt.last_reload = await anyio.to_thread.run_sync(self._reload)
        finally:
            self.notifier.notify("READY=1")

    def _reload(self) -> ReloadOutcome:
        generation = self.rt.last_reload.generation + 1
        try:
            files = self._read_files()
            layered = self._adopt(files)
        except MeshError as e:
            log.error("reload failed, keeping the running configuration: %s", e.message)
            return ReloadOutcome(generation, False, e.message)
        except Exception as e:  # a bug must not take the daemon down: say so, change nothing
            log.exception("reload failed, keeping the running configuration")
            return ReloadOutcome(generation, False, f"internal error: {type(e).__name__}: {e}")
        verdict = _verdict("reloaded", self.config_path, layered)
        log.info("%s", verdict)
        return ReloadOutcome(generation, True, verdict)

    def _read_files(self) -> Files:
        """The config file and what it names, validated (the certificate may be found invalid)."""
        config = MeshdConfig.load(self.config_path)
        problem = restart_needed(self.rt.config, config)
        if problem:
            raise MeshError(problem, hint="restart meshd to apply it")
        return load_files(config)

    def _adopt(self, files: Files) -> Layered:
        """Put the stored documents on top of ``files``; swap the result in, in one step.

        Runs in a worker thread, holding the store so that no push lands in
        between; the swap runs on the event loop, so no connection sees half.
        """
        with self.store.transaction():
            layered = self._layer_stored(files)
            anyio.from_thread.run_sync(self._swap, layered, self.rt)
        return layered

    def _layer_stored(self, files: Files) -> Layered:
        """``layer`` over the stored documents, then the store told what it decided."""
        with self.store.transaction():
            layered = layer(files, self.store.documents(), self.config_path.parent)
            for kind, why in layered.set_aside.items():  # before a record takes its place
                self.store.set_aside(kind, why)
            if layered.record is not None:  # later pushes are compared with the file's version
                self.store.record("registry", layered.record.to_dict())
        return layered

    @staticmethod
    def _swap(layered: Layered, rt: Runtime) -> None:
        # another certificate: the links made with the old one retire
        renewed = layered.tls is not rt.tls and layered.tls.serial != rt.tls.serial
        rt.config, rt.tls, rt.registry = layered.config, layered.tls, layered.registry
        rt.policy, rt.files, rt.certificate = layered.policy, layered.files, layered.certificate
        rt.trust = layered.trust
        rt.recompile()
        if renewed:
            rt.bus.publish(CertificateRenewed(rt.tls.not_after.timestamp(), rt.certificate.layer))

    async def _drain(self) -> None:
        self.rt.draining = True
        self.notifier.notify("STOPPING=1")
        for server in self.servers:
            server.close()
        self.mesh_listener.close()
        self.mesh.goaway_all()
        self.pool.goaway_all()
        with anyio.move_on_after(self.rt.config.timeouts.drain):
            while self.rt.active > 0:
                await anyio.sleep(0.05)
        if self.rt.active:
            log.warning(
                "drain deadline passed with %d connections open; closing them", self.rt.active
            )

    async def _sweep(self) -> None:
        """Close app connections idle for longer than the idle timeout (no cost on the hot path)."""
        idle = self.rt.config.timeouts.idle
        seen: dict[int, tuple[int, float]] = {}
        while True:
            await anyio.sleep(max(0.5, min(idle / 4, 30.0)))
            now = anyio.current_time()
            current: dict[int, tuple[int, float]] = {}
            for link in self._links():
                for stream in list(link.streams.values()):
                    moved = stream.sent + stream.received
                    last_moved, since = seen.get(id(stream), (-1, now))
                    if moved != last_moved:
                        since = now
                    elif now - since >= idle:  # tell the peer, so its side ends too
                        link.reset(stream, RST_CANCEL, f"idle for {idle:.0f}s")
                        continue
                    current[id(stream)] = (moved, since)
            seen = current

    def _links(self) -> list[Link]:
        return [*self.pool.links.values(), *self.pool.retiring, *self.mesh.links]

    async def _housekeeping(self, every: float = 2.0) -> None:
        """Give memory back after a burst, and say how many peer-caused lines were left out."""
        while True:
            await anyio.sleep(every)
            if self.heap.give_back():
                log.debug("gave free heap memory back to the kernel")
            peer_lines.flush()


class _Backend:
    """What the admin API sees of the daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def store(self) -> DocumentStore:
        return self.daemon.store

    @property
    def trust_domain(self) -> str:
        return self.daemon.rt.trust_domain

    @property
    def issuer(self) -> Issuer:
        return self.daemon.issuer

    def is_ready(self) -> bool:
        return self.daemon.rt.ready and not self.daemon.rt.draining

    def current_tls(self) -> TlsMaterial:
        return self.daemon.rt.tls

    def renew_now(self) -> None:
        self.daemon.renewer.kick()

    def metrics_text(self) -> str:
        d = self.daemon
        d.metrics.set_certificate_expiry(d.rt.tls.not_after.timestamp())
        for kind, version in d.store.versions().items():
            d.metrics.set_document_version(kind, version)
        aside = d.store.set_aside_documents()
        for kind in d.store.kinds:
            d.metrics.set_document_set_aside(kind, kind in aside)
        d.metrics.set_last_reload(d.rt.last_reload.ok, d.rt.last_reload.at)
        d.metrics.collect()
        d.metrics.set_tap_dropped(d.tap.dropped())
        return d.metrics.render()

    @property
    def tap(self) -> TapHub:
        return self.daemon.tap

    def traffic(self) -> Traffic:
        d = self.daemon
        d.metrics.collect()
        return d.metrics.traffic(d.rt.config.identity.host)

    def stats(self) -> Stats:
        d, rt = self.daemon, self.daemon.rt
        return Stats(
            version=rt.version,
            pid=os.getpid(),
            host=rt.config.identity.host,
            identities=tuple(sorted(str(i) for i in rt.tls.ids)),
            certificate_not_after=rt.tls.not_after.isoformat(),
            certificate_serial=rt.tls.serial,
            renewal=d.renewer.report(),
            certificate=rt.certificate,
            uptime_seconds=round(time.time() - rt.started, 1),
            ready=rt.ready,
            draining=rt.draining,
            active_connections=rt.active,
            documents=d.store.versions(),
            documents_set_aside=d.store.set_aside_documents(),
            reload=rt.last_reload.report(),
            registry_version=rt.registry.version,
            synced_registry_version=synced_version(rt.config),
            mtls=rt.config.mtls,
            links_out=tuple(LinkOut(fmt(k), len(link.streams)) for k, link in d.pool.links.items()),
            links_in=tuple(
                LinkIn(str(link.peer), link.peer_address, len(link.streams))
                for link in d.mesh.links
            ),
            events=EventCounts(rt.bus.published, d.metrics.dropped()),
            listeners={k: fmt(v) for k, v in rt.bound.items()},
            handshakes=HandshakeCounts(
                len(d.mesh_gate),
                len(d.mesh_silent),
                d.mesh_gate.evicted + d.mesh_silent.evicted,
                d.mesh_gate.turned_away,
            ),
            heap=HeapCounts(d.heap.free(), d.heap.trims),
            ipv6=d.ipv6,
            issuer=d.issuer.report(),
        )


def _cannot_listen(name: str, address: tuple[str, int], e: OSError) -> MeshError:
    """One line on a listener that could not bind, with what to do about it."""
    why = os.strerror(e.errno) if e.errno else str(e)  # uvloop's strerror repeats the address
    no_ipv6 = e.errno in NO_IPV6_ERRNOS and ":" in address[0]
    return MeshError(
        f"cannot listen on {fmt(address)} ({name}): {why}",
        hint=NO_IPV6_HINT if no_ipv6 else TAKEN_HINT,
    )


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A failed start's MeshErrors (a port taken) as the first of them, which the CLI says in
    one line; anything else (a bug) as it is, traceback and all."""
    mesh, rest = group.split(MeshError)
    if mesh is None or rest is not None:
        return group
    first: BaseException = mesh
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def raise_fd_limit() -> int:
    """Every relayed connection costs two descriptors: take all the kernel allows us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run(config_path: Path) -> None:
    """Load the config and run until SIGTERM."""
    config = MeshdConfig.load(config_path)
    raise_fd_limit()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    allocator.tune()
    daemon = Daemon(config_path, config)
    try:
        anyio.run(daemon.run, backend="asyncio", backend_options={"use_uvloop": True})
    except BaseExceptionGroup as group:
        error = _one_error(group)
        if error is group:
            raise
        raise error from None
