"""Views of multi-host work: plans (``--dry-run``), per-host result tables, JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from meshctl.provision.plan import Plan
from meshctl.provision.rollout import Outcome

STYLES = {
    "joined": "green",
    "converged": "green",
    "left": "green",
    "planned": "cyan",
    "registry": "green",
    "issuer": "green",  # meshctl issuer add, join --issuer
    "renewed": "green",  # meshctl ca renew-issuers
    "current": "green",
    "removed": "green",
    "forgotten": "yellow",
    "revoked": "yellow",
    "trusted": "cyan",
    "renewing": "green",
    "finished": "green",
    "applied": "green",  # meshctl policy apply, delete
    "failed": "bold red",
}


def plan_view(plan: Plan, details: bool = True) -> RenderableType:
    """One host's plan: a numbered step per line, with what the step installs beneath it."""
    if plan.empty:
        return Text(f"{plan.host}: nothing to do (the host already matches)", style="green")
    parts: list[RenderableType] = [Text(f"{plan.host}: {len(plan.steps)} step(s)", style="bold")]
    for i, step in enumerate(plan.steps, 1):
        parts.append(Text.assemble(f"  {i:>2}. {step.title}", (f"  ({step.why})", "dim")))
        detail = step.detail() if details else ""
        if detail:
            parts.append(Padding(Text(detail.rstrip("\n"), style="dim"), (0, 0, 0, 8)))
    return Group(*parts)


def facts_line(o: Outcome) -> str:
    """What meshctl found on the host, in one line (shown above its plan)."""
    f = o.facts
    if f is None:
        return f"{o.host} ({o.address})"
    installed = next((v for v in f.versions if v != "bin"), None)
    return (
        f"{o.host} ({o.address}): {f.os_name}, {f.machine}, Python {f.python}, "
        f"iptables {f.iptables or 'missing'}, meshd {installed or 'not installed'} "
        f"({f.meshd.active})"
    )


def outcomes_table(title: str, outcomes: list[Outcome]) -> Table:
    """One row per host: what happened to it, and the error when it failed."""
    table = Table(title=title, title_justify="left")
    table.add_column("host")
    table.add_column("address")
    table.add_column("result")
    table.add_column("changes", justify="right")
    table.add_column("detail", overflow="fold")
    for o in outcomes:
        detail = _detail(o)
        changes = str(len(o.done)) if o.ok else "-"
        status = f"[{STYLES.get(o.status, '')}]{o.status}[/]"
        table.add_row(escape(o.host), escape(o.address), status, changes, detail)
    return table


def _detail(o: Outcome) -> str:
    if o.error is not None:
        hint = f"\n[yellow]hint:[/] {escape(o.error.hint)}" if o.error.hint else ""
        return f"[red]{escape(o.error.message)}[/]{hint}"
    if o.status == "converged":
        return "already matched: nothing changed"
    if o.status == "left" and not o.done:
        return "nothing of meshd was left"
    if o.status == "joined" and o.desired is not None:
        return f"meshd {escape(o.desired.bundle_version)} active, rules and names in place"
    if o.status == "planned" and o.plan is not None:
        return f"{len(o.plan.steps)} step(s) planned" if o.plan.steps else "nothing to do"
    return escape("; ".join(o.done[-2:])) if o.done else ""


def outcome_json(o: Outcome) -> dict[str, Any]:
    data: dict[str, Any] = {"host": o.host, "address": o.address, "status": o.status}
    data["done"] = list(o.done)
    if o.facts is not None:
        f = o.facts
        data["facts"] = {
            "os": f.os_name,
            "machine": f.machine,
            "python": f.python,
            "iptables": f.iptables,
            "meshd_installed": [v for v in f.versions if v != "bin"],
            "meshd_state": f.meshd.active,
        }
    if o.plan is not None:
        data["plan"] = [
            {"step": type(s).__name__, "title": s.title, "why": s.why, "detail": s.detail()}
            for s in o.plan.steps
        ]
    if o.error is not None:
        data["error"] = {"message": o.error.message, "hint": o.error.hint}
    return data
