"""``meshctl init``: create a mesh workspace with its CA and operator identity."""

from __future__ import annotations

import getpass
import re
from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.context import AppContext, app_context
from meshctl.config import MeshConfig
from meshctl.views.ca import init_summary, summarize
from meshctl.workspace import Workspace, ca_certificates, check_passphrase, init_workspace
from meshd.errors import ConfigError
from meshd.identity import check_name, trust_domain_problem

INSECURE_WARNING = (
    "WARNING: --insecure-no-passphrase stores the CA private keys UNENCRYPTED. "
    "Anyone who can read secrets/ can mint identities for this mesh. Use it for demos only."
)


def init(
    ctx: typer.Context,
    directory: Annotated[
        Path | None,
        typer.Argument(
            help="workspace directory (default: --workspace, MESHCTL_WORKSPACE or ./mesh)"
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="mesh name (default: the directory's name)")
    ] = None,
    trust_domain: Annotated[
        str | None, typer.Option(help="SPIFFE trust domain (default: NAME.mesh)")
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option(help="your operator name (default: your login)", envvar="MESHCTL_OPERATOR"),
    ] = None,
    insecure_no_passphrase: Annotated[
        bool, typer.Option(help="do not encrypt the CA keys (demos only)")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """Create a mesh workspace: root + issuing CA, operator identity, mesh.toml.

    The CA keys are encrypted with a passphrase from MESHCTL_CA_PASSPHRASE or a prompt.

    Example: meshctl init ./prod --name prod --trust-domain prod.example.org
    """
    actx = app_context(ctx)
    root = directory if directory is not None else actx.workspace_dir()
    config = _config(root, name, trust_domain, operator, not insecure_no_passphrase)
    passphrase = None
    if insecure_no_passphrase:
        actx.err.print(f"[bold red]{INSECURE_WARNING}[/]")
    else:
        passphrase = check_passphrase(actx.passphrase(confirm=True))
    ws = init_workspace(root, config, passphrase, actx.clock())
    _report(actx, ws.root, config, json_out)


def _config(
    root: Path, name: str | None, trust_domain: str | None, operator: str | None, encrypted: bool
) -> MeshConfig:
    mesh_name = check_name("mesh", name if name is not None else _default_name(root))
    domain = trust_domain if trust_domain is not None else f"{mesh_name}.mesh"
    problem = trust_domain_problem(domain)
    if problem:
        raise ConfigError(
            f"--trust-domain: {problem}", hint="a trust domain looks like prod.example.org"
        )
    who = check_name("operator", operator if operator is not None else _default_operator())
    return MeshConfig(name=mesh_name, trust_domain=domain, operator=who, ca_key_encrypted=encrypted)


def _default_name(root: Path) -> str:
    guess = re.sub(r"[^a-z0-9-]+", "-", root.resolve().name.lower()).strip("-")
    if not guess:
        raise ConfigError(f"cannot derive a mesh name from {root}", hint="pass --name NAME")
    return guess[:63]


def _default_operator() -> str:
    return re.sub(r"[^a-z0-9-]+", "-", getpass.getuser().lower()).strip("-")[:63] or "operator"


def _report(actx: AppContext, root: Path, config: MeshConfig, json_out: bool) -> None:
    now = actx.clock()
    certs = [summarize(role, cert, now) for role, cert in ca_certificates(Workspace(root, config))]
    if json_out:
        actx.print_json(
            {
                "workspace": str(root),
                "name": config.name,
                "trust_domain": config.trust_domain,
                "ca_key_encrypted": config.ca_key_encrypted,
                "certificates": [c.to_json() for c in certs],
            }
        )
        return
    actx.out.print(init_summary(str(root), config.trust_domain, certs, config.ca_key_encrypted))
