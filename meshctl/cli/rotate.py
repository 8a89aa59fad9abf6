"""``meshctl ca rotate begin|finish|status``: roll the mesh over to a new root CA."""

from __future__ import annotations

import typer

from meshctl import castore, rotation, state
from meshctl.cli import common
from meshctl.cli.common import JsonOption, make_rollout, rollout_progress
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.errors import ExitCode
from meshctl.fleet import SshOptions
from meshctl.provision.rollout import Rollout
from meshctl.rotation import HostRotation
from meshctl.views.rotation import rotation_table, rotation_title

app = typer.Typer(
    help="Roll the mesh over to a new root CA without failing a request.",
    no_args_is_help=True,
)


def _rollout(actx: AppContext) -> Rollout:
    return make_rollout(actx, SshOptions())


@app.command("begin")
def begin(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Make a new root CA, trust both roots everywhere, re-sign issuers, renew every host.

    Safe to run again: what is done already is skipped, so an interrupted or
    partly failed begin is finished by running it again. Then wait for
    meshctl ca rotate status to show every host ready, and run finish.

    Example: meshctl ca rotate begin
    """
    actx = app_context(ctx)
    ro = _rollout(actx)
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        outcomes, notes = rotation.begin(ro)
    common.finish(actx, "ca rotate begin", outcomes, json_out, notes=notes)


@app.command("finish")
def finish(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Remove the old root everywhere, once every host serves a leaf of the new one.

    Refuses, naming the hosts, while any joined host still serves a leaf of
    the old root or an issuer holds a CA of it. Then every host gets the
    trust bundle of the new root alone, and the workspace moves to the new
    CA (the old one is kept under ca/retired/<date>/).

    Example: meshctl ca rotate finish --json
    """
    actx = app_context(ctx)
    ro = _rollout(actx)
    with state.locked(ro.ws):
        rotation.check_in_progress(ro.ws)
        rotation.check_operator(ro.ws)
        with rollout_progress(ro, actx, json_out):
            rows = rotation.survey(ro)
        refused = rotation.refusal(rows)
        if refused is not None:
            _show_hosts(actx, rows, json_out)
            raise refused
        with rollout_progress(ro, actx, json_out):
            outcomes, notes = rotation.complete(ro)
    common.finish(actx, "ca rotate finish", outcomes, json_out, notes=notes)


@app.command("status")
def status(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Show where each joined host is in a CA rotation: the root of its leaf and issuer CA.

    Exits 0 when every host is ready for finish (or no rotation is in
    progress), 8 when some are not.

    Example: meshctl ca rotate status
    """
    actx = app_context(ctx)
    ro = _rollout(actx)
    if not castore.in_progress(ro.ws):
        if json_out:
            actx.print_json({"in_progress": False, "hosts": []})
        else:
            actx.out.print("no CA rotation in progress (meshctl ca rotate begin starts one)")
        return
    with rollout_progress(ro, actx, json_out):
        rows = rotation.survey(ro)
    _show_hosts(actx, rows, json_out)
    if any(not r.ready for r in rows):
        raise typer.Exit(ExitCode.PARTIAL)


def _show_hosts(actx: AppContext, rows: list[HostRotation], json_out: bool) -> None:
    if json_out:
        ready = all(r.ready for r in rows)
        hosts = [r.to_json() for r in rows]
        actx.print_json({"in_progress": True, "ready": ready, "hosts": hosts})
    else:
        actx.out.print(rotation_table(rows, rotation_title(rows)))
