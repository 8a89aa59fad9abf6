"""The renewal component: meshd asks an issuer for a fresh certificate before its own expires.

A round makes a fresh key and a CSR in a ``meshd keygen`` subprocess (the
daemon never loads x509 code), asks the registry's issuers in random order
(``meshd.renewal.issue``) until one signs, proves the answer by loading it
under the trust bundle running at the swap (key, chain and bundle must
agree) and checking it is fit to replace the running certificate
(``meshd.renewal.accept``), keeps it (``meshd.renewal.stored``) and swaps it
in: new connections use it at once, and ``CertificateRenewed`` tells the links.
When no issuer signs, meshd keeps its certificate and backs off
(``meshd.renewal.schedule``, where every "when" is decided). The timer
wakes at most once a second; nothing here is on a connection's path.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

import meshd
from meshd.errors import CertificateError, MeshError
from meshd.identity import SpiffeId
from meshd.registry import IssuerRef
from meshd.renewal import accept, schedule, stored
from meshd.renewal.issue import ask
from meshd.runtime import Runtime
from meshd.stats import CertificateSource, RenewalReport
from meshd.store import DocumentStore
from meshd.telemetry.events import CertificateRenewed, RenewalFailed
from meshd.telemetry.logs import clean
from meshd.tls.context import Pem, TlsMaterial

log = logging.getLogger("meshd.renewal")

TICK = 1.0  # how often the timer looks at the clock and at swaps made by others
KEYGEN_TIMEOUT = 30.0
# this meshd's own code, wherever it was installed: a host's meshd runs from /opt/meshd by a
# launcher that puts its lib on sys.path, which ``python -m meshd.cli`` would not find
_LIB = str(Path(meshd.__file__).resolve().parent.parent)
KEYGEN = (
    sys.executable,
    "-c",
    f"import sys; sys.path.insert(0, {_LIB!r}); from meshd.cli import main; sys.exit(main())",
    "keygen",
)


@dataclass(frozen=True)
class Csr:
    """One round's request: the fresh key, the CSR (PEM), and the IDs it asks for."""

    key: bytes
    pem: str
    ids: frozenset[SpiffeId]


class Renewer:
    """Renews ``runtime()``'s certificate on schedule, or now when ``kick``ed (POST /renew)."""

    def __init__(self, runtime: Callable[[], Runtime], store: DocumentStore) -> None:
        self.runtime = runtime
        self.store = store  # its lock keeps a reload or a push from landing mid-swap
        self.random = random.SystemRandom()
        tls = runtime().tls
        self.plan = schedule.start(
            _ts(tls.not_before), _ts(tls.not_after), time.time(), self.random.random()
        )
        self.serial = tls.serial  # of the certificate the plan is for
        self._kicked = anyio.Event()

    def kick(self) -> None:
        """Renew now, whatever the schedule says."""
        self._kicked.set()

    def report(self) -> RenewalReport:
        p, rt = self.plan, self.runtime()
        state = "failing" if p.failures else "ok" if self._can_renew(rt) else "off"
        renewed = _iso(p.renewed_at) if p.renewed_at is not None else ""
        return RenewalReport(
            state, renewed, _iso(p.next_at), p.failures, p.last_error, p.issuer, p.renewals
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._follow(time.time())
        task_status.started()
        while True:
            await self._wait()
            try:
                await self.round()
            except Exception as e:  # a bug must not stop renewal for good: say so, back off
                log.exception("renewal round failed")
                self._failed(f"internal error: {type(e).__name__}: {e}")

    async def _wait(self) -> None:
        """Until the plan says so, or a kick; following certificates that others swap in."""
        while not self._kicked.is_set():
            now = time.time()
            self._follow(now)
            can = self._can_renew(self.runtime())
            if can and now >= self.plan.next_at:
                return
            # overdue with no issuer to ask: look again in a while (a registry may name one)
            with anyio.move_on_after(min(TICK, self.plan.next_at - now) if can else TICK):
                await self._kicked.wait()
        self._kicked = anyio.Event()

    @staticmethod
    def _can_renew(rt: Runtime) -> bool:
        """An issuer to ask, and a state directory to keep the key in."""
        return bool(rt.registry.issuers) and rt.config.state_dir is not None

    def _follow(self, now: float) -> None:
        """A push or a reload swapped another certificate in: schedule from that one."""
        tls = self.runtime().tls
        if tls.serial != self.serial:
            self.serial = tls.serial
            draw = self.random.random()
            self.plan = schedule.swapped(
                self.plan, _ts(tls.not_before), _ts(tls.not_after), now, draw
            )

    async def round(self) -> None:
        """Ask every issuer, in random order, until one signs; keep and swap in its answer."""
        rt = self.runtime()
        issuers = list(rt.registry.issuers)
        self.random.shuffle(issuers)
        if not issuers or rt.config.state_dir is None:
            self._failed(_why_not(rt))
            return
        ids = schedule.csr_ids(rt.tls.ids, rt.registry, rt.config.identity.host)
        try:
            key_pem, csr_pem = await self._keygen([str(i) for i in ids])
        except MeshError as e:
            self._failed(e.message)
            return
        problems = await self._ask_each(issuers, rt.tls, Csr(key_pem, csr_pem, frozenset(ids)))
        if problems:
            self._failed("; ".join(problems))

    async def _ask_each(self, issuers: list[IssuerRef], tls: TlsMaterial, csr: Csr) -> list[str]:
        """Ask one issuer after the other until one signs; what each that did not said."""
        problems = []
        for issuer in issuers:
            try:
                await self._renew_from(issuer, tls, csr)
            except MeshError as e:
                log.warning("renewal: %s", e.message)
                problems.append(e.message)
            else:
                return []
        return problems

    async def _keygen(self, ids: list[str]) -> tuple[bytes, str]:
        """A fresh key (``pending-key.pem``, 0600) and a CSR for ``ids``, from ``meshd keygen``."""
        state_dir = self.runtime().config.state_dir
        assert state_dir is not None  # round() checked
        key = stored.pending_key_path(state_dir)
        await anyio.to_thread.run_sync(stored.make_identity_dir, state_dir)
        args = [*KEYGEN, "--key", str(key), "--csr", "-", "--force"]
        for i in ids:
            args += ["--id", i]
        with anyio.fail_after(KEYGEN_TIMEOUT):
            done = await anyio.run_process(args, check=False)
        if done.returncode != 0:
            raise CertificateError(
                f"meshd keygen failed: {clean(done.stderr.decode(errors='replace'))}"
            )
        return await anyio.to_thread.run_sync(key.read_bytes), done.stdout.decode()

    async def _renew_from(self, issuer: IssuerRef, tls: TlsMaterial, csr: Csr) -> None:
        rt = self.runtime()
        chain = await ask(issuer, tls, rt.trust_domain, csr.pem)
        fresh = await anyio.to_thread.run_sync(self._keep, chain.encode(), csr, issuer.host)
        self.plan = schedule.renewed(
            self.plan, _ts(fresh.not_after), issuer.host, time.time(), self.random.random()
        )
        log.info(
            "renewed the certificate from issuer %s: serial %s, expires %s",
            issuer.host,
            fresh.serial,
            fresh.not_after.isoformat(),
        )

    def _keep(self, chain: bytes, csr: Csr, issuer: str) -> TlsMaterial:
        """In a worker thread, holding the store: prove the answer under the trust bundle
        meshd runs *now* (a trust push may have landed while the issuer signed), write it,
        swap it in."""
        with self.store.transaction():
            rt = self.runtime()
            running = rt.tls
            assert rt.config.state_dir is not None  # round() checked
            fresh = self._proven(Pem(chain, csr.key, running.pem.bundle), csr, running, issuer)
            stored.write_renewed(rt.config.state_dir, fresh)
            anyio.from_thread.run_sync(self._swap, fresh, issuer)
        return fresh

    def _proven(self, pem: Pem, csr: Csr, running: TlsMaterial, issuer: str) -> TlsMaterial:
        """``pem`` loaded and fit to run instead of ``running``; CertificateError saying why not."""
        try:
            fresh = TlsMaterial.from_pem(pem)
        except CertificateError as e:
            raise CertificateError(
                f"issuer {issuer}: its certificate does not load: {e.message}"
            ) from e
        host_id = self.runtime().config.identity.host_id
        problem = accept.refusal(
            accept.leaf_der(pem.chain),
            fresh.ids,
            fresh.not_after,
            csr.ids,
            host_id,
            running.not_after,
        )
        if problem is not None:
            raise CertificateError(f"issuer {issuer}: {clean(problem)}")
        return fresh

    def _swap(self, fresh: TlsMaterial, issuer: str) -> None:
        rt = self.runtime()
        rt.tls, self.serial = fresh, fresh.serial
        rt.certificate = CertificateSource("renewed", None, f"renewed by issuer {issuer}")
        rt.bus.publish(CertificateRenewed(_ts(fresh.not_after)))
        rt.recompile()  # the swap hooks: links made with the old certificate retire

    def _failed(self, error: str) -> None:
        now = time.time()
        self.plan = schedule.failed(self.plan, error, now, self.random.random())
        wait = self.plan.next_at - now
        log.warning(
            "renewal failed (%d in a row), keeping the certificate (expires %s);"
            " next try in %.1fs: %s",
            self.plan.failures,
            _iso(self.plan.not_after),
            wait,
            error,
        )
        self.runtime().bus.publish(RenewalFailed(error))


def _why_not(rt: Runtime) -> str:
    if rt.config.state_dir is None:
        return "no [mesh] state_dir: renewal has nowhere to keep its key"
    return f"the registry (version {rt.registry.version}) names no issuer"


def _ts(when: dt.datetime) -> float:
    return when.timestamp()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
