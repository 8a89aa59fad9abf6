"""``meshctl issuer``: the hosts whose meshd signs the mesh's certificate renewals."""

from __future__ import annotations

from typing import Annotated

import typer

from meshctl import issuers, state
from meshctl.cli.common import (
    JsonOption,
    finish,
    make_rollout,
    progress_display,
    rollout_progress,
)
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.errors import ExitCode
from meshctl.fleet import SshOptions
from meshctl.views.issuer import issuer_table

app = typer.Typer(
    help="Issuers: hosts whose meshd signs the mesh's certificate renewals.",
    no_args_is_help=True,
)

HostsArgument = Annotated[list[str], typer.Argument(metavar="HOST...", help="joined hosts")]


@app.command("add")
def add(ctx: typer.Context, hosts: HostsArgument, json_out: JsonOption = False) -> None:
    """Make hosts issuers: they sign the other hosts' certificate renewals.

    Each host's meshd makes an issuer key, the root CA signs it (this needs
    the CA passphrase), and every host learns where to renew. Two give
    redundancy.

    Example: meshctl issuer add web1 api1
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions())
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        outcomes = issuers.add(ro, issuers.joined_hosts(ro, hosts))
    finish(actx, "issuer add", outcomes, json_out)


@app.command("remove")
def remove(ctx: typer.Context, hosts: HostsArgument, json_out: JsonOption = False) -> None:
    """Stop hosts being issuers: out of the registry, and their meshd drops the CA and key.

    Example: meshctl issuer remove web1
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions())
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        outcomes = issuers.remove(ro, issuers.joined_hosts(ro, hosts))
        inventory = state.load_inventory(ro.ws)
    if not inventory.issuers(0, state.joined(ro.ws)):
        _warn_none_left(actx)
    finish(actx, "issuer remove", outcomes, json_out)


def _warn_none_left(actx: AppContext) -> None:
    actx.err.print(
        "[yellow]warning:[/] no issuer is left: no host can renew its certificate, and each "
        "stops at the end of its leaf lifetime unless meshctl join re-signs it; "
        "add one: meshctl issuer add HOST"
    )


@app.command("list")
def list_issuers(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Show every issuer: its CA's expiry, what it signed and refused, its state.

    Exits 8 when some issuer is unreachable, without a CA, or expired.

    Example: meshctl issuer list --json
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions())
    with progress_display(actx, json_out) as report:
        report("fleet", "asking the issuers")
        found = issuers.survey(ro)
    if json_out:
        actx.print_json({"issuers": [i.to_json() for i in found]})
    else:
        actx.out.print(issuer_table(found))
    if not found:
        actx.err.print("no issuer yet: meshctl issuer add HOST")
    if any(i.state not in ("ok", "renew") for i in found):
        raise typer.Exit(ExitCode.PARTIAL)
