"""The root ``meshctl`` app: global options, command groups, and ``main``.

``run`` executes one command line against an AppContext and returns the exit
code; it is the single place where errors become output and exit codes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from meshctl import __version__
from meshctl.cli import (
    ca,
    demo,
    explain,
    hosts,
    init,
    issuer,
    join,
    monitor,
    policy,
    rotate,
    status,
    top,
)
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.errors import ExitCode, exit_code_for, render_error
from meshctl.workspace import operator_warning
from meshd.errors import MeshError

app = typer.Typer(
    name="meshctl",
    help="A service mesh for VMs and bare metal: one CLI, one lean proxy per host.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("init")(init.init)
app.command("join")(join.join)
app.command("leave")(join.leave)
app.command("revoke")(join.revoke)
app.command("status")(status.status)
app.command("top")(top.top)
app.add_typer(ca.app, name="ca")
ca.app.add_typer(rotate.app, name="rotate")
app.add_typer(hosts.app, name="hosts")
app.add_typer(demo.app, name="demo")
app.add_typer(issuer.app, name="issuer")
app.add_typer(policy.app, name="policy")
app.add_typer(monitor.app, name="monitor")
policy.app.command("explain")(explain.explain)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meshctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace", "-w", help="mesh workspace directory", envvar="MESHCTL_WORKSPACE"
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """meshctl: bootstrap a mesh, join hosts, push policy, watch traffic."""
    actx = app_context(ctx)
    actx.debug = actx.debug or debug
    if workspace is not None:
        actx.workspace_path = workspace
    _warn_operator(actx)


def _warn_operator(actx: AppContext) -> None:
    """One line on stderr when the operator certificate wants renewing (any command)."""
    try:
        warning = operator_warning(actx.workspace(), actx.clock())
    except (MeshError, OSError, ValueError, IndexError):
        return  # no workspace (yet), or a broken one: the command itself says so
    if warning:
        actx.err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def run(argv: Sequence[str], context: AppContext) -> int:
    """Run one meshctl command line; render any error; return the exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=list(argv), prog_name="meshctl", standalone_mode=False, obj=context
        )
    except MeshError as e:
        render_error(context.err, e, context.debug)
        return exit_code_for(e)
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors: bad option, missing argument
        context.err.print(f"[bold red]error:[/] {escape(e.format_message())}")
        context.err.print("[yellow]hint:[/] add --help to the command to see its options")
        return ExitCode.USAGE
    except (typer.Abort, KeyboardInterrupt):
        context.err.print("[red]interrupted[/]")
        return ExitCode.INTERRUPTED
    except Exception as e:  # last resort: never a bare traceback without --debug
        render_error(context.err, e, context.debug)
        return ExitCode.ERROR
    if isinstance(result, int):  # typer returns the code of an explicit Exit
        return result
    return ExitCode.OK


def main() -> None:
    """Entry point of the ``meshctl`` console script."""
    context = AppContext()
    context.debug = "--debug" in sys.argv[1:]
    sys.exit(run(sys.argv[1:], context))
