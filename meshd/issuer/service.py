"""The issuer component of a meshd: its key, its CA document, and answering POST /issue.

An operator makes a host an issuer in two steps: ``POST /issuer/csr`` has
meshd make a fresh *pending* key (0600 in ``<state_dir>/issuer/``, never sent
anywhere) and answer a CSR for ``spiffe://<td>/issuer/<host>``; meshctl signs
it with the root and pushes the ``issuer`` document::

    {"version": N, "cert_pem": "<issuer CA PEM>", "leaf_lifetime": <seconds>}

which is checked whole (``meshd.issuer.x509work.check_ca``) before it is
applied: then the pending key becomes the issuer key. ``cert_pem: ""``
retires the issuer and removes its keys. The document store persists it; at
start ``restore`` checks it again, and sets it aside if it no longer holds.

Signing runs in a worker thread, with cryptography imported there the first
time: a meshd that never became an issuer never loads it. Every answer is
published (``IssuerAnswered``: metrics count it) and every refusal logged in
one line naming the caller and the reason, peer text cleaned, through the
throttle for lines peers cause (``meshd.telemetry.logs.peer_lines``). A
revoked caller is refused before it gets an issue session (``admit``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from meshd.config import MeshdConfig
from meshd.errors import ConfigError
from meshd.identity import SpiffeId, make_id
from meshd.issuer.decide import Caller, Refusal, admitted_host
from meshd.registry import Registry
from meshd.schema import Fields
from meshd.stats import IssuerReport
from meshd.telemetry.events import IssuerAnswered
from meshd.telemetry.logs import clean, peer_lines

if TYPE_CHECKING:
    from meshd.issuer.x509work import Issued, IssuerCa

log = logging.getLogger("meshd.issuer")
REFUSALS = "issuer refusals"  # the log throttle's kind for them: any host can cause them

NO_STATE = Path("/nonexistent/meshd-state")  # without [mesh] state_dir: never an issuer
MIN_LEAF_LIFETIME = 60  # seconds: the shortest leaf a mesh may set (tests use it)
MAX_LEAF_LIFETIME = 90 * 86400  # as meshd.pki.MAX_LEAF_LIFETIME (not imported: x509 code)


@dataclass(frozen=True, eq=False)  # one per push: two are the same only if one was applied
class IssuerChange:
    """A validated issuer document: the CA to run (None: retire) and the leaves' lifetime."""

    ca: IssuerCa | None
    leaf_lifetime: int


class Issuer:
    """This host's issuer: idle until an issuer document is applied."""

    def __init__(
        self,
        config: MeshdConfig,
        registry: Callable[[], Registry],
        publish: Callable[[IssuerAnswered], None],
    ) -> None:
        self.directory = (config.state_dir or NO_STATE) / "issuer"
        self.key_file = self.directory / "key.pem"
        self.pending_file = self.directory / "pending-key.pem"
        self.trust_domain = config.identity.trust_domain
        self.id = make_id(self.trust_domain, "issuer", config.identity.host)
        self.registry = registry
        self.publish = publish
        self.current = IssuerChange(None, 0)
        self.stateless = config.state_dir is None
        self.pending = not self.stateless and self.pending_file.exists()
        self.signed = self.refused = self.unavailable = 0

    @property
    def active(self) -> bool:
        return self.current.ca is not None

    def report(self) -> IssuerReport | None:
        """/stats' view; None when this host is no issuer and is not becoming one."""
        ca = self.current.ca
        if ca is None and not self.pending:
            return None
        not_after = ca.not_after.isoformat() if ca is not None else ""
        return IssuerReport(not_after, self.signed, self.refused, self.pending)

    # --- the key and the document ------------------------------------------------------
    def new_pending(self) -> str:
        """A fresh pending key, replacing any earlier one; the CSR for it (PEM). Blocking."""
        if self.stateless:
            raise ConfigError(
                "an issuer keeps its key in meshd's state directory, and this meshd has none",
                hint="set [mesh] state_dir in meshd.toml and restart meshd",
            )
        from meshd.issuer import x509work  # noqa: PLC0415 - x509 code only on an issuer

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        csr = x509work.new_key(self.pending_file, self.id)
        self.pending = True
        log.info("issuer: made a pending issuer key for %s", self.id)
        return csr

    def validate(self, doc: dict[str, Any], bundle: list[bytes]) -> IssuerChange:
        """The document checked against the keys here and the trust ``bundle`` (DER) meshd runs."""
        fields = Fields(doc, "issuer")
        fields.unknown({"version", "cert_pem", "leaf_lifetime"})
        text = fields.get("cert_pem", str)
        if not text:
            return IssuerChange(None, 0)
        lifetime = fields.get("leaf_lifetime", int)
        if not MIN_LEAF_LIFETIME <= lifetime <= MAX_LEAF_LIFETIME:
            bounds = f"[{MIN_LEAF_LIFETIME}, {MAX_LEAF_LIFETIME}]"
            raise fields.fail("leaf_lifetime", f"{lifetime} s is outside {bounds} seconds")
        from meshd.issuer import x509work  # noqa: PLC0415 - x509 code only on an issuer

        now = dt.datetime.now(dt.UTC)
        keys = [self.pending_file, self.key_file]
        return IssuerChange(x509work.check_ca(text, keys, bundle, self.id, now), lifetime)

    def apply(self, change: IssuerChange) -> None:
        """Run ``change``: a pending key it was signed for becomes the issuer key."""
        if change.ca is None:
            self.key_file.unlink(missing_ok=True)
            self.pending_file.unlink(missing_ok=True)
            self.pending = False
        elif change.ca.key_file == self.pending_file:
            self.pending_file.replace(self.key_file)  # one rename: the old key or the new one
            self.pending = False
        self.current = change
        if change.ca is None:
            log.info("issuer: retired; this host signs nothing")
        else:
            log.info("issuer: signing as %s until %s", self.id, change.ca.not_after.isoformat())

    # --- POST /issue -----------------------------------------------------------------------
    async def issue(self, caller: Caller, peer: str, body: bytes) -> Issued | Refusal | None:
        """Sign the CSR in ``body`` for ``caller``; the refusal; None when this host holds no
        current issuer CA."""
        current = self.current
        if current.ca is None or current.ca.not_after <= dt.datetime.now(dt.UTC):
            self.unavailable += 1  # an expired issuer CA signs nothing: renew it (meshctl)
            self.publish(IssuerAnswered(peer, "unavailable"))
            return None
        outcome = await self._sign(current, caller, body)
        if isinstance(outcome, Refusal):
            self._refused(caller, peer, outcome)
        else:
            self.signed += 1
            self.publish(IssuerAnswered(peer, "signed"))
            log.info("issuer: signed for %s (%s)", peer, _shown(caller.ids))
            for why in outcome.dropped:  # the caller's registry is older: it asked for these
                line = "issuer: signed for %s without %s"
                peer_lines.log(log, logging.WARNING, "issuer left out", line, peer, clean(why))
        return outcome

    def admit(self, caller: Caller, peer: str) -> str | Refusal:
        """The host ``caller`` may open an issue session for; the refusal (counted and logged)
        of a revoked caller, or of one without exactly one host ID, before it takes a slot."""
        host = admitted_host(caller, self.registry(), self.trust_domain, time.time())
        if isinstance(host, Refusal):
            self._refused(caller, peer, host)
        return host

    def _refused(self, caller: Caller, peer: str, refusal: Refusal) -> None:
        self.refused += 1
        self.publish(IssuerAnswered(peer, "refused"))
        why = clean(refusal.reason)
        peer_lines.log(
            log,
            logging.WARNING,
            REFUSALS,
            "issuer: refused %s (%s): %s",
            peer,
            _shown(caller.ids),
            why,
        )

    async def _sign(self, current: IssuerChange, caller: Caller, body: bytes) -> Issued | Refusal:
        csr = csr_of(body)
        if isinstance(csr, Refusal):
            return csr
        assert current.ca is not None
        from meshd.issuer import x509work  # noqa: PLC0415 - x509 code only on an issuer

        lifetime = dt.timedelta(seconds=current.leaf_lifetime)
        registry, now = self.registry(), dt.datetime.now(dt.UTC)
        return await anyio.to_thread.run_sync(
            x509work.sign, current.ca, csr, caller, registry, self.trust_domain, lifetime, now
        )


def csr_of(body: bytes) -> str | Refusal:
    """The ``csr_pem`` of a ``POST /issue`` body, or why there is none."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        return Refusal(f"the request body is not JSON: {e}")
    if not isinstance(doc, dict):
        return Refusal('the request body is not a JSON object {"csr_pem": ...}')
    try:
        fields = Fields(doc, "issue")
        fields.unknown({"csr_pem"})
        return fields.get("csr_pem", str)
    except ConfigError as e:
        return Refusal(e.message)


def _shown(ids: frozenset[SpiffeId]) -> str:
    return clean(", ".join(sorted(str(i) for i in ids)) or "no SPIFFE ID")
