"""``meshctl ca rotate``: move every host to a new root CA without failing a request.

``begin``: the next CA (``meshctl.castore``), a trust bundle of both roots in
the workspace and on every joined host (``PUT /trust``). Only once every host
trusts both roots (a peer may meet a leaf of either from then on) does it go
on: the operator certificate under the new issuing CA, the issuers re-signed
by the new root, and, once every issuer is, every host told to renew now
(``POST /renew``). Each step is skipped where it is done already, so an
interrupted or partly failed ``begin`` is finished by running it again.

``finish`` refuses, naming the hosts, until every joined host serves a leaf
of the new root (a TLS handshake to its admin port trusting the new root
alone, then its /stats) and every issuer holds a CA of it; then the bundle
of the new root alone goes to every host, and only when all took it does
the workspace move to the new CA. ``survey`` is what ``status`` shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509

from meshctl import castore, state
from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.ca import Authority, MeshCa
from meshctl.fleet import Fleet, HostResults, fan_out, parallel
from meshctl.inventory import HostSpec
from meshctl.issuers import install
from meshctl.provision.rollout import Outcome, Rollout
from meshctl.workspace import Workspace, renew_operator
from meshd.errors import CertificateError, ConfigError, ConnectError, MeshError
from meshd.pki import cert_pem
from meshd.stats import Stats

NEW, OLD = "new root", "old root"
WAIT_FOR_TRUST = (
    "issuers are re-signed and hosts renew once every host trusts both roots: "
    "run meshctl ca rotate begin again"
)
WAIT_FOR_ISSUERS = (
    "hosts renew once every issuer holds a CA of the new root: run meshctl ca rotate begin again"
)
NO_ISSUER = (
    "no joined host is an issuer, so no host can renew to the new root: make one "
    "(meshctl issuer add HOST), then run meshctl ca rotate begin again"
)


@dataclass(frozen=True)
class HostRotation:
    """Where one host is in a rotation: the root of the leaf it serves, and of its issuer CA."""

    host: str
    address: str
    leaf: str = ""  # NEW, OLD, or "" when it could not be seen
    serial: str = ""
    trust_version: int | None = None  # of the trust document meshd runs
    renewal: str = ""  # meshd's renewal state: ok, failing, off
    renewal_error: str = ""
    issuer: str = ""  # "" when no issuer, else NEW, OLD or "no CA"
    error: str = ""

    @property
    def ready(self) -> bool:
        return not self.error and self.leaf == NEW and self.issuer in ("", NEW)

    def why_not(self) -> str:
        if self.error:
            return f"{self.host} (unreachable: {self.error})"
        if self.leaf != NEW:
            failing = f"; its renewal fails: {self.renewal_error}" if self.renewal_error else ""
            return f"{self.host} (serves a leaf of the old root{failing})"
        return f"{self.host} (its issuer CA is {'missing' if self.issuer == 'no CA' else OLD})"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ready": self.ready}


def refusal(rows: list[HostRotation]) -> CertificateError | None:
    """Why ``finish`` may not remove the old root yet (None: it may)."""
    waiting = [r.why_not() for r in rows if not r.ready]
    if not waiting:
        return None
    return CertificateError(
        "not finishing the CA rotation: the old root is still needed by " + ", ".join(waiting),
        hint="hosts renew from the re-signed issuers on their own (meshctl ca rotate status "
        "shows where each is); meshctl ca rotate begin again makes them renew now",
    )


def joined_hosts(ws: Workspace) -> list[HostSpec]:
    members = state.joined(ws)
    return [h for h in state.load_inventory(ws).hosts if h.name in members]


# -- begin
def begin(ro: Rollout) -> tuple[list[Outcome], list[str]]:
    """Start (or carry on) a rotation; one row per joined host, and notes on the workspace."""
    following, roots, notes = _prepare(ro)
    hosts = joined_hosts(ro.ws)
    rows = _rows(push_trust(ro, hosts, roots), "trusted")
    if any(not r.ok for r in rows):
        return rows, [*notes, WAIT_FOR_TRUST]
    notes += _operator_under(ro, following.issuing)
    client = ro.admin()  # with the operator certificate as it is now
    resigned = fan_out(lambda h: _resign(ro, client, h, following.root), hosts)
    _merge(rows, resigned, "trusted")
    if hosts and all(result is None for result in resigned.values()):
        return rows, [*notes, NO_ISSUER]
    if any(not r.ok for r in rows):
        return rows, [*notes, WAIT_FOR_ISSUERS]
    _merge(rows, fan_out(lambda h: _renew(ro, client, h), hosts), "renewing")
    return rows, notes


def _prepare(ro: Rollout) -> tuple[MeshCa, list[x509.Certificate], list[str]]:
    """The next CA (made once) and the workspace's bundle of both roots."""
    passphrase = ro.passphrase()
    current = castore.load(ro.ws, "", passphrase)  # a wrong passphrase stops here
    following, made = castore.next_ca(ro.ws, passphrase, ro.now())
    notes = [f"{'made' if made else 'kept'} the new root CA in ca/next/"]
    if castore.mend_operator(ro.ws, current.issuing, ro.now()):
        notes.append("operator key and certificate did not fit: made anew")
    roots = [current.root.cert, following.root.cert]
    castore.write_bundle(ro.ws, roots)
    return following, roots, notes


def _operator_under(ro: Rollout, issuing: Authority) -> list[str]:
    """The operator certificate from the new issuing CA: every host trusts both roots now,
    and after finish only the new one."""
    if castore.operator_under(ro.ws, issuing.cert):
        return []
    renew_operator(ro.ws, issuing, ro.now())
    return ["operator certificate issued by the new issuing CA"]


def push_trust(
    fleet: Fleet, hosts: list[HostSpec], roots: list[x509.Certificate]
) -> HostResults[str]:
    """The trust bundle of ``roots`` to each of ``hosts`` (a document versioned like the
    registry: a host that has it already answers unchanged)."""
    doc = state.versioned_document(fleet.ws, "trust", {"bundle_pem": cert_pem(*roots).decode()})
    state.record_document(fleet.ws, "trust", doc)
    what = "both roots" if len(roots) > 1 else "the new root alone"
    client = fleet.admin()

    def push(host: HostSpec) -> str:
        fleet.progress(host.name, f"pushing the trust bundle ({what})")
        answer = client.call(fleet.endpoint(host), "PUT", "/trust", doc) or {}
        fresh = "applied" if answer.get("status") == "applied" else "had it already"
        return f"trust bundle version {doc['version']} ({what}): {fresh}"

    return fan_out(push, hosts)


def _resign(fleet: Fleet, client: AdminClient, host: HostSpec, root: Authority) -> str | None:
    """An issuer's CA re-signed by the new root (None: the host is no issuer)."""
    endpoint = fleet.endpoint(host)
    stats = client.stats(endpoint)
    if not (host.issuer or stats.issuer is not None):
        return None
    if issuer_root(client, endpoint, root.cert) == NEW:
        return "issuer CA already signed by the new root"
    return install(fleet, client, host, root)


def _renew(fleet: Fleet, client: AdminClient, host: HostSpec) -> str:
    fleet.progress(host.name, "asking meshd to renew its certificate now")
    client.call(fleet.endpoint(host), "POST", "/renew", {})
    return "renewing its certificate now, from the re-signed issuers"


def issuer_root(client: AdminClient, endpoint: AdminEndpoint, new: x509.Certificate) -> str:
    """Which root signed the issuer CA the host runs: NEW, OLD, or "no CA"."""
    doc = client.call(endpoint, "GET", "/issuer") or {}
    pem = str(doc.get("cert_pem", ""))
    if not pem:
        return "no CA"
    return NEW if castore.signed_by(x509.load_pem_x509_certificate(pem.encode()), new) else OLD


# -- status and finish
def check_in_progress(ws: Workspace) -> None:
    if not castore.in_progress(ws):
        raise ConfigError("no CA rotation in progress", hint="meshctl ca rotate begin starts one")


def survey(fleet: Fleet) -> list[HostRotation]:
    """Where each joined host is, seen through a TLS handshake trusting the new root alone."""
    check_in_progress(fleet.ws)
    client = fleet.admin()
    strict = client.trusting(fleet.ws.ca_files(castore.NEXT).root_cert)
    new = castore.root_of(fleet.ws, castore.NEXT)
    return parallel(lambda h: _look(fleet, client, strict, h, new), joined_hosts(fleet.ws))


def _look(
    fleet: Fleet, client: AdminClient, strict: AdminClient, host: HostSpec, new: x509.Certificate
) -> HostRotation:
    endpoint = fleet.endpoint(host)
    fleet.progress(host.name, "checking its certificate against the new root")
    try:
        leaf, stats = _served(client, strict, endpoint)
        issuer = ""
        if host.issuer or stats.issuer is not None:
            issuer = issuer_root(client, endpoint, new)
    except MeshError as e:
        return HostRotation(host.name, host.address, error=e.message)
    renewal = stats.renewal
    return HostRotation(
        host.name,
        host.address,
        leaf,
        stats.certificate_serial,
        stats.documents.get("trust"),
        renewal.state if renewal else "",
        renewal.last_error if renewal and renewal.state == "failing" else "",
        issuer,
    )


def _served(client: AdminClient, strict: AdminClient, endpoint: AdminEndpoint) -> tuple[str, Stats]:
    """NEW when the host's certificate verifies under the new root alone, else OLD (when it
    still verifies under the workspace bundle); /stats read over that connection."""
    try:
        return NEW, strict.stats(endpoint)
    except ConnectError:
        return OLD, client.stats(endpoint)


def complete(ro: Rollout) -> tuple[list[Outcome], list[str]]:
    """The bundle of the new root alone to every host; when all took it, the workspace's move."""
    ws = ro.ws
    rows = _rows(push_trust(ro, joined_hosts(ws), [castore.root_of(ws, castore.NEXT)]), "finished")
    if any(not r.ok for r in rows):
        return rows, [
            "the workspace keeps the old CA until every host runs the new root "
            "alone: run meshctl ca rotate finish again"
        ]
    name = castore.promote(ws, ro.now())
    return rows, [
        f"the new CA is in use; the old one is kept in ca/retired/{name}/ "
        f"(its keys in secrets/retired/{name}/)",
        "the hosts' /etc/meshd still holds the old trust bundle, under the pushed one: "
        "meshctl join --all puts the new one there too",
    ]


def check_operator(ws: Workspace) -> None:
    """finish needs the operator certificate of the new CA: the old one is refused after."""
    issuing = castore.load_issuing_cert(ws, castore.NEXT)
    if not castore.operator_under(ws, issuing):
        raise CertificateError(
            "the operator certificate is not yet issued by the new CA",
            hint="meshctl ca rotate begin again issues it, once every host trusts both roots",
        )


# -- rows
def _rows(results: HostResults[str], status: str) -> list[Outcome]:
    rows = [Outcome(h.name, h.address, status) for h in results]
    _merge(rows, results, status)
    return rows


def _merge(rows: list[Outcome], results: HostResults[Any], status: str) -> None:
    """Each host's result into its row: a line of what was done, or its failure."""
    by_host: dict[str, Outcome] = {r.host: r for r in rows}
    for host, result in results.items():
        row = by_host[host.name]
        if isinstance(result, MeshError):
            row.status, row.error = "failed", result
        elif isinstance(result, str):
            row.status = status
            row.done.append(result)
