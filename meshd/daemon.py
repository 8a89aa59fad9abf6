"""``meshd run``: the daemon's components in one task group, signals, reload and drain.

Components (mesh port, outbound listeners, inbound listener, admin API,
sweeper, watchdog) are started with ``await tg.start(...)`` and report ready
after binding; READY=1 goes to systemd only then. The relay itself runs on
asyncio protocols over uvloop; anyio structures everything around it.
SIGHUP reloads certificates, trust bundle, registry and the live parts of
the config; SIGTERM stops accepting, tells peers to go away, drains with a
deadline and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from meshd.config import MeshdConfig
from meshd.errors import MeshError
from meshd.inbound import MeshPort, PlainInbound
from meshd.link import Link
from meshd.netfacts import fmt
from meshd.outbound import LinkPool, OutboundConn
from meshd.runtime import Runtime, check_identity, load_registry
from meshd.systemd import Notifier, watchdog
from meshd.tls import TlsMaterial

log = logging.getLogger("meshd")


class Daemon:
    """One meshd: the runtime plus the components serving it."""

    def __init__(self, config_path: Path, config: MeshdConfig) -> None:
        self.config_path = config_path
        self.rt = Runtime.load(config)
        self.pool = LinkPool(self.rt)
        self.mesh = MeshPort(self.rt)
        self.servers: list[asyncio.AbstractServer] = []
        self.notifier = Notifier.from_env(os.environ)
        self._stop: anyio.Event | None = None

    async def run(self) -> None:
        self._stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            self.rt.tg = tg
            await self._start_listeners(tg)
            tg.start_soon(self._signals)
            tg.start_soon(self._sweep)
            await tg.start(watchdog, self.notifier)
            self.rt.ready = True
            self.notifier.notify("READY=1")
            log.info(
                "meshd ready: %s", ", ".join(f"{k}={fmt(v)}" for k, v in self.rt.bound.items())
            )
            await self._stop.wait()
            await self._drain()
            tg.cancel_scope.cancel()

    async def _start_listeners(self, tg: Any) -> None:
        cfg, rt = self.rt.config, self.rt
        await tg.start(
            self._listen, "mesh", cfg.listen.mesh, self.mesh.make_link, self._server_tls()
        )
        await tg.start(
            self._listen,
            "outbound",
            cfg.listen.outbound,
            self._outbound(rt.config.identity.host_id, None),
            None,
        )
        for svc in cfg.services:
            if svc.outbound is not None:
                await tg.start(
                    self._listen,
                    f"outbound:{svc.name}",
                    svc.outbound,
                    self._outbound(rt.service_id(svc.name), None),
                    None,
                )
        for up in cfg.upstreams:
            await tg.start(
                self._listen,
                f"upstream:{up.service}",
                up.listen,
                self._outbound(rt.config.identity.host_id, up.service),
                None,
            )
        await tg.start(self._listen, "inbound", cfg.listen.inbound, lambda: PlainInbound(rt), None)

    def _outbound(self, source: Any, fixed: str | None) -> Callable[[], asyncio.Protocol]:
        return lambda: OutboundConn(self.rt, self.pool, source, fixed)

    def _server_tls(self) -> Any:
        """The mesh port's TLS context; each handshake switches to the current material."""
        ctx = self.rt.tls.server

        def use_current(ssl_object: Any, server_name: str | None, _ctx: Any) -> None:
            ssl_object.context = self.rt.tls.server

        ctx.sni_callback = use_current
        return ctx

    async def _listen(
        self,
        name: str,
        address: tuple[str, int],
        factory: Callable[[], asyncio.Protocol],
        ssl_ctx: Any,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                factory,
                address[0],
                address[1],
                ssl=ssl_ctx,
                reuse_address=True,
                backlog=4096,
                ssl_handshake_timeout=self.rt.config.timeouts.handshake if ssl_ctx else None,
            )
        except OSError as e:
            raise MeshError(
                f"cannot listen on {fmt(address)} ({name}): {e.strerror}",
                hint="is another meshd running, or the port taken?",
            ) from e
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
        """Re-read config, certificates, trust bundle and registry; swap what changed."""
        self.notifier.notify("RELOADING=1")
        try:
            config = await anyio.to_thread.run_sync(MeshdConfig.load, self.config_path)
            self.apply_config(config)
            log.info(
                "reloaded %s (registry version %d)", self.config_path, self.rt.registry.version
            )
        except MeshError as e:
            log.error("reload failed, keeping the running configuration: %s", e.message)
        finally:
            self.notifier.notify("READY=1")

    def apply_config(self, config: MeshdConfig) -> None:
        """Swap in a new config; listener addresses need a restart and are refused."""
        old = self.rt.config
        if (config.listen, config.identity.host, config.upstreams) != (
            old.listen,
            old.identity.host,
            old.upstreams,
        ) or [s.outbound for s in config.services] != [s.outbound for s in old.services]:
            raise MeshError(
                "listen addresses or host name changed", hint="restart meshd to apply them"
            )
        ident = config.identity
        tls = TlsMaterial.load(ident.cert, ident.key, ident.bundle)
        check_identity(config, tls)
        registry = load_registry(config.registry)
        self.rt.config, self.rt.tls, self.rt.registry = config, tls, registry

    async def _drain(self) -> None:
        self.rt.draining = True
        self.notifier.notify("STOPPING=1")
        for server in self.servers:
            server.close()
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
                    elif now - since >= idle:
                        stream.reset(f"idle for {idle:.0f}s")
                        continue
                    current[id(stream)] = (moved, since)
            seen = current

    def _links(self) -> list[Link]:
        return [*self.pool.links.values(), *self.mesh.links]


def run(config_path: Path) -> None:
    """Load the config and run until SIGTERM."""
    config = MeshdConfig.load(config_path)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    daemon = Daemon(config_path, config)
    anyio.run(daemon.run, backend="asyncio", backend_options={"use_uvloop": True})
