"""``meshctl join`` and ``meshctl leave``: put hosts into the mesh over SSH and take them out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from meshctl import state
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.errors import ExitCode, exit_code_for, render_error
from meshctl.inventory import HostOverrides, select_hosts
from meshctl.provision import rollout
from meshctl.provision.rollout import Outcome, Rollout, SshOptions
from meshctl.views.rollout import facts_line, outcome_json, outcomes_table, plan_view

KeyOption = Annotated[
    Path | None,
    typer.Option("--identity", "-i", help="SSH private key file (default: agent, ~/.ssh)"),
]
SudoOption = Annotated[
    bool, typer.Option("--sudo", help="the SSH user is not root: run root commands with sudo -n")
]
AcceptOption = Annotated[
    bool,
    typer.Option("--accept-new-host-key", help="pin the host key of hosts seen for the first time"),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="show the plan (files, unit, rules) and change nothing")
]
T = TypeVar("T")
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
TimeoutOption = Annotated[float, typer.Option("--connect-timeout", help="SSH connect timeout, s")]
ServicesOption = Annotated[
    list[str] | None,
    typer.Option("--service", "-s", help="NAME:PORT[:RUNAS] the host serves (repeat)"),
]
LabelsOption = Annotated[
    list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE label (repeat)")
]
FailModeOption = Annotated[
    str | None,
    typer.Option(
        "--fail-mode",
        help="closed: while meshd is down intercepted traffic fails; open: it goes around",
    ),
]


class HostProgress:
    """A live line per host on stderr (terminals only; --json and pipes stay quiet)."""

    def __init__(self, bar: Progress | None) -> None:
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, host: str, what: str) -> None:
        if self.bar is None:
            return
        if host not in self.tasks:
            self.tasks[host] = self.bar.add_task(what, host=host, total=None)
        self.bar.update(self.tasks[host], description=what)

    def paused(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a prompt) with the live display stopped."""
        if self.bar is None:
            return fn()
        self.bar.stop()
        try:
            return fn()
        finally:
            self.bar.start()


@contextmanager
def progress_display(actx: AppContext, json_out: bool) -> Iterator[HostProgress]:
    if json_out or not actx.err.is_terminal:
        yield HostProgress(None)
        return
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[host]}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=actx.err, transient=True) as bar:
        yield HostProgress(bar)


@contextmanager
def rollout_progress(ro: Rollout, actx: AppContext, json_out: bool) -> Iterator[None]:
    """Show ``ro``'s progress; a passphrase prompt pauses the display."""
    ask = ro.passphrase
    with progress_display(actx, json_out) as report:
        ro.progress = report
        ro.passphrase = lambda: report.paused(ask)
        yield


def make_rollout(actx: AppContext, ssh: SshOptions) -> Rollout:
    ws = actx.workspace()
    return Rollout(
        ws,
        ssh,
        connect=actx.connect,
        passphrase=lambda: actx.passphrase() if ws.config.ca_key_encrypted else None,
        now=actx.clock,
        bundle_cache=actx.bundle_cache,
        rollback_deadline=actx.rollback_deadline,
    )


def finish(actx: AppContext, title: str, outcomes: list[Outcome], json_out: bool) -> None:
    """Render the result table (or JSON) and exit with OK, the error's code, or PARTIAL."""
    if json_out:
        actx.print_json({"hosts": [outcome_json(o) for o in outcomes]})
    else:
        actx.out.print(outcomes_table(title, outcomes))
    failed = [o for o in outcomes if o.error is not None]
    for o in failed:
        assert o.error is not None
        render_error(actx.err, o.error, actx.debug)
    if not failed:
        return
    if len(failed) < len(outcomes):
        raise typer.Exit(ExitCode.PARTIAL)
    assert failed[0].error is not None
    raise typer.Exit(exit_code_for(failed[0].error))


def join(
    ctx: typer.Context,
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="[HOST]...", help="[USER@]HOST[:PORT], or a host of hosts.toml"),
    ] = None,
    services: ServicesOption = None,
    labels: LabelsOption = None,
    name: Annotated[
        str | None, typer.Option("--name", help="host name (default: hostname)")
    ] = None,
    all_hosts: Annotated[bool, typer.Option("--all", help="every host of hosts.toml")] = False,
    fail_mode: FailModeOption = None,
    key_file: KeyOption = None,
    sudo: SudoOption = False,
    accept_new_host_key: AcceptOption = False,
    dry_run: DryRunOption = False,
    json_out: JsonOption = False,
    connect_timeout: TimeoutOption = 10.0,
) -> None:
    """Join hosts to the mesh over SSH: install meshd, its identity, unit and redirect rules.

    Re-running on a joined host changes nothing unless something differs.

    Examples:
      meshctl join root@10.0.0.11 --service api:8080 --accept-new-host-key
      meshctl join web1 api1 db1
      meshctl join --all --dry-run
    """
    actx = app_context(ctx)
    overrides = HostOverrides.parse(services, labels, fail_mode, name)
    ssh = SshOptions(key_file, sudo, accept_new_host_key, connect_timeout, not dry_run)
    ro = make_rollout(actx, ssh)
    inventory = state.load_inventory(ro.ws)
    default_mode = ro.ws.config.defaults.fail_mode
    hosts = select_hosts(inventory, targets or [], all_hosts, overrides, default_mode)
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        outcomes = rollout.join(ro, hosts, dry_run)
        pushes = [] if dry_run else rollout.push_registry(ro, state.joined(ro.ws))
    if dry_run and not json_out:
        for o in outcomes:
            if o.plan is not None:
                actx.out.print(facts_line(o), markup=False)
                actx.out.print(plan_view(o.plan))
    _merge_pushes(outcomes, pushes)
    finish(actx, "dry run" if dry_run else "join", outcomes + _others(outcomes, pushes), json_out)


def _merge_pushes(outcomes: list[Outcome], pushes: list[Outcome]) -> None:
    """A failed registry push to a host that just joined is that host's failure."""
    by_host = {o.host: o for o in outcomes}
    for push in pushes:
        mine = by_host.get(push.host)
        if mine is not None and mine.ok:
            mine.done += push.done
            if push.error is not None:
                mine.status, mine.error = "failed", push.error


def _others(outcomes: list[Outcome], pushes: list[Outcome]) -> list[Outcome]:
    """Pushes to hosts this command did not join (they got the new registry)."""
    mine = {o.host for o in outcomes}
    return [p for p in pushes if p.host not in mine and (p.done or p.error)]


def leave(
    ctx: typer.Context,
    hosts: Annotated[
        list[str],
        typer.Argument(metavar="HOST...", help="hosts of hosts.toml, or [USER@]ADDRESS[:PORT]"),
    ],
    forget_unreachable: Annotated[
        bool,
        typer.Option(
            "--forget-unreachable",
            help="drop hosts that cannot be reached from the inventory anyway (nothing removed)",
        ),
    ] = False,
    key_file: KeyOption = None,
    sudo: SudoOption = False,
    dry_run: DryRunOption = False,
    json_out: JsonOption = False,
    connect_timeout: TimeoutOption = 10.0,
) -> None:
    """Take hosts out of the mesh: stop meshd, remove its rules, files, user, unit and names.

    Works when meshd is broken or already gone; running it twice is harmless.
    The other hosts then get a registry without them.

    Example: meshctl leave api2
    """
    actx = app_context(ctx)
    ro = make_rollout(actx, SshOptions(key_file, sudo, False, connect_timeout))
    inventory = state.load_inventory(ro.ws)
    # a host not (or no longer) in hosts.toml can still be cleaned up by its address
    specs = [
        h if h.name else replace(h, name=h.address)
        for h in select_hosts(inventory, hosts, False, HostOverrides(), "closed")
    ]
    with state.locked(ro.ws), rollout_progress(ro, actx, json_out):
        outcomes = rollout.leave(ro, specs, dry_run, forget_unreachable)
        pushes = [] if dry_run else rollout.push_registry(ro, state.joined(ro.ws))
    if dry_run and not json_out:
        for o in outcomes:
            if o.plan is not None:
                actx.out.print(plan_view(o.plan))
    finish(actx, "dry run" if dry_run else "leave", outcomes + _others(outcomes, pushes), json_out)
