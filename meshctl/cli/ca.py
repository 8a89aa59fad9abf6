"""``meshctl ca``: inspect the mesh CA, sign CSRs by hand, renew issuers and the operator."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from meshctl import issuers, monitors, state
from meshctl.ca import DEFAULT_LEAF_LIFETIME, MAX_LEAF_LIFETIME, sign_csr
from meshctl.cli.common import finish, make_rollout, rollout_progress
from meshctl.cli.context import app_context
from meshctl.fleet import SshOptions
from meshctl.views.ca import ca_table, summarize
from meshctl.workspace import ca_certificates, renew_operator
from meshd.errors import CertificateError, ConfigError
from meshd.identity import SpiffeId
from meshd.pki import cert_pem

app = typer.Typer(help="Inspect the mesh CA and sign certificate requests.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


@app.command("show")
def show(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Show the root CA, issuing CA and operator certificates.

    Example: meshctl ca show --json
    """
    actx = app_context(ctx)
    ws = actx.workspace()
    now = actx.clock()
    certs = [summarize(role, cert, now) for role, cert in ca_certificates(ws)]
    if json_out:
        actx.print_json(
            {
                "name": ws.config.name,
                "trust_domain": ws.config.trust_domain,
                "ca_key_encrypted": ws.config.ca_key_encrypted,
                "certificates": [c.to_json() for c in certs],
            }
        )
        return
    actx.out.print(ca_table(ws.config.name, ws.config.trust_domain, certs))


@app.command("sign")
def sign(
    ctx: typer.Context,
    csr_path: Annotated[Path, typer.Argument(metavar="CSR", help="PEM CSR made by meshd keygen")],
    ids: Annotated[list[str], typer.Option("--id", help="SPIFFE ID to sign for (repeat for each)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the certificate chain")],
    lifetime_hours: Annotated[int, typer.Option(help="certificate lifetime in hours")] = int(
        DEFAULT_LEAF_LIFETIME.total_seconds() // 3600
    ),
    json_out: JsonOption = False,
) -> None:
    """Sign a CSR for exactly the given SPIFFE IDs (the CSR must ask for the same).

    Example: meshctl ca sign host.csr --id spiffe://prod.mesh/host/web1 -o host.pem
    """
    actx = app_context(ctx)
    ws = actx.workspace()
    csr = _read_csr(csr_path)
    wanted = [SpiffeId.parse(i) for i in ids]
    lifetime = dt.timedelta(hours=lifetime_hours)
    if not dt.timedelta(0) < lifetime <= MAX_LEAF_LIFETIME:
        raise ConfigError(
            f"--lifetime-hours {lifetime_hours}: must be 1 to {MAX_LEAF_LIFETIME.days * 24}"
        )
    issuer = ws.issuer(actx.passphrase())
    now = actx.clock()
    cert = sign_csr(csr, wanted, issuer, now, lifetime)
    out.write_bytes(cert_pem(cert, issuer.cert))
    summary = summarize("leaf", cert, now)
    if json_out:
        actx.print_json({"path": str(out), **summary.to_json()})
        return
    actx.out.print(
        f"[green]signed[/] {', '.join(summary.spiffe_ids)} → {out} (expires {summary.not_after})"
    )


def _read_csr(path: Path) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(path.read_bytes())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
    except ValueError as e:
        raise CertificateError(f"{path}: not a PEM certificate signing request") from e


@app.command("renew-issuers")
def renew_issuers(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="re-sign every issuer, due or not")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Re-sign, with a fresh key on the host, every issuer CA past 2/3 of its life.

    meshctl join does this on the way; meshctl status warns at half its life.

    Example: meshctl ca renew-issuers --force
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions())
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        outcomes = issuers.renew(ro, force)
    if not outcomes:
        actx.err.print("no issuer yet: meshctl issuer add HOST")
    finish(actx, "renew issuers", outcomes, json_out)


operator_app = typer.Typer(help="The operator's own certificate.", no_args_is_help=True)
app.add_typer(operator_app, name="operator")


@operator_app.command("renew")
def renew_operator_cert(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """A new operator key and certificate (90 days) from the issuing CA.

    Example: meshctl ca operator renew
    """
    actx = app_context(ctx)
    ws = actx.workspace()
    issuing = ws.issuer(actx.passphrase() if ws.config.ca_key_encrypted else None)
    now = actx.clock()
    with state.locked(ws):
        cert = renew_operator(ws, issuing, now)
    summary = summarize("operator", cert, now)
    if json_out:
        actx.print_json({"path": str(ws.operator_cert), **summary.to_json()})
        return
    actx.out.print(f"[green]renewed[/] {ws.operator_cert} (expires {summary.not_after})")


@app.command("issue-monitor")
def issue_monitor(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the monitor's name, e.g. prometheus")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="directory for the files [default: <workspace>/monitors/NAME]"
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Issue spiffe://<trust domain>/monitor/NAME for a scraper: it may GET /metrics, no more.

    Writes NAME.key (0600), NAME.crt (with its chain) and ca.crt (the trust
    bundle to verify meshd with); run it again to renew (90 days). Then:
    meshctl monitor prometheus-config --identity NAME.

    Example: meshctl ca issue-monitor prometheus --out /etc/prometheus/meshctl
    """
    actx = app_context(ctx)
    ws = actx.workspace()
    where = monitors.monitor_files(ws, monitors.check_monitor_name(name), out)
    issuing = ws.issuer(actx.passphrase() if ws.config.ca_key_encrypted else None)
    issued = monitors.issue_monitor(ws, issuing, where, actx.clock())
    if json_out:
        actx.print_json(issued.to_json())
        return
    actx.out.print(
        f"[green]issued[/] {issued.identity} → {where.cert}, {where.key}, {where.ca}"
        f" (expires {issued.expires:%Y-%m-%d %H:%M} UTC)"
    )
