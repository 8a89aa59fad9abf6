"""``meshctl status``: the health of every host in the inventory."""

from __future__ import annotations

import typer

from meshctl import state
from meshctl.cli.context import app_context
from meshctl.cli.errors import ExitCode
from meshctl.cli.join import (
    JsonOption,
    KeyOption,
    SudoOption,
    TimeoutOption,
    make_rollout,
    progress_display,
)
from meshctl.provision.rollout import SshOptions, registry_for
from meshctl.provision.status import survey
from meshctl.views.status import status_table


def status(
    ctx: typer.Context,
    key_file: KeyOption = None,
    sudo: SudoOption = False,
    json_out: JsonOption = False,
    connect_timeout: TimeoutOption = 5.0,
) -> None:
    """Show the health of every host: meshd, versions, certificate, rules, drift.

    One row per host of hosts.toml: reachable, meshd state, version and
    uptime, registry version, certificate expiry (a warning under a third of
    its life), redirect rules installed, and drift from the workspace.
    Exits 0 when every host is healthy, 8 when some are not.

    Example: meshctl status --json
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions(key_file, sudo, False, connect_timeout))
    with progress_display(actx, json_out) as report:
        report("fleet", "surveying hosts")
        statuses = survey(ro)
    inventory = state.load_inventory(ro.ws)
    version = registry_for(ro, inventory, state.joined(ro.ws)).version
    if json_out:
        actx.print_json({"registry_version": version, "hosts": [s.to_json() for s in statuses]})
    else:
        actx.out.print(status_table(statuses, version))
    if not statuses:
        actx.err.print("no hosts yet: meshctl join [USER@]HOST --service NAME:PORT")
    if any(not s.healthy for s in statuses):
        raise typer.Exit(ExitCode.PARTIAL)
