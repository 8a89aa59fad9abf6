"""``meshctl status``: the health of every host in the inventory."""

from __future__ import annotations

import typer
from rich.markup import escape

from meshctl import policies, state
from meshctl.cli.common import (
    JsonOption,
    KeyOption,
    SudoOption,
    TimeoutOption,
    make_rollout,
    progress_display,
)
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.errors import ExitCode
from meshctl.control import current_registry
from meshctl.fleet import SshOptions
from meshctl.provision.rollout import Rollout
from meshctl.provision.status import HostStatus, survey
from meshctl.views.status import fleet_warnings, status_table
from meshd.errors import MeshError


def status(
    ctx: typer.Context,
    key_file: KeyOption = None,
    sudo: SudoOption = False,
    json_out: JsonOption = False,
    connect_timeout: TimeoutOption = 5.0,
) -> None:
    """Show the health of every host: meshd, versions, certificate, rules, drift.

    One row per host of hosts.toml: reachable, meshd state, version and
    uptime, registry and policy versions (a host behind the workspace's is
    not healthy), certificate expiry (a warning under a third of its life),
    redirect rules installed, and drift from the workspace. Under the table:
    whether the applied policy runs with default allow or permissive mTLS.
    Warnings follow: issuers past half their life, renewals failing, and
    short leaves with no issuer to renew them.
    Exits 0 when every host is healthy, 8 when some are not.

    Example: meshctl status --json
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions(key_file, sudo, False, connect_timeout))
    with progress_display(actx, json_out) as report:
        report("fleet", "surveying hosts")
        statuses = survey(ro)
    warnings = _warnings(ro, statuses)
    _show(actx, statuses, current_registry(ro).version, json_out, warnings, _policy(ro))
    if any(not s.healthy for s in statuses):
        raise typer.Exit(ExitCode.PARTIAL)


def _warnings(ro: Rollout, statuses: list[HostStatus]) -> list[str]:
    defaults = ro.ws.config.defaults
    inventory = state.load_inventory(ro.ws)
    names = [i.host for i in inventory.issuers(defaults.admin_port, state.joined(ro.ws))]
    lifetimes = (defaults.leaf_lifetime, defaults.issuer_lifetime)
    return fleet_warnings(statuses, names, lifetimes, ro.now())


def _policy(ro: Rollout) -> dict[str, object]:
    """The workspace's policy version, and what to know of the applied set: default allow,
    permissive mTLS, or that it does not validate."""
    try:
        notes = policies.notes(policies.applied(ro.ws, ro.now()).only())
    except MeshError as e:
        notes = [e.message.splitlines()[0] + (f" ({e.hint})" if e.hint else "")]
    return {"version": policies.recorded_version(ro.ws), "notes": notes}


def _show(
    actx: AppContext,
    statuses: list[HostStatus],
    version: int,
    json_out: bool,
    warnings: list[str],
    policy: dict[str, object],
) -> None:
    if json_out:
        hosts = [s.to_json() for s in statuses]
        actx.print_json(
            {"registry_version": version, "hosts": hosts, "warnings": warnings, "policy": policy}
        )
    else:
        actx.out.print(status_table(statuses, version))
        notes = policy["notes"]
        assert isinstance(notes, list)
        for note in notes:
            actx.out.print(f"policy: {escape(note)}", soft_wrap=True)
    for warning in warnings:
        actx.err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if not statuses:
        actx.err.print("no hosts yet: meshctl join [USER@]HOST --service NAME:PORT")
