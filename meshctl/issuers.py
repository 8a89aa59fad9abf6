"""Issuers: hosts whose meshd signs the mesh's renewals with a CA the root signed.

``meshctl issuer add`` asks each host's meshd for a fresh issuer key
(``POST /issuer/csr``: the key never leaves the host), signs its CSR with the
root (``meshctl.ca.sign_issuer``) and installs the CA (``PUT /issuer``).
hosts.toml records who is an issuer (``issuer = true``), and the registry
pushed to every joined host lists them (``control.registry_for``), so that
renewing meshds know where to go. ``renew`` re-signs, with a fresh key, the
issuers whose CA is past 2/3 of its life; ``remove`` retires them.

Each host's work ends in an ``Outcome`` row, like join's: one table, and a
non-zero exit on partial failure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from meshctl import state
from meshctl.admin_client import AdminClient, AdminEndpoint, AdminReply
from meshctl.ca import Authority, sign_issuer
from meshctl.control import push_registry
from meshctl.fleet import Fleet, HostResults, fan_out
from meshctl.inventory import HostSpec
from meshctl.provision.rollout import Outcome, Rollout, with_pushes
from meshd.errors import ConfigError, MeshError, ProvisionError
from meshd.pki import cert_pem
from meshd.stats import Stats

RENEW_AT = 2 / 3  # re-sign an issuer CA past this share of its life
WARN_AT = 1 / 2  # meshctl status warns past this share


@dataclass(frozen=True)
class IssuerDocument:
    """What a host's meshd runs as an issuer (``GET /issuer``): None when no CA."""

    version: int = 0
    cert: x509.Certificate | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None, host: str) -> IssuerDocument:
        if doc is None:
            return cls()
        version, pem = doc.get("version", 0), doc.get("cert_pem", "")
        if not isinstance(version, int) or not isinstance(pem, str):
            raise ProvisionError(f"{host}: meshd answered GET /issuer with a malformed document")
        try:
            cert = x509.load_pem_x509_certificate(pem.encode()) if pem else None
        except ValueError as e:
            raise ProvisionError(f"{host}: meshd's issuer CA does not parse: {e}") from e
        return cls(version, cert)


def life_used(cert: x509.Certificate, now: dt.datetime) -> float:
    """The share of ``cert``'s life that has passed at ``now`` (beyond 1: expired)."""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return (now - cert.not_valid_before_utc) / life


def due(doc: IssuerDocument, now: dt.datetime, force: bool) -> bool:
    """Whether this issuer needs a new CA: none, past 2/3 of its life, or ``force``."""
    return force or doc.cert is None or life_used(doc.cert, now) >= RENEW_AT


# -- meshd's issuer API
def _call(client: AdminClient, endpoint: AdminEndpoint, method: str, path: str, doc: Any) -> Any:
    """One admin request's body; meshd's own error and hint when it refuses."""
    return _body(client.request(endpoint, method, path, doc), endpoint, f"{method} {path}")


def _body(reply: AdminReply, endpoint: AdminEndpoint, what: str) -> Any:
    if 200 <= reply.status < 300:
        return reply.body
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status == 404 and what.startswith("POST"):  # a meshd from before issuers
        body = {"error": "its meshd has no issuer API", "hint": f"meshctl join {endpoint.host}"}
    raise ProvisionError(
        f"{endpoint.host}: {what} failed ({reply.status}): "
        f"{body.get('error') or str(reply.body).strip()[:200] or 'no message'}",
        hint=body.get("hint") or f"see journalctl -u meshd on {endpoint.host}",
    )


def read_document(client: AdminClient, endpoint: AdminEndpoint) -> IssuerDocument:
    """The issuer document meshd runs (an empty one when it has none: 404)."""
    reply = client.request(endpoint, "GET", "/issuer")
    if reply.status == 404:
        return IssuerDocument()
    body = _body(reply, endpoint, "GET /issuer")
    return IssuerDocument.from_json(body if isinstance(body, dict) else None, endpoint.host)


def _request_csr(client: AdminClient, endpoint: AdminEndpoint) -> x509.CertificateSigningRequest:
    body = _call(client, endpoint, "POST", "/issuer/csr", {})
    pem = body.get("csr_pem") if isinstance(body, dict) else None
    try:
        return x509.load_pem_x509_csr(pem.encode() if isinstance(pem, str) else b"")
    except ValueError as e:
        raise ProvisionError(f"{endpoint.host}: meshd sent no usable issuer CSR: {e}") from e


def _put(fleet: Fleet, client: AdminClient, endpoint: AdminEndpoint, pem: str) -> None:
    version = read_document(client, endpoint).version + 1
    leaf = fleet.ws.config.defaults.leaf_lifetime
    _call(
        client,
        endpoint,
        "PUT",
        "/issuer",
        {"version": version, "cert_pem": pem, "leaf_lifetime": leaf},
    )


def install(ro: Fleet, client: AdminClient, host: HostSpec, root: Authority) -> str:
    """A fresh issuer key on ``host``, its CA signed by the root and installed."""
    endpoint = ro.endpoint(host)
    ro.progress(host.name, "asking meshd for a fresh issuer key")
    csr = _request_csr(client, endpoint)
    config = ro.ws.config
    lifetime = dt.timedelta(seconds=config.defaults.issuer_lifetime)
    cert = sign_issuer(csr, host.name, root, ro.now(), lifetime, config.trust_domain)
    ro.progress(host.name, "installing its issuer CA")
    _put(ro, client, endpoint, cert_pem(cert).decode())
    return f"issuer CA signed by the root, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M}"


def retire(ro: Fleet, client: AdminClient, host: HostSpec) -> str:
    """``host``'s meshd drops its issuer CA and key."""
    ro.progress(host.name, "retiring its issuer CA")
    _put(ro, client, ro.endpoint(host), "")
    return "issuer CA and key removed"


# -- the commands' core
def joined_hosts(ro: Fleet, names: Iterable[str]) -> list[HostSpec]:
    """The inventory hosts ``names``; every one must have joined."""
    inventory, members = state.load_inventory(ro.ws), state.joined(ro.ws)
    hosts = []
    for name in dict.fromkeys(names):
        host = inventory.host(name)
        if host is None or name not in members:
            raise ConfigError(
                f"{name} is not a joined host of hosts.toml",
                hint=f"join it first: meshctl join {name}",
            )
        hosts.append(host)
    return hosts


def add(ro: Rollout, hosts: list[HostSpec]) -> list[Outcome]:
    """Make ``hosts`` issuers, record them, and push the registry that lists them."""
    root = ro.ws.root_authority(ro.passphrase())  # a wrong passphrase stops here
    client = ro.admin()
    results = fan_out(lambda h: install(ro, client, h, root), hosts)
    _record(ro, results, issuer=True)
    return _with_registry(ro, _rows(results, "issuer"))


def remove(ro: Rollout, hosts: list[HostSpec]) -> list[Outcome]:
    """No issuer any more: out of the registry first (renewals stop going there), then
    each meshd drops its CA; one that cannot be reached keeps it until it expires."""
    inventory = state.load_inventory(ro.ws)
    for host in hosts:
        inventory = inventory.with_issuer(host.name, False)
    state.save_inventory(ro.ws, inventory)
    pushes = push_registry(ro, state.joined(ro.ws))
    client = ro.admin()
    results = fan_out(lambda h: retire(ro, client, h), hosts)
    for host, result in results.items():
        if isinstance(result, MeshError):
            result.hint = (
                f"it is out of the registry, but its meshd keeps the issuer CA until it expires; "
                f"run meshctl issuer remove {host.name} again once it answers"
            )
    return with_pushes(_rows(results, "removed"), pushes)


def renew(ro: Rollout, force: bool, only_due: bool = False) -> list[Outcome]:
    """Re-sign, with a fresh key, the issuers past 2/3 of their CA's life (``force``: all).

    ``only_due``: rows for the issuers re-signed (or failing to be) only, and an
    issuer that cannot be read is left to ``meshctl status`` (join's way).
    """
    inventory = state.load_inventory(ro.ws)
    issuers = [h for h in inventory.hosts if h.issuer and h.name in state.joined(ro.ws)]
    if not issuers:
        return []
    client = ro.admin()
    docs = fan_out(lambda h: read_document(client, ro.endpoint(h)), issuers)
    now = ro.now()
    todo = [h for h, d in docs.items() if isinstance(d, IssuerDocument) and due(d, now, force)]
    rest = {h: _valid_until(d) for h, d in docs.items() if h not in todo}
    rows = [] if only_due else _rows(rest, "current")
    if not todo:
        return rows
    root = ro.ws.root_authority(ro.passphrase())
    return rows + _rows(fan_out(lambda h: install(ro, client, h, root), todo), "renewed")


def _valid_until(doc: IssuerDocument | MeshError) -> str | MeshError:
    if isinstance(doc, MeshError) or doc.cert is None:
        return doc if isinstance(doc, MeshError) else ""
    return f"issuer CA valid until {doc.cert.not_valid_after_utc:%Y-%m-%d %H:%M}"


def _record(ro: Fleet, results: HostResults[str], issuer: bool) -> None:
    inventory = state.load_inventory(ro.ws)
    for host, result in results.items():
        if not isinstance(result, MeshError):
            inventory = inventory.with_issuer(host.name, issuer)
    state.save_inventory(ro.ws, inventory)


def _with_registry(ro: Fleet, rows: list[Outcome]) -> list[Outcome]:
    return with_pushes(rows, push_registry(ro, state.joined(ro.ws)))


def _rows(results: HostResults[Any], status: str) -> list[Outcome]:
    rows = []
    for host, result in results.items():
        row = Outcome(host.name, host.address, status)
        if isinstance(result, MeshError):
            row.status, row.error = "failed", result
        elif isinstance(result, str):
            row.done = [result]
        rows.append(row)
    return rows


def merge(outcomes: list[Outcome], more: list[Outcome]) -> list[Outcome]:
    """``more`` rows merged into the rows of the same host (a failure fails it), others added."""
    by_host = {o.host: o for o in outcomes}
    extra = []
    for row in more:
        mine = by_host.get(row.host)
        if mine is None:
            extra.append(row)
            continue
        mine.done += row.done
        if row.error is not None and mine.ok:
            mine.status, mine.error = "failed", row.error
    return outcomes + extra


# -- meshctl issuer list
@dataclass(frozen=True)
class IssuerState:
    """One issuer as ``meshctl issuer list`` shows it."""

    host: str
    address: str
    state: str  # ok | renew | expired | no CA | unreachable
    not_after: dt.datetime | None = None
    signed: int = 0
    refused: int = 0
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "address": self.address,
            "state": self.state,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "signed": self.signed,
            "refused": self.refused,
            "detail": self.detail,
        }


def issuer_state(
    host: HostSpec, stats: Stats | MeshError, now: dt.datetime, lifetime: int
) -> IssuerState:
    """What ``stats`` says of ``host`` as an issuer; ``lifetime``: issuer_lifetime, seconds."""
    if isinstance(stats, MeshError):
        return IssuerState(host.name, host.address, "unreachable", detail=stats.message)
    report = stats.issuer
    not_after = parse_time(report.not_after) if report else None
    if report is None or not_after is None:
        return IssuerState(
            host.name, host.address, "no CA", detail=f"run meshctl issuer add {host.name}"
        )
    counts = (report.signed, report.refused)
    state, detail = "ok", ""
    if not_after <= now:
        state, detail = "expired", f"run meshctl issuer add {host.name}"
    elif past_share(not_after, now, lifetime, WARN_AT):
        state, detail = "renew", "past half its life: run meshctl ca renew-issuers"
    return IssuerState(host.name, host.address, state, not_after, *counts, detail)


def past_share(not_after: dt.datetime, now: dt.datetime, lifetime: int, share: float) -> bool:
    """Whether an issuer CA ending at ``not_after`` is past ``share`` of its life.

    /stats gives only its end; its life is taken to be mesh.toml's
    issuer_lifetime (what it was signed with, unless the root capped it).
    """
    return (not_after - now).total_seconds() < lifetime * (1 - share)


def parse_time(text: str) -> dt.datetime | None:
    """An ISO 8601 time from meshd (UTC when it names no zone); None when empty or bad."""
    try:
        value = dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return value.replace(tzinfo=dt.UTC) if value and value.tzinfo is None else value


def survey(fleet: Fleet) -> list[IssuerState]:
    """Every issuer of hosts.toml, as its meshd reports it."""
    hosts = [h for h in state.load_inventory(fleet.ws).hosts if h.issuer]
    client = fleet.admin()
    stats = fan_out(lambda h: client.stats(fleet.endpoint(h)), hosts)
    lifetime, now = fleet.ws.config.defaults.issuer_lifetime, fleet.now()
    return [issuer_state(h, s, now, lifetime) for h, s in stats.items()]
