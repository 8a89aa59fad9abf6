"""``meshctl ca``: inspect the mesh CA and sign CSRs by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from meshctl.ca import DEFAULT_LEAF_LIFETIME, MAX_LEAF_LIFETIME, sign_csr
from meshctl.cli.context import app_context
from meshctl.views.ca import ca_table, summarize
from meshctl.workspace import ca_certificates
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
