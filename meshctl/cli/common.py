"""What the multi-host commands share: their options, the live progress, the result view, exits.

A command body parses its options, builds a ``Rollout`` with ``make_rollout``,
calls one core function under ``rollout_progress`` and hands the outcomes to
``finish``, which renders them and exits 0, the one error's code, or
PARTIAL (8) when some hosts failed and others did not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from meshctl.cli.context import AppContext
from meshctl.cli.errors import ExitCode, exit_code_for, render_error
from meshctl.fleet import SshOptions
from meshctl.provision.rollout import Outcome, Rollout
from meshctl.views.rollout import facts_line, outcome_json, outcomes_table, plan_view
from meshctl.views.rotation import notes_view
from meshd.errors import MeshError

T = TypeVar("T")

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
    """A session over the workspace's hosts, reaching them as ``actx`` says."""
    ws = actx.workspace()
    return Rollout(
        ws,
        ssh,
        connect=actx.connect,
        connect_admin=actx.connect_admin,
        now=actx.clock,
        passphrase=lambda: actx.passphrase() if ws.config.ca_key_encrypted else None,
        bundle_cache=actx.bundle_cache,
        build_bundle=actx.build_bundle,
        rollback_deadline=actx.rollback_deadline,
    )


def exit_code(errors: Sequence[MeshError], hosts: int) -> ExitCode:
    """OK without errors; PARTIAL when some of ``hosts`` failed; else the first error's code."""
    if not errors:
        return ExitCode.OK
    if len(errors) < hosts:
        return ExitCode.PARTIAL
    return exit_code_for(errors[0])


def finish(
    actx: AppContext,
    title: str,
    outcomes: list[Outcome],
    json_out: bool,
    *,
    plans: bool = False,
    facts: bool = False,
    notes: list[str] | None = None,
    extra: dict[str, object] | None = None,
) -> None:
    """Render the outcomes and exit with OK, the error's code, or PARTIAL.

    ``plans``: a dry run's plans first (with the facts line of each host when
    ``facts``), then the result table (or JSON), then one error per failed host.
    ``notes``: lines under the table (``"notes"`` in the JSON) when given.
    ``extra``: more keys of the JSON document (the policy version of an apply).
    """
    if plans and not json_out:
        _show_plans(actx, outcomes, facts)
    if json_out:
        doc: dict[str, object] = {"hosts": [outcome_json(o) for o in outcomes], **(extra or {})}
        actx.print_json(doc if notes is None else doc | {"notes": notes})
    else:
        actx.out.print(outcomes_table(title, outcomes))
        if notes is not None:
            actx.out.print(notes_view(notes))
    errors = [o.error for o in outcomes if o.error is not None]
    for error in errors:
        render_error(actx.err, error, actx.debug)
    code = exit_code(errors, len(outcomes))
    if code != ExitCode.OK:
        raise typer.Exit(code)


def _show_plans(actx: AppContext, outcomes: list[Outcome], facts: bool) -> None:
    for o in outcomes:
        if o.plan is not None:
            if facts:
                actx.out.print(facts_line(o), markup=False)
            actx.out.print(plan_view(o.plan))
