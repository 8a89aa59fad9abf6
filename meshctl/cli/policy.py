"""``meshctl policy``: validate, apply, list, show, diff and delete policy documents.

Invalid policy input exits 2 (POLICY.md §2.12) after every problem of every
file is shown, and changes nothing anywhere. ``apply`` and ``delete`` push
the applied set to every joined host and exit non-zero when some host did
not take it (the table names them; ``meshctl status`` shows their drift).
``explain`` lives in ``meshctl.cli.explain`` and is mounted here by the app.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from meshctl import policies, state
from meshctl.cli.common import JsonOption, finish, make_rollout, progress_display
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.errors import ExitCode
from meshctl.fleet import Fleet, HostResults, SshOptions
from meshctl.policydiff import diff as diff_documents
from meshctl.policyprobes import decision_diff
from meshctl.provision.rollout import Outcome
from meshctl.views.policy import (
    Listed,
    decisions_view,
    diff_view,
    documents_table,
    problems_json,
    problems_summary,
)
from meshctl.workspace import Workspace
from meshd.errors import MeshError, PolicyError
from meshd.policy.lang.model import Document
from meshd.policy.lang.problems import Problem, errors

INVALID = ExitCode.USAGE  # invalid policy input exits 2 (POLICY.md §2.12)
OWNED_HINT = (
    "a setting has one owner in the applied set: change it in the document that sets it "
    "(meshctl policy show NAME), or drop it there; a fresh mesh's policies/mesh.toml sets "
    'authz.default, so go zero-trust by setting default = "deny" in it'
)

app = typer.Typer(
    help="Policy documents: who may call which service, how (POLICY.md).",
    no_args_is_help=True,
)

_FILE = {"exists": True, "dir_okay": False, "readable": True}
FilesArgument = Annotated[
    list[Path], typer.Argument(metavar="FILE...", help="policy files (TOML)", **_FILE)
]
FilesOption = Annotated[
    list[Path] | None,
    typer.Option("--file", "-f", help="a policy file (repeat, or list them after -f)", **_FILE),
]
MoreFiles = Annotated[  # -f a.toml b.toml: the files after the first
    list[Path] | None, typer.Argument(metavar="[FILE]...", hidden=True, **_FILE)
]


# -- validate
@app.command("validate")
def validate(
    ctx: typer.Context,
    files: FilesArgument,
    json_out: JsonOption = False,
    strict: Annotated[bool, typer.Option("--strict", help="warnings fail too (exit 2)")] = False,
) -> None:
    """Check policy files: every problem of every file at once, cross-document rules too.

    Prints FILE:LINE: error[Pnnn] FIELD: message per problem and exits 2 on
    any error (with --strict, on any warning too). Short source names resolve
    in the file's trust_domain, else the workspace's, else "mesh.local"
    (without a workspace).

    Example: meshctl policy validate policy/zero-trust.toml policy/base.toml --json
    """
    actx = app_context(ctx)
    checked = policies.check(sources(files), _mesh_domain(actx), actx.clock())
    show_problems(actx, checked.problems, len(files), json_out)
    if checked.failed or (strict and checked.problems):
        raise typer.Exit(INVALID)


# -- apply
@app.command("apply")
def apply(
    ctx: typer.Context,
    files: FilesOption = None,
    more: MoreFiles = None,
    json_out: JsonOption = False,
) -> None:
    """Validate policy files, add them to the applied set by name, push it to every host.

    Nothing changes anywhere when a file has an error or the set would break
    a cross-document rule (exit 2). Otherwise policies/<name>.toml holds each
    file as written, the set gets a new version when it changed, and each
    joined host gets what it enforces, in parallel. Hosts that did not take
    it are named (non-zero exit); running apply again brings them in line.

    Example: meshctl policy apply -f policy/zero-trust.toml
    """
    actx = app_context(ctx)
    paths = _given(files, more)
    fleet = make_rollout(actx, SshOptions())
    ws, now = fleet.ws, actx.clock()
    with state.locked(ws):
        current, new, problems = _check_with_applied(ws, paths, now)
        if errors(problems) or not json_out:
            show_problems(actx, problems, len(paths), json_out, quiet=not errors(problems))
        if errors(problems):
            raise typer.Exit(INVALID)
        saved = policies.save(ws, new.texts)
        documents = [d for d, _ in policies.upserted(current, new)]
        rel, results = _publish(actx, fleet, documents, json_out)
    notes = [f"saved {policies.path_of(ws, name)}" for name in saved] or [
        "the applied documents are unchanged"
    ]
    _finish(actx, "policy apply", rel, results, documents, notes, json_out, problems)


def _publish(
    actx: AppContext,
    fleet: Fleet,
    documents: Sequence[Document],
    json_out: bool,
) -> tuple[policies.Release, HostResults[str]]:
    with progress_display(actx, json_out) as report:
        fleet.progress = report
        return policies.publish(fleet, documents)


def _finish(
    actx: AppContext,
    title: str,
    rel: policies.Release,
    results: HostResults[str],
    documents: Sequence[Document],
    notes: list[str],
    json_out: bool,
    problems: Sequence[Problem] = (),
) -> None:
    rows = _rows(results)
    failed = [r.host for r in rows if not r.ok]
    notes = [*notes, _version_note(rel, documents)]
    if not rows:
        notes.append("no host has joined yet: each gets the policy when it joins")
    if failed:
        notes.append(
            f"not applied on {', '.join(failed)}: run meshctl policy apply again once "
            f"{'it is' if len(failed) == 1 else 'they are'} back (meshctl status shows the drift)"
        )
    for line in policies.notes(documents):
        actx.err.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    extra: dict[str, object] = {"version": rel.version}
    if json_out:
        extra["problems"] = [p.to_json() for p in problems]
    finish(actx, title, rows, json_out, notes=notes, extra=extra)


def _version_note(rel: policies.Release, documents: Sequence[Document]) -> str:
    names = ", ".join(sorted(d.name for d in documents)) or "no documents"
    fresh = "a new version" if rel.changed else "unchanged"
    return f"policy version {rel.version} ({fresh}): {names}"


def _rows(results: HostResults[str]) -> list[Outcome]:
    rows = []
    for host, result in results.items():
        if isinstance(result, MeshError):
            rows.append(Outcome(host.name, host.address, "failed", error=result))
        else:
            status = "applied" if result.endswith("applied") else "current"
            rows.append(Outcome(host.name, host.address, status, done=[result]))
    return rows


# -- list, show, diff, delete
@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the applied policy documents: rules, settings, trust domain, and the version.

    Example: meshctl policy list --json
    """
    actx = app_context(ctx)
    ws = actx.workspace()
    rows = [Listed.of(d, f) for d, f in policies.applied(ws, actx.clock()).documents]
    version = policies.recorded_version(ws)
    if json_out:
        actx.print_json({"version": version, "documents": [r.to_json() for r in rows]})
        return
    actx.out.print(documents_table(rows, version))
    if not rows:
        actx.err.print("no policy document applied: meshctl policy apply -f FILE adds one")


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the document's name")],
) -> None:
    """Print an applied policy document as it was written.

    Example: meshctl policy show zero-trust
    """
    actx = app_context(ctx)
    ws = actx.workspace()
    path = policies.existing(ws, name)
    actx.out.print(path.read_text(), markup=False, highlight=False, end="")


@app.command("diff")
def diff(
    ctx: typer.Context,
    files: FilesOption = None,
    more: MoreFiles = None,
    json_out: JsonOption = False,
) -> None:
    """Show what applying policy files would change: settings and rules by rule id, then
    the decisions that change.

    Decisions: representative requests (every identity the rules name, one
    they do not, plaintext; every service they name or that joined, on its
    ports; opaque TCP, each method and path pattern of each HTTP rule, one
    request no rule matches) judged by meshd's evaluator against the applied
    set and with the files in. They are representatives, not every possible
    request. --json adds "probes" and "decisions" (each changed probe with
    its "before" and "after") to "documents".

    Example: meshctl policy diff -f policy/zero-trust.toml
    """
    actx = app_context(ctx)
    paths = _given(files, more)
    ws = actx.workspace()
    current, new, problems = _check_with_applied(ws, paths, actx.clock())
    if errors(problems):
        show_problems(actx, problems, len(paths), json_out)
        raise typer.Exit(INVALID)
    applied_data = {d.name: d.data for d, _ in current.documents}
    diffs = [diff_documents(d.name, applied_data.get(d.name), d.data) for d in new.only()]
    after = [d for d, _ in policies.upserted(current, new)]
    decisions = decision_diff(current.only(), after, ws.config.trust_domain, _ports(ws))
    if json_out:
        actx.print_json(
            {
                "documents": [d.to_json() for d in diffs],
                "probes": decisions.probes,
                "decisions": [c.to_json() for c in decisions.changes],
            }
        )
    else:
        actx.out.print(diff_view(diffs))
        actx.out.print(decisions_view(decisions))


def _ports(ws: Workspace) -> dict[str, set[int]]:
    """The joined services' ports, by service (what the decision probes aim at)."""
    ports: dict[str, set[int]] = {}
    for host in policies.joined_hosts(ws):
        for service in host.services:
            ports.setdefault(service.name, set()).add(service.port)
    return ports


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the document's name")],
    json_out: JsonOption = False,
) -> None:
    """Remove a document from the applied set and push the set to every host.

    Example: meshctl policy delete retire-web-deletes
    """
    actx = app_context(ctx)
    fleet = make_rollout(actx, SshOptions())
    ws = fleet.ws
    with state.locked(ws):
        current = policies.applied(ws, actx.clock())
        policies.remove(ws, name)
        documents = [d for d in current.only() if d.name != name]
        rel, results = _publish(actx, fleet, documents, json_out)
    notes = [f"deleted {policies.path_of(ws, name)}"]
    if not documents:
        notes.append(
            "no policy document is left: hosts run without policy, as before any was applied "
            "(the built-in defaults, deny and strict, only apply to a set with documents); "
            "meshctl policy apply -f FILE adds one"
        )
    _finish(actx, "policy delete", rel, results, documents, notes, json_out)


# -- shared
def _given(files: list[Path] | None, more: list[Path] | None) -> list[Path]:
    paths = (files or []) + (more or [])
    if not paths:
        raise typer.BadParameter("give at least one policy file", param_hint="-f")
    return paths


def _check_with_applied(
    ws: Workspace, paths: Sequence[Path], now: dt.datetime
) -> tuple[policies.Checked, policies.Checked, list[Problem]]:
    """The applied set, the files checked alone, and the files' problems, with the set's
    cross-document rules run only when the files themselves are sound (apply and diff)."""
    current = policies.applied(ws, now)
    new = policies.check(sources(paths), ws.config.trust_domain, now, cross=False)
    problems = list(new.problems)
    if not new.failed:
        problems += policies.check_set_with(current, new)
    return current, new, problems


def sources(paths: Sequence[Path]) -> list[policies.Source]:
    sources = []
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyError(f"{path}: cannot read it: {e}") from e
        sources.append(policies.Source(str(path), text))
    return sources


def workspace_or_none(actx: AppContext) -> Workspace | None:
    try:
        return actx.workspace()
    except (MeshError, OSError):
        return None


def _mesh_domain(actx: AppContext) -> str:
    ws = workspace_or_none(actx)
    return ws.config.trust_domain if ws else policies.FALLBACK_TRUST_DOMAIN


def show_problems(
    actx: AppContext,
    problems: Sequence[Problem],
    files: int,
    json_out: bool,
    quiet: bool = False,
) -> None:
    """Every problem, one line each on stdout (or the JSON document), a summary on stderr.
    ``quiet``: say nothing when there is no problem (apply goes on to its own output)."""
    if json_out:
        actx.print_json(problems_json(problems))
        return
    for problem in problems:
        actx.out.print(problem.render(), markup=False, highlight=False, soft_wrap=True)
    if problems or not quiet:
        colour = "red" if errors(problems) else "yellow" if problems else "green"
        actx.err.print(f"[{colour}]{problems_summary(problems, files)}[/]")
    if any(p.code == "P040" for p in problems):
        actx.err.print(f"[yellow]hint:[/] {escape(OWNED_HINT)}", soft_wrap=True)
